"""Child processes that lead a process group of their own, killed whole on a timeout and after they exit.

verl's trainers, Ray and vLLM start grandchildren (torchrun's ranks, Ray's workers, vLLM's engine process) that
outlive a killed parent; a run that times out, or ends while one of them lingers, must not leave them behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
from collections.abc import Sequence
from typing import IO, Any


def kill_group(pid: int) -> None:
    """SIGKILL every process of the group ``pid`` leads (a child started with ``start_new_session``)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def wait_group(proc: subprocess.Popen, timeout: float) -> int | None:
    """Wait for ``proc``; on a timeout kill its group and return None; kill what of the group outlives it."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc.pid)
        proc.wait()
        return None
    finally:
        kill_group(proc.pid)


def run_in_group(cmd: Sequence[str], *, timeout: float, **kwargs: Any) -> subprocess.CompletedProcess:
    """``subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)``, the child leading a
    new process group (:func:`wait_group`); ``TimeoutExpired`` once the whole group is killed.

    Output goes to temporary files rather than pipes: a grandchild that inherited a pipe would keep it open
    after the child exits, and reading to its end would wait for the grandchild."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(list(cmd), stdout=out, stderr=err, start_new_session=True, **kwargs)
        returncode = wait_group(proc, timeout)
        if returncode is None:
            raise subprocess.TimeoutExpired(list(cmd), timeout, output=_read(out), stderr=_read(err))
        return subprocess.CompletedProcess(list(cmd), returncode, _read(out), _read(err))


def _read(file: IO[bytes]) -> str:
    file.seek(0)
    return file.read().decode(errors="replace")
