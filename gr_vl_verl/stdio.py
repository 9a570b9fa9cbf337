"""Stdout for a command's results only; everything else a command sets off writes to stderr.

vLLM, Ray, verl and transformers log to stdout from the command's own process and from the processes they
start (vLLM's engine core and workers, Ray's raylet and workers, torchrun), so ``gr-vl classify ... > out.jsonl``
would not hold JSON Lines. :func:`results_stdout` closes every such path for the time a command runs:

* file descriptor 1 is pointed at stderr (``os.dup2``), so C code in this process and every child process,
  which inherit fd 1, write there;
* ``sys.stdout`` is a stand-in that writes to whatever ``sys.stderr`` is when it is written to, so Python code
  that prints, and logging handlers bound to ``sys.stdout`` when their library was imported (vLLM's), write
  there, now and after the command;
* the command's results go through :func:`emit` to a copy of the original stdout taken before the switch.

On the way out everything is flushed (Python's buffers and C's ``stdio`` buffers, which would otherwise reach
the restored fd 1 later) and fd 1 and ``sys.stdout`` are restored, so an in-process caller (a test calling
``gr_vl_verl.cli.main``) gets its own stdout back, with the results in it.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any, TextIO

#: Where :func:`emit` writes while :func:`results_stdout` is active; None outside it.
_results: TextIO | None = None


class StderrStandIn:
    """``sys.stdout`` while a command runs: every write goes to the ``sys.stderr`` of the moment it is made.

    Looked up at each call, not bound once, so a logging handler created during a command (vLLM's is bound to
    ``sys.stdout`` at import) keeps writing to stderr after the command, never to a closed or restored stream.
    """

    @staticmethod
    def _stderr() -> Any:
        # sys.stderr set to sys.stdout (`redirect_stderr(sys.stdout)`) would point this at itself
        return sys.stderr if not isinstance(sys.stderr, StderrStandIn) else sys.__stderr__

    def write(self, text: str) -> int:
        return self._stderr().write(text)

    def writelines(self, lines: Any) -> None:
        self._stderr().writelines(lines)

    def flush(self) -> None:
        self._stderr().flush()

    def __getattr__(self, name: str) -> Any:  # fileno, isatty, encoding, buffer, ...: stderr's
        return getattr(self._stderr(), name)


_STAND_IN = StderrStandIn()


def results_stream() -> TextIO:
    """Where a command's output goes now: the stream :func:`emit` writes to, for a writer that takes a stream.

    Inside :func:`results_stdout` this is the original stdout, unless the command itself redirected
    ``sys.stdout`` (``contextlib.redirect_stdout`` to a log file): then the redirection is honoured. Outside,
    it is ``sys.stdout``, so a command's ``run`` called directly prints as before.
    """
    return _results if _results is not None and sys.stdout is _STAND_IN else sys.stdout


def emit(*values: object, sep: str = " ", end: str = "\n", flush: bool = False) -> None:
    """``print`` for a command's output (its results, summary lines, the served URL) to :func:`results_stream`."""
    print(*values, sep=sep, end=end, file=results_stream(), flush=flush)


def _fflush_c_stdio() -> None:
    """Flush C's ``stdio`` buffers (printf from native code), so what was written while fd 1 was stderr goes
    there, not to the restored stdout at exit."""
    try:
        import ctypes

        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):  # no C library to reach (not on Linux or macOS): nothing buffered there
        pass


def _fd_of(stream: Any) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError and a ValueError
        return None


@contextlib.contextmanager
def results_stdout() -> Iterator[TextIO]:
    """For the ``with`` block: results through :func:`emit` to the current stdout, all else to stderr.

    Nested use (a command running another in-process) keeps the outer redirection. Yields the results stream.
    """
    global _results
    if _results is not None or sys.stdout is None or sys.stderr is None:
        yield _results if _results is not None else sys.stdout
        return
    entry_stdout = sys.stdout
    entry_stdout.flush()
    sys.stderr.flush()
    _fflush_c_stdio()
    saved: int | None = None
    try:
        saved = os.dup(1)
        os.dup2(2, 1)
    except OSError:  # fd 1 or 2 is closed: no child can write to stdout then; keep the Python-level switch
        if saved is not None:
            os.close(saved)
            saved = None
    results: TextIO = entry_stdout
    own_stream = saved is not None and _fd_of(entry_stdout) == 1
    if own_stream:  # the process's stdout: write results to the copy of the original fd 1, buffered alike
        results = open(  # noqa: SIM115 - closed in the finally below; closefd=False leaves the fd to us
            saved,
            "w",
            buffering=1 if getattr(entry_stdout, "line_buffering", False) else -1,
            encoding=getattr(entry_stdout, "encoding", None) or "utf-8",
            errors=getattr(entry_stdout, "errors", None) or "strict",
            closefd=False,
        )
        if getattr(entry_stdout, "write_through", False):  # python -u
            results.reconfigure(write_through=True)
    # A test's capture object or a redirect_stdout target stays the results stream as it is.
    _results, sys.stdout = results, _STAND_IN
    try:
        yield results
    finally:
        _results = None
        if sys.stdout is _STAND_IN:
            sys.stdout = entry_stdout
        try:
            results.flush()  # a reader that went away (`| head -1`) raises here, after the restore below
        finally:
            for stream in (sys.stderr, sys.__stdout__):  # what a library wrote to fd 1 belongs on stderr
                with contextlib.suppress(OSError, ValueError, AttributeError):
                    stream.flush()
            _fflush_c_stdio()
            if own_stream:
                with contextlib.suppress(OSError):
                    results.close()  # closefd=False: the fd is restored and closed below
            if saved is not None:
                os.dup2(saved, 1)
                os.close(saved)


def stdout_to_stderr_for_good() -> None:
    """After the last result: point fd 1 and ``sys.stdout`` at stderr until the process ends.

    For the ``gr-vl`` executable once the command has returned, so what interpreter exit sets off (atexit
    handlers, a library's shutdown message, a child process still winding down) cannot add to stdout.
    """
    if sys.stdout is not None:
        sys.stdout.flush()
    _fflush_c_stdio()
    with contextlib.suppress(OSError):
        os.dup2(2, 1)
    sys.stdout = _STAND_IN
