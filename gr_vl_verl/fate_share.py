"""The processes a process starts die with it, however it dies (Linux).

vLLM's offline engine runs in child processes: ``VLLM::EngineCore``, which starts ``VLLM::Worker``. vLLM 0.24
ties the worker to the engine core (a pipe whose far end closes when the core exits, ``death_pipe`` in
``vllm/v1/executor/multiproc_executor.py``), but nothing ties the engine core to the process that built it:
the client shuts it down on a clean exit only (``vllm/v1/engine/utils.py``, a ``weakref.finalize``). When that
process dies abruptly (a Ray actor whose node's raylet was killed, anything SIGKILLed), init adopts the engine
core and it keeps its CPUs and memory.

Linux's parent-death signal (``prctl(PR_SET_PDEATHSIG)``) would have to be set inside the engine core, which
vLLM starts itself, and it fires when the creating *thread* ends, not the process. Hence a watchdog: a small
process (the standard library only) started once per process by :func:`children_die_with_this_process`. Every
``POLL_S`` seconds it notes the descendants of the process it watches; once that process is gone (the watchdog
is re-parented), it sends SIGTERM to those still running, with whatever they started meanwhile (vLLM's engine
core stops its workers on SIGTERM), and SIGKILL to any left after ``GRACE_S``. A process is recognised by its
pid *and* start time, so a reused pid is never signalled.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

#: Seconds between two looks at the watched process and its descendants.
POLL_S = 0.5
#: Seconds the descendants get to stop on SIGTERM before SIGKILL.
GRACE_S = 5.0

#: The watchdog of this process, by pid (a forked child has a pid of its own and needs its own watchdog).
_WATCHDOGS: dict[int, subprocess.Popen] = {}

Stat = tuple[int, int]  # (parent pid, start time in clock ticks since boot)


def children_die_with_this_process() -> int | None:
    """Start this process's watchdog, once per process; its pid. A no-op (None) where there is no ``/proc``."""
    if not sys.platform.startswith("linux") or not os.path.isdir("/proc"):
        return None
    me = os.getpid()
    running = _WATCHDOGS.get(me)
    if running is not None and running.poll() is None:
        return running.pid
    # -I: the watchdog imports nothing of this package or its environment, only the standard library.
    proc = subprocess.Popen([sys.executable, "-I", os.path.abspath(__file__), str(me)], stdin=subprocess.DEVNULL)
    _WATCHDOGS[me] = proc
    return proc.pid


def process_table() -> dict[int, Stat]:
    """Every live process (zombies are dead): pid -> (parent pid, start time)."""
    table: dict[int, Stat] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None:
                table[int(entry)] = stat
    return table


def descendants(root: int, table: dict[int, Stat]) -> dict[int, int]:
    """pid -> start time of every process below ``root`` in ``table`` (``root`` not included)."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found: dict[int, int] = {}
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        if pid not in found:
            found[pid] = table[pid][1]
            todo.extend(children.get(pid, []))
    return found


def _stat(pid: int) -> Stat | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()  # the command name, in parentheses, may hold spaces
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[1]), int(fields[19])


def alive(pid: int, start: int) -> bool:
    """Whether ``pid`` is running and is the process that started at ``start`` (not a reuse of its pid)."""
    stat = _stat(pid)
    return stat is not None and stat[1] == start


def _signal(pids: dict[int, int], sig: int) -> None:
    for pid, start in pids.items():
        if alive(pid, start):
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass


def end_all(pids: dict[int, int], grace_s: float = GRACE_S) -> None:
    """SIGTERM ``pids`` (pid -> start time), then SIGKILL those still running after ``grace_s``."""
    _signal(pids, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(alive(p, s) for p, s in pids.items()):
        time.sleep(0.1)
    _signal(pids, signal.SIGKILL)


def watch(parent: int, poll_s: float = POLL_S) -> None:
    """The watchdog: follow ``parent``'s descendants while it lives, then end them."""
    me = os.getpid()
    known: dict[int, int] = {}
    while os.getppid() == parent:
        known = descendants(parent, process_table())
        time.sleep(poll_s)
    table = process_table()
    doomed: dict[int, int] = {}
    for pid, start in known.items():
        if pid != me and table.get(pid, (0, -1))[1] == start:
            doomed[pid] = start
            doomed.update(descendants(pid, table))  # what it started since the last look
    doomed.pop(me, None)
    end_all(doomed)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C meant for the watched process is not for this one
    watch(int(sys.argv[1]))
