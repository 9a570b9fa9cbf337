"""One module per ``gr-vl`` command: ``gr-vl NAME`` lives in ``commands/NAME.py`` (dashes as underscores).

Each module has a docstring whose first line is the command's help, ``add_arguments(parser)`` and
``run(args) -> int``. Modules import torch, verl or Ray inside ``run`` only, so ``gr-vl --help`` stays instant.
Commands orchestrate; the method lives in the pure modules they call.

Output goes one way: a command writes what it produces (results, summary lines) with :func:`emit` (or to
:func:`results_stream`), which is stdout. While the command runs ``gr-vl`` points everything else at stderr:
``sys.stdout`` and file descriptor 1, so the logs of vLLM, Ray and verl and of every process they start.
Stdout can be piped to a parser.

Errors are reported one way, by :func:`gr_vl_verl.cli.main`: raise :class:`UsageError` for bad flags,
configuration or paths (exit 2) and :class:`WorkError` for work that failed on its input (exit 1), each with a
one-line message that names the file, row or key. Neither prints a traceback.
"""

from __future__ import annotations

from gr_vl_verl.stdio import emit, results_stream

__all__ = ["CommandError", "UsageError", "WorkError", "emit", "require_out_folder", "require_parquet", "results_stream"]


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
    """``path`` (the value of ``flag``) is a parquet of ours holding ``kind`` rows with every column of that
    kind, else a UsageError naming what is wrong, before any work starts."""
    from pathlib import Path

    import pyarrow.parquet as pq

    from gr_vl_verl.data.schemas import EVAL_SCHEMA, RL_SCHEMA, SFT_SCHEMA, parquet_kind

    path = Path(str(path))
    if not path.is_file():
        raise UsageError(f"{flag}: no file at {path}")
    try:
        found = parquet_kind(path)
    except (ValueError, OSError) as e:  # not a parquet, or not one of ours
        raise UsageError(f"{flag}: {e}; {kind} parquets are written by `gr-vl prep`") from None
    if found != kind:
        raise UsageError(f"{flag}: {path} holds {found} rows, expected {kind}")
    expected = {"sft": SFT_SCHEMA, "rl": RL_SCHEMA, "eval": EVAL_SCHEMA}[kind].names
    missing = [c for c in expected if c not in pq.read_schema(path).names]  # e.g. columns dropped by an edit
    if missing:
        raise UsageError(f"{flag}: {path} lacks the {kind} column(s) {', '.join(missing)}; write it with `gr-vl prep`")
