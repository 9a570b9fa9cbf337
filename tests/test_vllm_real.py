"""The project's vLLM paths on this machine's vLLM (its CPU build): the engine, ``gr-vl generate`` with one and
two Ray actors, ``gr-vl eval``, ``gr-vl classify`` and ``load_guard(..., backend="vllm")``.

No stand-in: each test starts real vLLM engines (about 40 s each on two cores), in child processes
(``vllm_drivers.py``). What vLLM's CPU build guarantees, as measured here: greedy decoding is the same text
whatever the actor or batch; sampling with a per-request seed repeats itself within one engine and across
engines of the same build (the tests check both), which GPUs do not promise (docs/generation.md).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from data_helpers import VLTEST, VLTRAIN
from ray_driver import run_driver, run_in_group

from gr_vl_verl.generation import GenerationConfig, sample_seed  # noqa: F401 - sample_seed documents the seeds
from gr_vl_verl.protocol import parse_answer, predicted_labels

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
    assert main(["prep", "vltest", "--benchmark-dir", str(VLTEST / "benchmark"), "--image-dataset",
                 str(VLTEST / "images"), "--out", str(out), *SMALL]) == 0  # fmt: skip
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


def _generate(prepared, model, out: Path, concurrency: int, temperature: str, n: str) -> int:
    argv = ["generate", "--data", str(prepared / "rl_train.parquet"), "--model", str(model), "--out", str(out),
            "--backend", "vllm", "--n", n, "--temperature", temperature, "--max-tokens", "12", "--seed", "3",
            "--shard-size", "12", "--concurrency", str(concurrency), "--engine-kwargs", ENGINE,
            "--no-progress"]  # fmt: skip
    return run_driver("vllm_drivers:cli", argv, timeout=CLI_LIMIT)


# Sampled, the stronger claim: every sample's seed is its row's and its index's, whichever engine draws it.
# Greedy decoding over actors on two Ray nodes is tests/test_cluster.py's.
@pytest.mark.parametrize(("temperature", "n"), [("1.0", "2")])
def test_generate_with_one_and_two_actors_gives_the_same_outputs(prepared, tiny_model_dir, tmp_path, temperature, n):
    assert _generate(prepared, tiny_model_dir, tmp_path / "one", 1, temperature, n) == 0
    assert _generate(prepared, tiny_model_dir, tmp_path / "two", 2, temperature, n) == 0
    one = run_driver("vllm_drivers:read_outputs", str(tmp_path / "one"), timeout=READ_LIMIT)
    two = run_driver("vllm_drivers:read_outputs", str(tmp_path / "two"), timeout=READ_LIMIT)
    assert len(one) == 34 * int(n)
    assert one == two
    summary = json.loads((tmp_path / "two" / "generate_summary.json").read_text())
    # the engines Ray ran the rows on, each with its share: 34 rows are one batch of 64, so one engine of the
    # two serves them all here; tests/test_generation_ray.py spreads smaller batches over two actors
    actors = summary["actors"]
    assert summary["config"]["concurrency"] == 2 and 1 <= len(actors) <= 2
    assert sum(a["rows"] for a in actors) == 34 and all(a["actor"] and a["node"] for a in actors)


def test_eval_and_classify_through_vllm(prepared, tiny_model_dir, tmp_path):
    out = tmp_path / "eval"
    argv = ["eval", "--data", str(prepared / "eval.parquet"), "--model", str(tiny_model_dir), "--out", str(out),
            "--backend", "vllm", "--max-tokens", "12", "--engine-kwargs", ENGINE, "--no-progress"]  # fmt: skip
    assert run_driver("vllm_drivers:cli", argv, timeout=CLI_LIMIT) == 0
    lines = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert lines and all(isinstance(x["output"], str) for x in lines) and any(x["output"].strip() for x in lines)

    items = [
        {"request": "How do I bake bread?"},
        {"request": "Describe this.", "image": str(VLTRAIN / "image" / "img_000.png")},
        {"request": "Tell me a joke.", "response": "Why did the chicken cross the road?"},
    ]
    # `gr-vl classify` as a pipeline runs it (load_guard(..., backend="vllm") inside): stdout is JSON Lines, one
    # verdict per item, while vLLM's engine, its EngineCore and its worker (child processes) log to stderr
    (tmp_path / "items.jsonl").write_text("".join(json.dumps(item) + "\n" for item in items))
    argv = [sys.executable, "-m", "gr_vl_verl", "classify", "--model", str(tiny_model_dir), "--backend", "vllm",
            "--max-tokens", "24", "--engine-kwargs", ENGINE, "--input", str(tmp_path / "items.jsonl")]  # fmt: skip
    done = run_in_group(argv, timeout=CLI_LIMIT)
    assert done.returncode == 0, done.stderr[-3000:]
    results = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]  # fails on a non-JSON line
    assert "INFO" in done.stderr and "(EngineCore" in done.stderr, done.stderr[-3000:]
    assert len(results) == 3
    for item, r in zip(items, results, strict=True):
        # every field is the protocol's reading of the answer vLLM wrote (strict, the guard's default)
        assert 0 < r["output_tokens"] <= 24 and r["output"].strip()
        labels = predicted_labels(r["output"], "strict")
        assert (r["request"], r["response"]) == (labels.prompt_label, labels.response_label if "response" in item
                                                 else None)  # fmt: skip
        think = parse_answer(r["output"]).think
        assert r["reasoning"] == (think.strip() if think is not None else None)
        assert r["label_source"] == {"request": "text", "response": "text"}
        assert r["p_harmful"]["response"] is None or "response" in item
    assert results[0]["response"] is None  # no response to judge
