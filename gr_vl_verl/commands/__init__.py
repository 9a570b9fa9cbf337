"""One module per ``gr-vl`` command: ``gr-vl NAME`` lives in ``commands/NAME.py`` (dashes as underscores).

Each module has a docstring whose first line is the command's help, ``add_arguments(parser)`` and
``run(args) -> int``. Modules import torch, verl or Ray inside ``run`` only, so ``gr-vl --help`` stays instant.
Commands orchestrate; the method lives in the pure modules they call.

Errors are reported one way, by :func:`gr_vl_verl.cli.main`: raise :class:`UsageError` for bad flags,
configuration or paths (exit 2) and :class:`WorkError` for work that failed on its input (exit 1), each with a
one-line message that names the file, row or key. Neither prints a traceback.
"""

from __future__ import annotations


class CommandError(Exception):
    """A failure to report as one line and an exit code, without a traceback."""

    exit_code = 1


class UsageError(CommandError):
    """Bad usage or configuration: a flag, a key, a missing path (exit code 2)."""

    exit_code = 2


class WorkError(CommandError):
    """The work failed on its input: a bad row, an unreadable file, a failed run (exit code 1)."""

    exit_code = 1
