"""Evaluation images at the released evaluator's bounds: `gr-vl prep vltest` stores them so, the summary says
which bounds each parquet has, generation hands the processor the bounds of its input's stage (evaluation's for
an eval parquet, RL's for an RL one), and the guard follows evaluation."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from data_helpers import png

from gr_vl_verl.cli import main as cli_main
from gr_vl_verl.data.images import EVAL_MAX_PIXELS, EVAL_MIN_PIXELS, MAX_PIXELS, MIN_PIXELS, ImagePolicy
from gr_vl_verl.generation import GenerationConfig
from gr_vl_verl.generation.config import input_pixels
from gr_vl_verl.generation.engines import TransformersEngine, vllm_engine_kwargs
from gr_vl_verl.generation.prompts import build_request
from gr_vl_verl.guard import prepare_item
from gr_vl_verl.protocol import INSTRUCTION


def test_the_bounds_are_qwen_vl_utils_defaults():
    """What the released generate.py got from `process_vision_info`: 4 to 16384 tokens of 28 x 28 pixels."""
    from qwen_vl_utils import vision_process

    factor = 28 * 28
    assert (EVAL_MIN_PIXELS, EVAL_MAX_PIXELS) == (3_136, 12_845_056)
    assert vision_process.IMAGE_MIN_TOKEN_NUM * factor == EVAL_MIN_PIXELS
    assert vision_process.IMAGE_MAX_TOKEN_NUM * factor == EVAL_MAX_PIXELS
    assert ImagePolicy.evaluation().bounds == (EVAL_MIN_PIXELS, EVAL_MAX_PIXELS)
    assert ImagePolicy().bounds == (MIN_PIXELS, MAX_PIXELS)  # the default policy stays the RL one


def _benchmark(root: Path) -> Path:
    """An image benchmark of two rows: a 200 x 200 meme (inside the eval bounds) and a 40 x 30 one (below)."""
    (root / "HarmImageTest").mkdir(parents=True)
    rows = []
    for name, (w, h) in {"meme": (200, 200), "tiny": (40, 30)}.items():
        (root / "HarmImageTest" / f"{name}.png").write_bytes(png(w, h))
        user = INSTRUCTION + "\n\nHuman user:\n<image>\n\nAI assistant:\nNone\n"
        answer = "Answers: \nRequest: harmful\nResponse: unharmful\n"
        rows.append({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}],
                     "images": [f"./HarmImageTest/{name}.png"]})  # fmt: skip
    (root / "HarmImageTest.json").write_text(json.dumps(rows))
    return root


def _sizes(path: Path) -> list[tuple[int, int]]:
    from PIL import Image

    return [Image.open(io.BytesIO(r["images"][0]["bytes"])).size for r in pq.read_table(path).to_pylist()]


def test_prep_vltest_stores_eval_images_at_the_evaluators_bounds(tmp_path, capsys):
    bench = _benchmark(tmp_path / "bench")
    out = tmp_path / "out"
    assert cli_main(["prep", "vltest", "--benchmark-dir", str(bench), "--out", str(out), "--formats", "eval,rl",
                     "--no-progress"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    eval_sizes, rl_sizes = _sizes(out / "eval.parquet"), _sizes(out / "rl_test.parquet")
    assert eval_sizes[0] == (200, 200)  # inside [3136, 12845056]: its own size, no upscaling
    assert EVAL_MIN_PIXELS <= eval_sizes[1][0] * eval_sizes[1][1] < 2 * EVAL_MIN_PIXELS  # 1200 px: scaled up
    assert rl_sizes[0][0] * rl_sizes[0][1] >= MIN_PIXELS  # the RL output keeps the RL bounds (512 x 512)
    summary = json.loads((out / "vltest_summary.json").read_text())
    outputs = summary["outputs"]
    assert (outputs["eval.parquet"]["min_pixels"], outputs["eval.parquet"]["max_pixels"]) == (3_136, 12_845_056)
    assert (outputs["rl_test.parquet"]["min_pixels"], outputs["rl_test.parquet"]["max_pixels"]) == (262_144, 4_194_304)
    assert summary["options"]["eval_min_pixels"] == EVAL_MIN_PIXELS
    assert "eval.parquet: written 2, skipped 0; images 3,136-12,845,056 pixels" in printed
    # the flags move them
    assert cli_main(["prep", "vltest", "--benchmark-dir", str(bench), "--out", str(tmp_path / "small"),
                     "--eval-max-pixels", "10000", "--no-progress"]) == 0  # fmt: skip
    w, h = _sizes(tmp_path / "small" / "eval.parquet")[0]
    assert w * h <= 10_000 and w == h


def test_generation_gives_the_processor_the_bounds_of_its_inputs_stage(tiny_model_dir):
    assert input_pixels("eval") == (EVAL_MIN_PIXELS, EVAL_MAX_PIXELS)
    assert input_pixels("rl") == (MIN_PIXELS, MAX_PIXELS)  # mining sees what the policy will train on
    config = GenerationConfig(model=str(tiny_model_dir), min_pixels=3_136, max_pixels=12_845_056)
    assert vllm_engine_kwargs(config)["mm_processor_kwargs"] == {"min_pixels": 3_136, "max_pixels": 12_845_056}
    assert "mm_processor_kwargs" not in vllm_engine_kwargs(GenerationConfig(model=str(tiny_model_dir)))
    with pytest.raises(ValueError, match="give both or neither"):
        GenerationConfig(model=str(tiny_model_dir), min_pixels=3_136)
    with pytest.raises(ValueError, match="max_pixels must be >= 3136"):
        GenerationConfig(model=str(tiny_model_dir), min_pixels=3_136, max_pixels=100)


def test_the_transformers_engine_resizes_with_the_given_bounds(tiny_model_dir):
    """The same 56 x 56 image: 4 x 4 patches at the evaluator's bounds, 38 x 38 at the RL lower bound."""
    item = prepare_item({"image": png(56, 56)}, "x", ImagePolicy(min_pixels=784, max_pixels=12_544))
    row = {"id": "r", "prompt": item.messages, "images": [{"bytes": b} for b in item.images]}
    grids = []
    for low, high in ((EVAL_MIN_PIXELS, EVAL_MAX_PIXELS), (MIN_PIXELS, MAX_PIXELS)):
        config = GenerationConfig(model=str(tiny_model_dir), backend="transformers", max_tokens=1,
                                  min_pixels=low, max_pixels=high, progress=False)  # fmt: skip
        engine = TransformersEngine(config)
        request = build_request(row, engine.processor)
        inputs = engine.processor(text=[request.prompt], images=request.images, return_tensors="pt", **config.pixels)
        grids.append(inputs["image_grid_thw"].tolist())
    assert grids == [[[1, 4, 4]], [[1, 38, 38]]]


def test_the_guard_bounds_images_as_evaluation_does():
    item = prepare_item({"image": png(200, 200)}, "x")
    from PIL import Image

    assert Image.open(io.BytesIO(item.images[0])).size == (200, 200)  # not scaled up to the RL lower bound
