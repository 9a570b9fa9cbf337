"""vLLM's engine on this machine (its CPU build), as the project drives it: its build needs no GPU, and samples
are seeded per row. ``gr-vl eval`` through vLLM runs in tests/test_demo.py and tests/test_model_families_vllm.py,
``gr-vl classify --backend vllm`` in the latter, ``load_guard(..., backend="vllm")`` in tests/test_serve.py.

No stand-in: each test starts real vLLM engines (about 40 s each on two cores), in child processes
(``vllm_drivers.py``). What vLLM's CPU build guarantees, as measured here: greedy decoding is the same text
whatever the actor or batch; sampling with a per-request seed repeats itself within one engine and across
engines of the same build (the tests check both; one and two actors on two Ray nodes are tests/test_cluster.py's),
which GPUs do not promise (docs/generation.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from data_helpers import VLTRAIN
from ray_driver import run_driver

from gr_vl_verl.generation import GenerationConfig, sample_seed  # noqa: F401 - sample_seed documents the seeds

# Each test's child processes have limits summing below this ceiling (the vLLM engine starts in about 40 s).
pytestmark = pytest.mark.timeout(1500)
CLI_LIMIT, DRIVER_LIMIT, READ_LIMIT = 600, 600, 120

SMALL = ["--min-pixels", "784", "--max-pixels", "12544", "--no-progress"]
ENGINE = json.dumps({"max_model_len": 2048, "enforce_eager": True})


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    from gr_vl_verl.cli import main

    out = tmp_path_factory.mktemp("prep_vllm")
    assert main(["prep", "vltrain", "--data-root", str(VLTRAIN), "--out", str(out), "--formats", "rl", *SMALL]) == 0
    return out


def test_vllm_is_its_cpu_build_and_needs_no_gpu(tiny_model_dir):
    from gr_vl_verl.cpu.vllm_dist import vllm_is_cpu_build

    assert vllm_is_cpu_build()
    config = GenerationConfig(model=str(tiny_model_dir), backend="vllm")
    assert config.gpus_per_actor == 0
    with pytest.raises(ValueError, match="CPU build, which uses no GPUs"):
        GenerationConfig(model=str(tiny_model_dir), backend="vllm", num_gpus=1)


def test_engine_samples_are_seeded_per_row_and_sample(prepared, tiny_model_dir):
    out = run_driver("vllm_drivers:engine_samples", str(tiny_model_dir), str(prepared / "rl_train.parquet"),
                     [8, 14], timeout=DRIVER_LIMIT)  # fmt: skip
    assert 0 in out["images"] and any(out["images"]), "text and image rows"
    assert all(len(samples) == 3 for samples in out["first"])
    # the same (row, sample) seed gives the same text, whatever the order of the requests
    assert out["again"] == out["first"]
    # samples of a row differ (different seeds), and tokens count the generated ids
    assert any(len({s[0] for s in samples}) > 1 for samples in out["first"])
    # "length" means the sample has max_tokens tokens; one with fewer ended at a stop
    sampled = [(s[1], s[2], 16) for samples in out["first"] for s in samples]
    for tokens, reason, limit in sampled + [(t, r, 2) for t, r in out["short"]]:
        assert 0 < tokens <= limit and reason in ("stop", "length")
        assert (reason != "length" or tokens == limit) and (tokens == limit or reason == "stop"), (tokens, reason)
    assert any(r == "length" for _, r in out["short"]), "max_tokens=2 stops some sample at the limit"
