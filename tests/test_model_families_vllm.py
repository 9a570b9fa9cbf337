"""The tiny Qwen3-VL through this machine's vLLM (its CPU build): ``gr-vl prep --model-family qwen3_vl`` and
``gr-vl generate`` on a text row, an image row and a text-image row, in a child process (``vllm_drivers.py``)."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from data_helpers import VLTRAIN
from ray_driver import run_driver

from gr_vl_verl.models.families import QWEN3_VL

pytestmark = pytest.mark.timeout(900)


def test_generate_on_tiny_qwen3_vl_with_text_image_and_text_image_rows(tiny_qwen3_vl_dir, tmp_path):
    """The RL rows carry images scaled to Qwen3-VL's RL bounds; generation gives vLLM's processor the same bounds
    (read from the model's config.json, not given on the command line), and every row gets an answer."""
    from gr_vl_verl.cli import main

    prep = tmp_path / "prep"
    argv = ["prep", "vltrain", "--data-root", str(VLTRAIN), "--out", str(prep), "--formats", "rl",
            "--model-family", "qwen3_vl", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    table = pq.read_table(prep / "rl_train.parquet")
    ids = [r["id"] for r in table.column("extra_info").to_pylist()]
    # the first row of each split: text, image, text-image
    picks = [next(k for k, i in enumerate(ids) if f"VLTrain{split}-" in i) for split in ("Text", "Image", "TextImage")]
    data = tmp_path / "three.parquet"
    pq.write_table(table.take(picks), data)

    out = tmp_path / "gen"
    engine = json.dumps({"max_model_len": 2048, "enforce_eager": True})
    argv = ["generate", "--data", str(data), "--model", str(tiny_qwen3_vl_dir), "--out", str(out), "--backend",
            "vllm", "--max-tokens", "8", "--engine-kwargs", engine, "--no-progress"]  # fmt: skip
    assert run_driver("vllm_drivers:cli", argv, timeout=600) == 0

    summary = json.loads((out / "generate_summary.json").read_text())
    assert (summary["config"]["min_pixels"], summary["config"]["max_pixels"]) == QWEN3_VL.pixels("rl")
    rows = [r for path in sorted(out.glob("shard-*.parquet")) for r in pq.read_table(path).to_pylist()]
    assert [r["id"] for r in rows] == [ids[k] for k in picks]
    images = [len(r or []) for r in table.take(picks).column("images").to_pylist()]
    assert images == [0, 1, 1]
    for row in rows:
        assert 0 < row["output_tokens"] <= 8 and row["finish_reason"] in ("stop", "length")
