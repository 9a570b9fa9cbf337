"""The test suite itself: no test or bench can hang on a child process or leave one behind, and no assertion
depends on how fast this machine is. (Ray never starting in the pytest process, and the work tree gaining no
files, are checked at the end of every session: ``conftest._suite_leaves_nothing_behind``.)"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import untracked_paths
from ray_driver import run_in_group

from gr_vl_verl.trainer import launch

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(ROOT.glob("tests/*.py")) + sorted(ROOT.glob("bench/*.py"))
#: Calls that read a clock: an assertion on one of them (or on a name computed from one) fails on a slow machine.
CLOCKS = {"perf_counter", "monotonic", "time", "process_time"}


def _calls(tree: ast.AST, module: str, names: set[str]) -> list[ast.Call]:
    return [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Call)
        and isinstance(n.func, ast.Attribute)
        and n.func.attr in names
        and isinstance(n.func.value, ast.Name)
        and n.func.value.id == module
    ]


def test_every_subprocess_has_a_timeout():
    """``subprocess.run`` takes ``timeout=``; a ``Popen`` is waited on with one (it has ``wait``/``communicate``
    with a timeout in the same file)."""
    missing = []
    for path in SOURCES:
        text = path.read_text()
        tree = ast.parse(text)
        for call in _calls(tree, "subprocess", {"run", "check_output", "check_call", "call"}):
            if not any(k.arg == "timeout" for k in call.keywords):
                missing.append(f"{path.relative_to(ROOT)}:{call.lineno}")
        if _calls(tree, "subprocess", {"Popen"}) and "timeout=" not in text:
            missing.append(f"{path.relative_to(ROOT)}: Popen without any timeout")
    assert missing == []


def test_no_assertion_bounds_a_measured_duration():
    """No ``assert time.monotonic() - start < 30``: how long something took depends on the machine and its
    load. (A wait loop's deadline, ``assert time.monotonic() < deadline``, is a timeout and allowed.)"""
    offending = []
    for path in SOURCES:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if not isinstance(node, ast.Assert):
                continue
            durations = [
                n
                for n in ast.walk(node)
                if isinstance(n, ast.BinOp) and isinstance(n.op, ast.Sub) and _calls(n, "time", CLOCKS)
            ]
            if durations:
                offending.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offending == []


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")  # a zombie is dead, waiting for whoever adopted it to reap it


# A child that starts a grandchild (as Ray, vLLM and torchrun do), writes its pid and hangs.
_FAMILY = """
import subprocess, sys, time
grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
open(sys.argv[1], "w").write(str(grandchild.pid))
time.sleep(600)
"""


def _grandchild(pid_file: Path) -> int:
    for _ in range(300):  # the child writes it within a second; bounded wait, not a timing assertion
        if pid_file.exists() and pid_file.read_text():
            return int(pid_file.read_text())
        time.sleep(0.1)
    raise AssertionError("the child never started its grandchild")


def _wait_gone(pid: int) -> bool:
    for _ in range(100):
        if not _alive(pid):
            return True
        time.sleep(0.1)
    return False


def test_a_timed_out_driver_is_killed_with_its_grandchildren(tmp_path):
    pid_file = tmp_path / "pid"
    with pytest.raises(subprocess.TimeoutExpired):
        run_in_group([sys.executable, "-c", _FAMILY, str(pid_file)], timeout=5)
    grandchild = _grandchild(pid_file)
    assert _wait_gone(grandchild), f"grandchild {grandchild} outlived its timed-out parent"


def test_a_timed_out_trainer_run_is_killed_with_its_grandchildren(tmp_path):
    pid_file = tmp_path / "pid"
    with pytest.raises(launch.TrainingRunError, match="ran past 5 s"):
        launch.run([sys.executable, "-c", _FAMILY, str(pid_file)], tmp_path, "family", timeout=5)
    grandchild = _grandchild(pid_file)
    assert _wait_gone(grandchild), f"grandchild {grandchild} outlived its timed-out parent"


def test_a_finished_driver_leaves_no_grandchild_behind(tmp_path):
    pid_file = tmp_path / "pid"
    code = _FAMILY.rsplit("time.sleep(600)", 1)[0]  # the child exits at once, its grandchild still sleeping
    done = run_in_group([sys.executable, "-c", code, str(pid_file)], timeout=60)
    assert done.returncode == 0, done.stderr
    grandchild = _grandchild(pid_file)
    assert _wait_gone(grandchild), f"grandchild {grandchild} outlived its parent"


def test_trainer_commands_keep_hydra_out_of_the_current_folder(tmp_path):
    """Hydra writes ``outputs/<date>/<time>`` under the current folder unless told where."""
    sft = launch.sft_command(tmp_path / "m", tmp_path / "t.parquet", tmp_path / "sft", 1)
    grpo = launch.grpo_command(tmp_path / "m", tmp_path / "t.parquet", tmp_path / "v.parquet", tmp_path / "g", 1)
    assert f"hydra.run.dir={tmp_path / 'sft' / 'hydra'}" in sft
    assert f"hydra.run.dir={tmp_path / 'g' / 'hydra'}" in grpo


def test_the_work_tree_check_sees_new_files_and_not_caches(tmp_path):
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q", str(tmp_path)], check=True, timeout=60)
    (tmp_path / ".gitignore").write_text("outputs/\n")
    before = untracked_paths(tmp_path)
    (tmp_path / "outputs" / "2026-01-01").mkdir(parents=True)
    (tmp_path / "outputs" / "2026-01-01" / "main.log").write_text("x")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text("x")
    (tmp_path / "pkg" / "__pycache__").mkdir(parents=True)
    (tmp_path / "pkg" / "__pycache__" / "m.pyc").write_text("x")
    assert untracked_paths(tmp_path) - before == {"outputs/2026-01-01/main.log", "run/metrics.jsonl"}


def test_hypothesis_keeps_its_files_out_of_the_work_tree():
    from hypothesis import settings

    database = getattr(settings.default.database, "path", None)
    assert database is not None and not Path(database).resolve().is_relative_to(ROOT)
    assert not Path(os.environ["HYPOTHESIS_STORAGE_DIRECTORY"]).resolve().is_relative_to(ROOT)
