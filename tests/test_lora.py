"""LoRA without a trainer: ``gr-vl merge-lora`` on a checkpoint laid out as verl saves one (peft's wrapped state
dict in ``huggingface/model.safetensors``, ``lora_train_meta.json`` beside it), and the recipes' LoRA switch
composed against verl's config. The real LoRA GRPO run is tests/test_e2e_training.py's.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from test_sft_config import compose_sft, dry_run
from test_trainer_config import compose_cfg, recipe_overrides

from gr_vl_verl.cli import main
from gr_vl_verl.models.lora_keys import LoraKeyError, split
from gr_vl_verl.trainer import main_ppo

ROOT = Path(__file__).resolve().parents[1]
RANK, ALPHA = 4, 8
W = "base_model.model."


def test_split_sorts_base_adapted_and_adapter_tensors():
    names = [f"{W}model.layers.0.q_proj.base_layer.weight", f"{W}model.layers.0.q_proj.base_layer.bias",
             f"{W}model.layers.0.q_proj.lora_A.default.weight", f"{W}model.layers.0.q_proj.lora_B.default.weight",
             f"{W}model.norm.weight", f"{W}lm_head.weight"]  # fmt: skip
    keys = split(names)
    assert keys.plain == {"model.layers.0.q_proj.weight": names[0], "model.layers.0.q_proj.bias": names[1],
                          "model.norm.weight": names[4], "lm_head.weight": names[5]}  # fmt: skip
    assert keys.adapters == {"model.layers.0.q_proj": (names[2], names[3])}
    assert keys.target_modules == ["q_proj"]


def test_the_key_module_is_pure_and_the_merge_loads_torch_only_when_it_runs():
    from purity import heavy_modules_loaded

    modules = ["gr_vl_verl.models.lora_keys", "gr_vl_verl.models.lora", "gr_vl_verl.commands.merge_lora"]
    assert heavy_modules_loaded(modules, ("torch", "verl", "vllm", "transformers", "ray", "peft")) == []


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (["model.norm.weight"], "not a peft-wrapped"),
        ([f"{W}model.norm.weight"], "not trained with LoRA"),
        ([f"{W}a.q.base_layer.weight", f"{W}a.q.lora_A.default.weight"], "not both lora_A and lora_B"),
        ([f"{W}a.q.lora_A.default.weight", f"{W}a.q.lora_B.default.weight"], "without its base_layer"),
        ([f"{W}a.q.base_layer.weight", f"{W}a.q.lora_magnitude_vector.default.weight"], "DoRA"),
    ],
)
def test_split_refuses_what_is_not_a_plain_lora_checkpoint(names, message):
    with pytest.raises(LoraKeyError, match=message):
        split(names)


@pytest.fixture(scope="module")
def lora_checkpoint(tiny_qwen3_vl_dir, tmp_path_factory) -> tuple[Path, Path]:
    """(a ``global_step`` folder as verl writes it for a LoRA run, the base model): peft wraps the tiny Qwen3-VL
    as verl does (all linear layers but the vision tower's), the adapters get random weights (B is zero at the
    start, which would make any merge look right)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import save_file
    from transformers import AutoModelForImageTextToText

    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_pretrained(str(tiny_qwen3_vl_dir), dtype=torch.float32)
    config = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules="all-linear", exclude_modules=".*visual.*",
                        task_type="CAUSAL_LM")  # fmt: skip
    wrapped = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in wrapped.named_parameters():
            if "lora_" in name:
                param.normal_(0, 0.5)
    step = tmp_path_factory.mktemp("lora") / "global_step_2"
    hf = step / "actor" / "huggingface"
    hf.mkdir(parents=True)
    for item in Path(tiny_qwen3_vl_dir).iterdir():
        if item.is_file() and not item.name.endswith(".safetensors"):
            shutil.copy2(item, hf / item.name)
    save_file(
        {k: v.detach().clone().contiguous() for k, v in wrapped.state_dict().items()}, str(hf / "model.safetensors")
    )
    (step / "actor" / "lora_train_meta.json").write_text(json.dumps({"r": RANK, "lora_alpha": ALPHA,
                                                                     "task_type": "CAUSAL_LM"}))  # fmt: skip
    return step, Path(tiny_qwen3_vl_dir)


def test_merged_model_and_saved_adapter_answer_as_the_wrapped_model(lora_checkpoint, tmp_path, capsys):
    import torch
    from peft import PeftModel
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    step, base = lora_checkpoint
    merged, adapter = tmp_path / "merged", tmp_path / "adapter"
    assert main(["merge-lora", str(step), "--out", str(merged), "--adapter-out", str(adapter)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["rank"], report["alpha"]) == (RANK, ALPHA)
    assert report["adapter_bytes"] < report["model_bytes"] and report["adapted_modules"] > 0

    processor = AutoProcessor.from_pretrained(str(merged))
    plain = AutoModelForImageTextToText.from_pretrained(str(merged), dtype=torch.float32).eval()
    original = AutoModelForImageTextToText.from_pretrained(str(base), dtype=torch.float32).eval()
    peft = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(str(base), dtype=torch.float32),
                                     str(adapter)).eval()  # fmt: skip
    adapted = {n.rsplit(".lora_A", 1)[0] for n, _ in peft.named_parameters() if ".lora_A." in n}
    assert len(adapted) == report["adapted_modules"] and not any(".visual." in n for n in adapted)
    content = [{"type": "image", "image": Image.new("RGB", (64, 64), (0, 90, 200))},
               {"type": "text", "text": "Is this harmful?"}]  # fmt: skip
    inputs = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                           tokenize=True, return_dict=True, return_tensors="pt")  # fmt: skip
    with torch.no_grad():
        a, b, c = (m(**inputs).logits for m in (plain, peft, original))
    assert torch.allclose(a, b, atol=1e-4), (a - b).abs().max()
    assert not torch.allclose(a, c, atol=1e-2)  # the adapters changed the model


def test_merge_refuses_an_existing_folder_a_full_checkpoint_and_a_missing_alpha(lora_checkpoint, tmp_path, capsys):
    step, base = lora_checkpoint
    (tmp_path / "taken").mkdir()
    assert main(["merge-lora", str(step), "--out", str(tmp_path / "taken")]) == 2
    assert "exists: give a new folder" in capsys.readouterr().err
    assert main(["merge-lora", str(base), "--out", str(tmp_path / "m")]) == 2
    assert "not a peft-wrapped (LoRA) model" in capsys.readouterr().err
    bare = tmp_path / "bare"
    shutil.copytree(step / "actor" / "huggingface", bare)
    assert main(["merge-lora", str(bare), "--out", str(tmp_path / "m")]) == 2
    assert "no lora_alpha" in capsys.readouterr().err
    assert main(["merge-lora", str(tmp_path), "--out", str(tmp_path / "m")]) == 2
    assert "no model.safetensors" in capsys.readouterr().err
    assert not (tmp_path / "m").exists() and not list(tmp_path.glob(".m.*"))


GRPO = ROOT / "recipes" / "grpo_qwen3_vl_4b.sh"
SFT = ROOT / "recipes" / "sft_qwen3_vl_4b.sh"


@pytest.fixture(scope="module")
def recipe_env(tmp_path_factory) -> dict[str, str]:
    """What the SFT and GRPO recipes need to print their overrides (GR_VL_DRY_RUN): paths that exist."""
    import os
    import sys

    d = tmp_path_factory.mktemp("lora_recipe")
    for name in ("train.parquet", "val.parquet"):
        (d / name).write_bytes(b"")
    (d / "model").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRAIN_", "VAL_", "MODEL_", "LORA_", "NNODES"))}
    env.update(TRAIN_FILES=str(d / "train.parquet"), VAL_FILES=str(d / "val.parquet"), MODEL_PATH=str(d / "model"),
               GR_VL_DRY_RUN="1", PYTHON=sys.executable)  # fmt: skip
    return env


def test_grpo_recipe_lora_switch_composes_and_leaves_the_vision_tower(recipe_env):
    cfg = compose_cfg(recipe_overrides(GRPO, dict(recipe_env, LORA_RANK="16")))
    main_ppo.prepare(cfg)  # verl's validate_config and the gr_vl block
    model = cfg.actor_rollout_ref.model
    assert (model.lora_rank, model.lora_alpha, model.target_modules) == (16, 32, "all-linear")
    assert model.exclude_modules == ".*visual.*"
    full = compose_cfg(recipe_overrides(GRPO, recipe_env)).actor_rollout_ref.model
    assert full.lora_rank == 0  # unset: every weight trains (the paper)
    cfg = compose_cfg(recipe_overrides(GRPO, dict(recipe_env, LORA_RANK="8", LORA_ALPHA="8",
                                                  LORA_TARGETS="q_proj,v_proj", LORA_EXCLUDE="none")))  # fmt: skip
    model = cfg.actor_rollout_ref.model
    assert (model.lora_alpha, list(model.target_modules), model.exclude_modules) == (8, ["q_proj", "v_proj"], None)


def test_sft_recipe_lora_switch_reaches_verls_model_config(recipe_env):
    """The keys are verl's own (hf_model.yaml): a misspelt one would fail composition, which adds none."""
    overrides, _ = dry_run(SFT, dict(recipe_env, LORA_RANK="16"))
    model = compose_sft(overrides).model
    assert (model.lora_rank, model.lora_alpha, model.target_modules) == (16, 32, "all-linear")
    assert model.exclude_modules == ".*visual.*"
    assert compose_sft(dry_run(SFT, recipe_env)[0]).model.lora_rank == 0


@pytest.mark.parametrize("variable", ["LORA_RANK=-1", "LORA_RANK=x", "LORA_ALPHA=0", "LORA_TARGETS=q proj"])
def test_bad_lora_values_are_refused_naming_the_variable(variable, recipe_env):
    name, value = variable.split("=")
    env = {**recipe_env, "LORA_RANK": "8", name: value}
    run = subprocess.run(["bash", str(GRPO)], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and f"error: {name}" in run.stderr and run.stdout == ""
