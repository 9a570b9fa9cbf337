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


def test_there_are_benches():
    assert len(BENCHES) >= 9


@pytest.mark.parametrize("bench", BENCHES, ids=lambda p: p.name)
def test_bench_runs_quick(bench, tmp_path):
    env = dict(os.environ, RAY_AUTH_MODE="disabled", TOKENIZERS_PARALLELISM="false")
    # its own process group: a bench that starts Ray, vLLM or a trainer is killed whole on a timeout
    done = run_in_group([sys.executable, str(bench), "--quick"], timeout=840, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip(), "a bench prints what it measured"
