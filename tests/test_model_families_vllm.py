"""The tiny Qwen3-VL through this machine's vLLM (its CPU build): ``gr-vl eval`` on text, image and text-image
benchmark rows, and ``gr-vl serve`` answering ``gr-vl classify --server`` as ``gr-vl classify --backend vllm``
answers on the same items. The model is the tiny Qwen3-VL fine-tuned for a few seconds to answer in the guard's
format (``harm_helpers.sft_tiny_guard``; the random one ends every answer at its first token). Three engine
starts, in child processes (never in the pytest process). The trainers on Qwen3-VL (R-SFT, GRPO, LoRA GRPO) are
tests/test_e2e_training.py's."""

from __future__ import annotations

import json
import sys

import pyarrow.parquet as pq
import pytest
from data_helpers import VLTEST
from harm_helpers import sft_tiny_guard
from ray_driver import run_driver, run_in_group
from test_serve import ENGINE, Served, _items

from gr_vl_verl.models.families import QWEN3_VL
from gr_vl_verl.protocol import parse_answer, predicted_labels

pytestmark = pytest.mark.timeout(1500)  # the eval's 600 s, the server's 400 s start, two classify runs of 200 s


MAX_TOKENS = 48  # the fine-tuned guard's answers end within it, verdicts included


@pytest.fixture(scope="module")
def guard(tiny_qwen3_vl_dir, tmp_path_factory) -> str:
    return sft_tiny_guard(str(tiny_qwen3_vl_dir), str(tmp_path_factory.mktemp("qwen3_vl_guard")), steps=150)


def test_eval_on_tiny_qwen3_vl_answers_text_image_and_text_image_rows(guard, tmp_path):
    """The eval parquet keeps images at the evaluation bounds on Qwen3-VL's grid, and evaluation through vLLM
    answers every row (vLLM's processor gets the family's bounds: tests/test_model_families.py)."""
    from gr_vl_verl.cli import main

    prep = tmp_path / "prep"
    argv = ["prep", "vltest", "--benchmark-dir", str(VLTEST / "benchmark"), "--image-dataset",
            str(VLTEST / "images"), "--out", str(prep), "--model-family", "qwen3_vl", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    rows = pq.read_table(prep / "eval.parquet").to_pylist()
    assert {r["modality"] for r in rows} == {"text", "image", "text_image"}
    options = json.loads((prep / "vltest_summary.json").read_text())["options"]
    assert (options["eval_min_pixels"], options["eval_max_pixels"]) == QWEN3_VL.pixels("eval")

    out = tmp_path / "eval"
    argv = ["eval", "--data", str(prep / "eval.parquet"), "--model", guard, "--out", str(out),
            "--backend", "vllm", "--max-tokens", "48", "--engine-kwargs", json.dumps(ENGINE),
            "--no-progress"]  # fmt: skip
    assert run_driver("vllm_drivers:cli", argv, timeout=600) == 0
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert {p["id"] for p in predictions} == {r["id"] for r in rows}
    report = json.loads((out / "report.json").read_text())
    assert report["tokens"]["generations"] == len(rows) and report["unparsed"]["rate"] < 100, report["unparsed"]
    assert all(0 < p["output_tokens"] <= 48 for p in predictions)


def test_served_tiny_qwen3_vl_answers_as_the_local_vllm_guard(guard, tmp_path):
    """Both sides resize images on the 32-pixel grid (the client: ``--model-family qwen3_vl``; vLLM's processor:
    the bounds the server gives it), so the greedy answers are the same, item by item."""
    items = _items(tmp_path)
    (tmp_path / "items.jsonl").write_text("".join(json.dumps(item) + "\n" for item in items))
    flags = ["--max-tokens", str(MAX_TOKENS), "--input", str(tmp_path / "items.jsonl")]

    def classify(*where: str) -> tuple[list[dict], str]:
        done = run_in_group([sys.executable, "-m", "gr_vl_verl", "classify", *where, *flags], timeout=200)
        assert done.returncode == 0, done.stderr[-3000:]
        return [json.loads(line) for line in done.stdout.splitlines() if line.strip()], done.stderr  # JSON only

    server = Served(guard, max_tokens=MAX_TOKENS)  # the server's limit per answer
    try:
        server.wait(400)
        remote, _ = classify("--server", server.url, "--model-family", "qwen3_vl")
    finally:
        server.stop()
    # `gr-vl classify` as a pipeline runs it: stdout is JSON Lines, one verdict per item, while vLLM's engine (in
    # the command's process on the CPU build: docs/cpu.md) logs to stderr
    local, log = classify("--model", guard, "--backend", "vllm", "--engine-kwargs", json.dumps(ENGINE))
    assert "INFO" in log and "Initializing a V1 LLM engine" in log, log[-3000:]
    assert len(remote) == len(local) == len(items)
    for item, r in zip(items, local, strict=True):
        # every field is the protocol's reading of the answer vLLM wrote (strict, the guard's default)
        labels = predicted_labels(r["output"], "strict")
        said = (labels.prompt_label, labels.response_label if "response" in item else None)
        assert (r["request"], r["response"]) == said, r
        think = parse_answer(r["output"]).think
        assert r["reasoning"] == (think.strip() if think is not None else None)
        assert r["label_source"] == {"request": "text", "response": "text"}
        assert r["p_harmful"]["response"] is None or "response" in item
    drop = ("p_harmful", "label_source")  # the server gives no label log-probabilities
    assert [{k: v for k, v in r.items() if k not in drop} for r in remote] == [
        {k: v for k, v in r.items() if k not in drop} for r in local
    ]
    assert all(0 < r["output_tokens"] <= MAX_TOKENS for r in remote)
    assert len({r["output"] for r in remote}) > 1 and any(r["request"] for r in remote), remote
