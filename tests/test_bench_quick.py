"""Every benchmark in bench/ runs in its --quick mode, each in a process of its own with a timeout, so a bench
broken by a change fails CI rather than the next person who measures. Its numbers are not checked (timing)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from ray_driver import run_in_group

ROOT = Path(__file__).resolve().parents[1]
BENCHES = sorted((ROOT / "bench").glob("*.py"))
# Benches that read a run another test makes rather than making one: grpo_plugin_share.py reads the GRPO run of
# tests/test_e2e_training.py (--from-run), so the suite runs no extra trainer for it.
ON_OTHER_RUNS = {"grpo_plugin_share.py": "tests/test_e2e_training.py"}


def test_there_are_benches():
    assert len(BENCHES) >= 9
    for bench, test in ON_OTHER_RUNS.items():  # the test that runs it exists and names it
        assert f"{bench}" in (ROOT / test).read_text()


@pytest.mark.parametrize("bench", [b for b in BENCHES if b.name not in ON_OTHER_RUNS], ids=lambda p: p.name)
def test_bench_runs_quick(bench, tmp_path):
    env = dict(os.environ, RAY_AUTH_MODE="disabled", TOKENIZERS_PARALLELISM="false")
    # its own process group: a bench that starts Ray, vLLM or a trainer is killed whole on a timeout
    done = run_in_group([sys.executable, str(bench), "--quick"], timeout=840, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip(), "a bench prints what it measured"
