"""``gr_vl_verl.fate_share``: what a process starts dies with it, however it dies (the fix for vLLM engine
processes outliving a Ray actor lost with its node). Plain processes here; the vLLM case is in
``test_cluster.py``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from gr_vl_verl import fate_share

# A process that starts its watchdog (or not), then a child and a grandchild that would run for minutes,
# prints the pids and waits to be killed.
PARENT = """
import subprocess, sys, time
from gr_vl_verl.fate_share import children_die_with_this_process
watchdog = children_die_with_this_process() if sys.argv[1] == "watched" else 0
again = children_die_with_this_process() if sys.argv[1] == "watched" else 0
child = subprocess.Popen(["sleep", "300"])
shell = subprocess.Popen(["sh", "-c", "sleep 301 & wait"])
time.sleep(1.5)  # the watchdog looks twice a second: it has seen them
print(watchdog, again, child.pid, shell.pid, flush=True)
time.sleep(300)
"""


def _start_times(pids: list[int]) -> dict[int, int]:
    table = fate_share.process_table()
    return {pid: table[pid][1] for pid in pids if pid in table}


def _family(watched: bool) -> tuple[subprocess.Popen, list[int], dict[int, int]]:
    parent = subprocess.Popen([sys.executable, "-c", PARENT, "watched" if watched else "bare"],
                              stdout=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    try:
        watchdog, again, child, shell = (int(x) for x in parent.stdout.readline().split())
        family = fate_share.descendants(parent.pid, fate_share.process_table())
    except Exception:
        os.killpg(parent.pid, signal.SIGKILL)
        raise
    assert watchdog == again  # one watchdog per process
    assert {child, shell} <= set(family) and len(family) == (4 if watched else 3)  # + sleep 301 (+ watchdog)
    return parent, [p for p in family if p != watchdog], family


def _still_running(family: dict[int, int], limit_s: float) -> list[int]:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        running = [p for p, start in family.items() if fate_share.alive(p, start)]
        if not running:
            return []
        time.sleep(0.1)
    return running


def test_a_killed_process_takes_what_it_started_with_it():
    parent, started, family = _family(watched=True)
    parent.kill()  # SIGKILL: no handler, no atexit, nothing of the parent runs
    parent.wait(timeout=30)
    # its child, its grandchild and the watchdog itself are gone (SIGTERM, then SIGKILL after the grace)
    assert _still_running(family, limit_s=fate_share.POLL_S + fate_share.GRACE_S + 10) == []


def test_without_the_watchdog_they_outlive_it():
    """What the watchdog is for: orphans of a killed process run on (init adopts them)."""
    parent, started, family = _family(watched=False)
    parent.kill()
    parent.wait(timeout=30)
    try:
        time.sleep(fate_share.POLL_S * 3)
        assert sorted(_start_times(started)) == sorted(started)
    finally:
        for pid, start in family.items():
            if fate_share.alive(pid, start):
                os.kill(pid, signal.SIGKILL)


def test_end_all_spares_a_process_whose_pid_was_reused():
    sleeper = subprocess.Popen(["sleep", "300"])
    try:
        start = _start_times([sleeper.pid])[sleeper.pid]
        fate_share.end_all({sleeper.pid: start + 1}, grace_s=0.2)  # the same pid, another start time
        assert sleeper.poll() is None
        fate_share.end_all({sleeper.pid: start}, grace_s=5)
        assert sleeper.wait(timeout=30) == -signal.SIGTERM
    finally:
        sleeper.kill()
        sleeper.wait(timeout=30)
