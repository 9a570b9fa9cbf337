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


def require_out_folder(flag: str, path: object) -> None:
    """``path`` (the value of ``flag``) may be created as a folder: absent, or a folder already."""
    from pathlib import Path

    if Path(str(path)).exists() and not Path(str(path)).is_dir():
        raise UsageError(f"{flag} {path}: exists and is not a folder")


def require_parquet(flag: str, path: object, kind: str) -> None:
    """``path`` (the value of ``flag``) is a parquet of ours holding ``kind`` rows, else a UsageError."""
    from pathlib import Path

    from gr_vl_verl.data.schemas import parquet_kind

    path = Path(str(path))
    if not path.is_file():
        raise UsageError(f"{flag}: no file at {path}")
    try:
        found = parquet_kind(path)
    except (ValueError, OSError) as e:  # not a parquet, or not one of ours
        raise UsageError(f"{flag}: {e}") from None
    if found != kind:
        raise UsageError(f"{flag}: {path} holds {found} rows, expected {kind}")
