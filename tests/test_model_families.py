"""Model families: the table's facts against transformers' own classes, the paper's bounds on each grid, the
refusal of unknown families, and ``gr-vl prep`` / generation / the guard's client taking the family."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from data_helpers import VLTRAIN, png
from PIL import Image

from gr_vl_verl.cli import main as cli_main
from gr_vl_verl.data.images import (
    EVAL_MAX_PIXELS,
    EVAL_MIN_PIXELS,
    MAX_PIXELS,
    MIN_PIXELS,
    SFT_MAX_PIXELS,
    SFT_MIN_PIXELS,
    ImagePolicy,
)
from gr_vl_verl.models.detect import family_of_model, family_or_default
from gr_vl_verl.models.families import (
    DEFAULT_FAMILY,
    FAMILIES,
    PAPER_PIXELS,
    QWEN2_5_VL,
    QWEN3_5,
    QWEN3_VL,
    STAGES,
    UnknownModelFamily,
    convert_bounds,
    get_family,
    image_policy,
)

# --------------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------------


def test_the_table_holds_what_transformers_builds_for_each_model_type():
    from transformers import Qwen2_5_VLConfig, Qwen3_5Config, Qwen3VLConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    for family, config in ((QWEN2_5_VL, Qwen2_5_VLConfig), (QWEN3_VL, Qwen3VLConfig), (QWEN3_5, Qwen3_5Config)):
        vision = config().vision_config
        assert config.model_type == family.name
        assert (vision.patch_size, vision.spatial_merge_size) == (family.patch_size, family.merge_size)
        assert MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES[family.name] == family.architecture
        assert PROCESSOR_MAPPING_NAMES[family.name] == family.processor_class
    assert [f.grid for f in FAMILIES.values()] == [28, 32, 32]
    assert DEFAULT_FAMILY is QWEN2_5_VL  # the paper's base model


def test_vllm_and_verl_have_each_family():
    """vLLM 0.24 registers each architecture; verl 0.9.1 ships each forward module (read as files: importing
    them loads the whole stack)."""
    import importlib.util

    vllm = Path(importlib.util.find_spec("vllm").origin).parent
    verl = Path(importlib.util.find_spec("verl").origin).parent
    registry = (vllm / "model_executor" / "models" / "registry.py").read_text()
    for family in FAMILIES.values():
        entry = rf'"{family.architecture}": \(\s*"{family.name}",\s*"{family.architecture}",?\s*\)'
        assert re.search(entry, registry), family.architecture
        assert (verl / family.verl_forward.removeprefix("verl.").replace(".", "/")).with_suffix(".py").is_file()


def test_the_paper_bounds_stay_the_same_on_qwen2_5_vl():
    assert QWEN2_5_VL.pixels("rl") == (MIN_PIXELS, MAX_PIXELS) == (262144, 4194304)
    assert QWEN2_5_VL.pixels("sft") == (SFT_MIN_PIXELS, SFT_MAX_PIXELS)
    assert QWEN2_5_VL.pixels("eval") == (EVAL_MIN_PIXELS, EVAL_MAX_PIXELS)
    assert image_policy(QWEN2_5_VL) == ImagePolicy.evaluation()
    assert image_policy(QWEN2_5_VL, "rl") == ImagePolicy()


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("family", list(FAMILIES.values()), ids=list(FAMILIES))
def test_each_family_gets_the_paper_number_of_vision_tokens(family, stage):
    """The bounds in grid cells (vision tokens) are the paper's on Qwen2.5-VL's 28-pixel grid, rounded inward
    by less than one pixel: never fewer tokens than its minimum, never more than its maximum."""
    (low, high), (new_low, new_high) = PAPER_PIXELS[stage], family.pixels(stage)
    cell, paper_cell = family.grid**2, 28 * 28
    assert new_low * paper_cell >= low * cell > (new_low - 1) * paper_cell
    assert new_high * paper_cell <= high * cell < (new_high + 1) * paper_cell


def test_qwen3_vl_bounds_are_the_released_settings_in_tokens():
    """Evaluation: qwen_vl_utils' own defaults at patch 16 (4 to 16384 tokens of 32 x 32 pixels); RL and SFT:
    the released pixel bounds with the same tokens."""
    from qwen_vl_utils import vision_process

    assert QWEN3_VL.pixels("eval") == (
        vision_process.IMAGE_MIN_TOKEN_NUM * 32 * 32,
        vision_process.IMAGE_MAX_TOKEN_NUM * 32 * 32,
    )
    assert QWEN3_VL.pixels("rl") == (342393, 5478274)
    assert QWEN3_VL.pixels("sft") == (1338, 770382)
    assert QWEN3_5.pixels("rl") == QWEN3_VL.pixels("rl")
    assert convert_bounds((784, 1568), 28, 28) == (784, 1568)
    with pytest.raises(ValueError, match="stage must be one of rl, sft, eval"):
        QWEN3_VL.pixels("video")


def test_an_unknown_family_is_refused_naming_the_known_ones():
    with pytest.raises(UnknownModelFamily, match=r"unknown model family 'llava'; known: qwen2_5_vl, qwen3_vl, qwen3_5"):
        get_family("llava")
    with pytest.raises(UnknownModelFamily, match="known: qwen2_5_vl"):
        get_family(None)  # type: ignore[arg-type]


def test_the_families_module_is_pure():
    from purity import heavy_modules_loaded

    modules = ["gr_vl_verl.models.families", "gr_vl_verl.models.detect"]
    assert heavy_modules_loaded(modules, ("torch", "verl", "vllm", "transformers", "ray")) == []


# --------------------------------------------------------------------------------------------------
# A checkpoint folder's family
# --------------------------------------------------------------------------------------------------


def _folder(path: Path, config: dict | None, processor: dict | None = None, name: str = "processor_config.json"):
    path.mkdir(parents=True, exist_ok=True)
    if config is not None:
        (path / "config.json").write_text(json.dumps(config))
    if processor is not None:
        (path / name).write_text(json.dumps(processor))
    return path


def test_the_family_is_read_from_the_folder_and_checked_against_its_processor(tmp_path):
    nested = {"image_processor": {"patch_size": 16, "merge_size": 2}}
    assert family_of_model(_folder(tmp_path / "a", {"model_type": "qwen3_vl"}, nested)) is QWEN3_VL
    # checkpoints saved by transformers 4.x: preprocessor_config.json, settings at the top level
    flat = {"patch_size": 14, "merge_size": 2}
    assert family_of_model(_folder(tmp_path / "b", {"model_type": "qwen2_5_vl"}, flat, "preprocessor_config.json"))
    assert family_of_model(_folder(tmp_path / "c", {"model_type": "qwen3_5"})) is QWEN3_5  # no processor saved
    with pytest.raises(ValueError, match="patch 14 x merge 2, but a Qwen3-VL model's vision tower uses patch 16"):
        family_of_model(_folder(tmp_path / "d", {"model_type": "qwen3_vl"}, flat, "preprocessor_config.json"))
    with pytest.raises(UnknownModelFamily, match="config.json: unknown model family 'llava'; known: qwen2_5_vl"):
        family_of_model(_folder(tmp_path / "e", {"model_type": "llava"}))
    with pytest.raises(UnknownModelFamily, match="no config.json"):
        family_of_model(_folder(tmp_path / "f", None))
    with pytest.raises(UnknownModelFamily, match="no model_type"):
        family_of_model(_folder(tmp_path / "g", {"architectures": ["X"]}))
    assert family_or_default(None) is family_or_default(tmp_path / "missing") is DEFAULT_FAMILY
    assert family_or_default("http://127.0.0.1:8000/v1") is DEFAULT_FAMILY


def test_the_tiny_models_are_their_families(tiny_model_dir, tiny_qwen3_vl_dir):
    assert family_of_model(tiny_model_dir) is QWEN2_5_VL
    assert family_of_model(tiny_qwen3_vl_dir) is QWEN3_VL
    config = json.loads((tiny_qwen3_vl_dir / "config.json").read_text())
    assert config["architectures"] == [QWEN3_VL.architecture]


# --------------------------------------------------------------------------------------------------
# gr-vl prep --model-family
# --------------------------------------------------------------------------------------------------


def _prep(out: Path, *flags: str) -> dict:
    argv = ["prep", "vltrain", "--data-root", str(VLTRAIN), "--splits", "image", "--out", str(out),
            "--formats", "sft,rl", "--no-progress", *flags]  # fmt: skip
    assert cli_main(argv) == 0
    return json.loads((out / "vltrain_summary.json").read_text())["options"]


def _areas(path: Path) -> list[int]:
    sizes = [Image.open(io.BytesIO(r["images"][0]["bytes"])).size for r in pq.read_table(path).to_pylist()]
    return [w * h for w, h in sizes]


def test_prep_for_qwen3_vl_bounds_images_on_its_32_pixel_grid(tmp_path):
    options = _prep(tmp_path / "q3", "--model-family", "qwen3_vl")
    bounds = {k: options[k] for k in options if k.endswith("pixels")}
    assert bounds == {
        "min_pixels": 342393,
        "max_pixels": 5478274,
        "sft_min_pixels": 1338,
        "sft_max_pixels": 770382,
        "eval_min_pixels": 4096,
        "eval_max_pixels": 16777216,
    }
    # the sample images are small: RL scales them up to the family's minimum, SFT keeps them
    rl = _areas(tmp_path / "q3" / "rl_train.parquet")
    assert rl and all(342393 <= a <= 342393 * 1.01 for a in rl)
    paper = _prep(tmp_path / "q25")
    assert (paper["min_pixels"], paper["max_pixels"], paper["eval_min_pixels"]) == (262144, 4194304, 3136)
    assert all(262144 <= a < 342393 for a in _areas(tmp_path / "q25" / "rl_train.parquet"))
    # a flag given wins over the family's bound
    mixed = _prep(tmp_path / "mixed", "--model-family", "qwen3_vl", "--min-pixels", "300000")
    assert (mixed["min_pixels"], mixed["max_pixels"]) == (300000, 5478274)


def test_prep_refuses_an_unknown_family_listing_the_known_ones(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli_main(["prep", "vltrain", "--data-root", str(VLTRAIN), "--out", str(tmp_path), "--model-family", "llava"])
    assert exit_.value.code == 2
    assert "invalid choice: 'llava' (choose from 'qwen2_5_vl', 'qwen3_vl', 'qwen3_5')" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


# --------------------------------------------------------------------------------------------------
# Generation, the guard and its client take the family from the model
# --------------------------------------------------------------------------------------------------


def test_generation_gives_the_processor_the_bounds_on_the_models_grid(tmp_path, tiny_model_dir, tiny_qwen3_vl_dir):
    from gr_vl_verl.commands._generation import family_pixels
    from gr_vl_verl.generation import GenerationConfig
    from gr_vl_verl.generation.config import input_pixels

    assert input_pixels("eval") == (3136, 12845056) and input_pixels("rl") == (262144, 4194304)
    assert input_pixels("eval", QWEN3_VL) == (4096, 16777216) and input_pixels("rl", QWEN3_VL) == (342393, 5478274)
    _prep(tmp_path / "p")
    data = tmp_path / "p" / "rl_train.parquet"
    qwen3 = family_pixels(data, GenerationConfig(model=str(tiny_qwen3_vl_dir), backend="transformers"))
    assert (qwen3.min_pixels, qwen3.max_pixels) == (342393, 5478274)
    # Qwen2.5-VL: left to generate(), which fills in the paper's bounds as it always did
    paper = GenerationConfig(model=str(tiny_model_dir), backend="transformers")
    assert family_pixels(data, paper) is paper
    given = GenerationConfig(model=str(tiny_qwen3_vl_dir), backend="transformers", min_pixels=10, max_pixels=20)
    assert family_pixels(data, given) is given


def test_generate_refuses_a_model_of_an_unknown_family(tmp_path, capsys):
    model = _folder(tmp_path / "llava", {"model_type": "llava"})
    _prep(tmp_path / "p")
    rc = cli_main(["generate", "--data", str(tmp_path / "p" / "rl_train.parquet"), "--model", str(model), "--out",
                   str(tmp_path / "o"), "--backend", "transformers"])  # fmt: skip
    assert rc == 2
    assert "unknown model family 'llava'; known: qwen2_5_vl, qwen3_vl, qwen3_5" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_the_served_guard_takes_the_family_it_is_told(tiny_qwen3_vl_dir):
    from gr_vl_verl.guard_items import prepare_item
    from gr_vl_verl.serving.client import RemoteGuard, chat_messages, connect
    from gr_vl_verl.serving.server import server_argv

    paper = RemoteGuard("http://127.0.0.1:1/v1")
    assert (paper.image_patch_size, paper.image_policy) == (14, ImagePolicy.evaluation())
    remote = connect("http://127.0.0.1:1/v1", model_family="qwen3_vl")
    assert (remote.image_patch_size, remote.image_policy) == (16, image_policy(QWEN3_VL))
    with pytest.raises(UnknownModelFamily, match="known: qwen2_5_vl"):
        RemoteGuard("http://127.0.0.1:1/v1", model_family="llava")
    # the image the client sends is cut on the 32-pixel grid
    item = prepare_item({"request": "What is this?", "image": png(100, 70)}, "items[0]", remote.image_policy)
    parts = chat_messages(item, remote.image_patch_size)[-1]["content"]
    url = next(p["image_url"]["url"] for p in parts if p["type"] == "image_url")
    size = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).size
    assert all(side % 32 == 0 for side in size), size
    # the server gives vLLM's processor the evaluation bounds on the model's grid
    argv = server_argv(str(tiny_qwen3_vl_dir))
    assert json.loads(argv[argv.index("--mm-processor-kwargs") + 1]) == {"min_pixels": 4096, "max_pixels": 16777216}


def test_the_guard_on_tiny_qwen3_vl_through_transformers(tiny_qwen3_vl_dir):
    """``load_guard`` reads the family from the folder: evaluation bounds on the 32-pixel grid, for the items'
    checks and the processor; text, image and text-image items all get an answer."""
    from gr_vl_verl.guard import load_guard

    guard = load_guard(tiny_qwen3_vl_dir, backend="transformers", device="cpu", max_tokens=6)
    assert guard.image_policy == image_policy(QWEN3_VL)
    assert guard.config.pixels == {"min_pixels": 4096, "max_pixels": 16777216}
    items = [
        {"request": "How do I bake bread?"},
        {"image": str(VLTRAIN / "image" / "img_000.png")},
        {"request": "Describe this.", "image": str(VLTRAIN / "image" / "img_001.png"), "response": "A cat."},
    ]
    results = guard.classify(items)
    assert len(results) == 3 and all(0 < r["output_tokens"] <= 6 for r in results)


def test_verl_forward_of_qwen3_vl_takes_text_only_batches_without_the_plugin_fix(tiny_qwen3_vl_dir):
    """The plugin's text-only fix targets verl's Qwen2-VL forward only; verl 0.9.1's Qwen3-VL forward already
    unpacks the vision tower's output, and its dummy image still reaches every vision parameter."""
    import torch
    from transformers import AutoModelForImageTextToText
    from verl.models.transformers import qwen3_vl

    from gr_vl_verl.cpu import pins

    assert pins.TEXT_ONLY_FORWARD.module == "verl.models.transformers.qwen2_vl"
    assert not getattr(qwen3_vl._get_input_embeds, "_gr_vl_replaced", False)
    model = AutoModelForImageTextToText.from_pretrained(tiny_qwen3_vl_dir, attn_implementation="sdpa")
    out = qwen3_vl._get_input_embeds(model.model, torch.tensor([[5, 6, 7, 8]]))
    assert out["inputs_embeds"].shape == (1, 4, model.config.text_config.hidden_size)
    out["inputs_embeds"].sum().backward()
    grads = [p.grad for p in model.model.visual.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads)


def test_verl_sft_positions_for_qwen3_vl_images_are_qwen3_vls_own(tiny_qwen3_vl_dir):
    """verl 0.9.1's SFT dataset computes M-RoPE positions with its Qwen2-VL function for every processor built on
    ``Qwen2VLImageProcessor``, Qwen3-VL's included; on an image prompt they equal its Qwen3-VL function's."""
    from transformers import AutoProcessor
    from verl.models.transformers import qwen2_vl, qwen3_vl

    processor = AutoProcessor.from_pretrained(tiny_qwen3_vl_dir)
    image = Image.open(VLTRAIN / "image" / "img_000.png").convert("RGB")
    messages = [{"role": "user", "content": [{"type": "text", "text": "Is this safe?"}, {"type": "image"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text], images=[image], return_tensors="pt")
    ids, mask, grid = inputs["input_ids"][0], inputs["attention_mask"][0], inputs["image_grid_thw"]
    assert grid.shape[0] == 1 and int(grid.prod()) // 4 > 1  # several image tokens: positions are 3-D
    ours = qwen2_vl.get_rope_index(processor, input_ids=ids, image_grid_thw=grid, attention_mask=mask)
    theirs = qwen3_vl.get_rope_index(processor, input_ids=ids, image_grid_thw=grid, attention_mask=mask)
    assert ours.shape == (3, ids.shape[0]) and bool((ours == theirs).all())
    assert bool((ours[1] != ours[2]).any())  # height and width differ inside the image
