"""The R-SFT recipes and ``gr_vl_sft.yaml``, composed against verl 0.9.1's real SFT config tree.

Each recipe runs in its dry mode (overrides on stdout, the launch command on stderr); the overrides are composed
with ``gr_vl_sft.yaml`` by hydra, converted by verl's own dataclasses as ``SFTTrainer`` does, and the prep's SFT
parquet is loaded with the composed data config. The launch command itself is run with ``--cfg job``, so the
``--config-path``/``--config-name`` that point verl's trainer at our config are tested as the script passes them.
"""

from __future__ import annotations

import io
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from data_helpers import SMALL, VLTRAIN
from hydra import compose, initialize_config_module

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("sft_*.sh"))
# What an SFT recipe may set: paths, hardware, run bookkeeping. The method is in gr_vl_sft.yaml.
RECIPE_KEYS = {
    "data.train_files",
    "data.val_files",
    "model.path",
    "data.max_token_len_per_gpu",
    "engine.param_offload",
    "engine.optimizer_offload",
    "trainer.nnodes",
    "trainer.n_gpus_per_node",
    "trainer.logger",
    "trainer.project_name",
    "trainer.experiment_name",
    "trainer.default_local_dir",
}
#: What a recipe adds for a family other than the paper's: the SFT image bounds on its grid, for the processor.
FAMILY_KEYS = {"++data.apply_chat_template_kwargs.min_pixels", "++data.apply_chat_template_kwargs.max_pixels"}
#: Qwen3-VL's SFT bounds: the paper's numbers of vision tokens on its 32-pixel grid (docs/models.md), written out
#: here to check the table the recipes read them from.
QWEN3_VL_SFT_PIXELS = {"min_pixels": 1338, "max_pixels": 770382}


def is_qwen3_vl(script: Path) -> bool:
    return script.stem.startswith("sft_qwen3_vl_")


def compose_sft(overrides: list[str]):
    with initialize_config_module("gr_vl_verl.trainer.config", version_base=None):
        return compose("gr_vl_sft", overrides=overrides)


@pytest.fixture(scope="module")
def sft_env(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("sft_recipe")
    (d / "sft_train.parquet").write_bytes(b"")
    (d / "model").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRAIN_", "VAL_", "MODEL_", "NNODES", "MASTER"))}
    env.update(TRAIN_FILES=str(d / "sft_train.parquet"), MODEL_PATH=str(d / "model"), GR_VL_DRY_RUN="1")
    env["PYTHON"] = sys.executable  # a family's image bounds are read through the interpreter the recipe runs
    return env


def dry_run(script: Path, env: dict[str, str], *extra: str) -> tuple[list[str], list[str]]:
    """The recipe's overrides and its launch command."""
    argv = ["bash", str(script), *extra]
    run = subprocess.run(argv, env=env, capture_output=True, text=True, check=True, timeout=120)
    (command,) = [line.removeprefix("command: ") for line in run.stderr.splitlines() if line.startswith("command: ")]
    return run.stdout.splitlines(), shlex.split(command)


def test_there_are_four_sft_recipes() -> None:
    assert [p.stem for p in RECIPES] == ["sft_qwen2_5_vl_3b", "sft_qwen2_5_vl_7b", "sft_qwen3_vl_4b", "sft_qwen3_vl_8b"]


@pytest.mark.parametrize("script", RECIPES, ids=lambda p: p.stem)
def test_recipe_composes_to_the_papers_r_sft(script: Path, sft_env) -> None:
    from verl.utils.config import omega_conf_to_dataclass

    overrides, _ = dry_run(script, sft_env)
    keys = [o.split("=", 1)[0] for o in overrides]
    assert set(keys) <= RECIPE_KEYS | (FAMILY_KEYS if is_qwen3_vl(script) else set()) and len(keys) == len(set(keys))
    cfg = compose_sft(overrides)
    # Qwen3-VL: the SFT bounds on its grid go to the processor; Qwen2.5-VL: nothing (the prep scaled the images)
    bounds = QWEN3_VL_SFT_PIXELS if is_qwen3_vl(script) else {}
    assert cfg.data.apply_chat_template_kwargs == bounds

    data, optim = cfg.data, cfg.optim
    assert (data.train_batch_size, data.max_length, data.truncation) == (192, 2048, "right")
    assert (data.messages_key, data.image_key) == ("messages", "images")
    assert (optim.optimizer, optim.lr, optim.lr_scheduler_type, optim.min_lr_ratio) == ("AdamW", 5e-5, "cosine", 0)
    assert (optim.lr_warmup_steps_ratio, optim.clip_grad, optim.weight_decay) == (0, 1.0, 0.0)
    assert (cfg.engine.dtype, cfg.model.lora_rank, cfg.trainer.total_epochs) == ("bfloat16", 0, 3)
    assert "hf_model" in cfg.checkpoint.save_contents
    assert list(data.train_files) == [sft_env["TRAIN_FILES"]] and data.val_files is None
    assert cfg.model.path == sft_env["MODEL_PATH"]
    # verl's own conversions, as SFTTrainer._build_config makes them (the model needs a real folder: below)
    engine = omega_conf_to_dataclass(cfg.engine)
    assert (engine.strategy, engine.param_offload) == ("fsdp2", False)
    assert omega_conf_to_dataclass(cfg.optim).lr_scheduler_type == "cosine"
    assert omega_conf_to_dataclass(cfg.checkpoint).save_contents[-1] == "hf_model"


def test_composed_config_loads_the_prep_sft_parquet(tmp_path, tiny_model_dir, sft_env) -> None:
    """The recipe's model and data config with the tiny Qwen2.5-VL: verl builds the model config (tokenizer and
    processor) and reads `gr-vl prep`'s SFT parquet with MultiTurnSFTDataset, images included."""
    from verl.utils.config import omega_conf_to_dataclass
    from verl.utils.dataset.multiturn_sft_dataset import MultiTurnSFTDataset

    from gr_vl_verl.data import readers
    from gr_vl_verl.data.pipeline import PrepConfig, run_prep

    config = PrepConfig(formats=("sft",), images=SMALL, progress=False)
    summary = run_prep(readers.read_vltrain_dir(VLTRAIN), tmp_path, config)
    parquet = tmp_path / "sft_train.parquet"
    env = dict(sft_env, TRAIN_FILES=str(parquet), MODEL_PATH=str(tiny_model_dir))
    overrides, _ = dry_run(RECIPES[0], env)
    cfg = compose_sft(overrides)

    model = omega_conf_to_dataclass(cfg.model)
    assert model.processor is not None
    ds = MultiTurnSFTDataset(list(cfg.data.train_files), model.tokenizer, cfg.data, model.processor)
    assert len(ds) == summary.outputs["sft_train.parquet"].written == 34
    items = [ds[i] for i in range(len(ds))]
    assert all(len(item["input_ids"]) <= cfg.data.max_length for item in items)
    assert all(item["loss_mask"].sum() > 0 for item in items)  # every row trains on its assistant turn
    assert sum("multi_modal_inputs" in item for item in items) == 22  # image and text-image rows


@pytest.mark.parametrize("script", [RECIPES[1], RECIPES[3]], ids=lambda p: p.stem)
def test_launch_command_runs_verls_sft_trainer_with_our_config(script: Path, sft_env, tmp_path) -> None:
    """The command the script execs, with torchrun's own arguments removed and ``--cfg job`` added: verl's
    trainer finds gr_vl_sft.yaml through --config-path and accepts every override."""
    overrides, command = dry_run(script, sft_env, "trainer.total_epochs=1")
    assert command[1:3] == ["-m", "torch.distributed.run"] and "--standalone" in command
    assert "--nproc_per_node=8" in command
    module_at = command.index("-m", 3)
    trainer_args = command[module_at:]
    assert trainer_args[:2] == ["-m", "verl.trainer.sft_trainer"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    argv = [sys.executable, *trainer_args, *overrides, "--cfg", "job"]
    # cwd: hydra's run folder lands there, not in the checkout
    job = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert job.returncode == 0, job.stderr[-2000:]
    for line in ("train_batch_size: 192", "max_length: 2048", "lr: 5.0e-05", "total_epochs: 1", "- hf_model"):
        assert line in job.stdout
    bounds = [f"{key}: {value}" for key, value in QWEN3_VL_SFT_PIXELS.items()]
    assert all((line in job.stdout) is is_qwen3_vl(script) for line in bounds)


def test_qwen3_vl_recipe_bounds_reach_verls_sft_processor(tmp_path, tiny_qwen3_vl_dir, sft_env) -> None:
    """The Qwen3-VL recipe's data config with the tiny Qwen3-VL: verl's MultiTurnSFTDataset hands the SFT bounds
    to the image processor, whose own bounds (at most 16 vision tokens for the tiny model; at least 65,536 pixels
    for a real checkpoint) would otherwise decide the image sizes. The sample's images are small, so one image
    row gets a 256 x 256 image (64 vision tokens within the SFT bounds)."""
    from PIL import Image
    from verl.utils.config import omega_conf_to_dataclass
    from verl.utils.dataset.multiturn_sft_dataset import MultiTurnSFTDataset

    from gr_vl_verl.data import readers
    from gr_vl_verl.data.pipeline import PrepConfig, run_prep
    from gr_vl_verl.models.families import QWEN3_VL

    pd = pytest.importorskip("pandas")

    config = PrepConfig(formats=("sft",), images=SMALL, sft_pixels=QWEN3_VL.pixels("sft"), progress=False)
    run_prep(readers.read_vltrain_dir(VLTRAIN), tmp_path, config)
    rows = pd.read_parquet(tmp_path / "sft_train.parquet")
    first = next(i for i, images in enumerate(rows["images"]) if images is not None and len(images) == 1)
    big = io.BytesIO()
    Image.new("RGB", (256, 256), "gray").save(big, format="PNG")
    rows.at[first, "images"] = [{"bytes": big.getvalue()}]
    rows.to_parquet(tmp_path / "big.parquet")
    env = dict(sft_env, TRAIN_FILES=str(tmp_path / "big.parquet"), MODEL_PATH=str(tiny_qwen3_vl_dir))
    overrides, _ = dry_run(ROOT / "recipes" / "sft_qwen3_vl_4b.sh", env)
    cfg = compose_sft(overrides)
    model = omega_conf_to_dataclass(cfg.model)
    ds = MultiTurnSFTDataset(list(cfg.data.train_files), model.tokenizer, cfg.data, model.processor)
    grids = [item["multi_modal_inputs"]["image_grid_thw"] for item in (ds[i] for i in range(len(ds)))
             if "multi_modal_inputs" in item]  # fmt: skip
    tokens = [int(row.prod()) // 4 for grid in grids for row in grid]  # 2 x 2 patches per vision token
    assert len(grids) == 22 and max(tokens) == 64  # beyond the tiny processor's own maximum, 16
    assert min(tokens) * 32 * 32 >= QWEN3_VL_SFT_PIXELS["min_pixels"]


def test_multi_node_launch_needs_a_master(sft_env) -> None:
    env = dict(sft_env, NNODES="2")
    run = subprocess.run(["bash", str(RECIPES[0])], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "NNODES=2 needs MASTER_ADDR" in run.stderr and run.stdout == ""
    env.update(MASTER_ADDR="10.0.0.1", NODE_RANK="1", GPUS_PER_NODE="4")
    overrides, command = dry_run(RECIPES[0], env)
    assert {"--nnodes=2", "--nproc_per_node=4", "--node_rank=1", "--master_addr=10.0.0.1"} <= set(command)
    assert "--standalone" not in command
    assert {"trainer.nnodes=2", "trainer.n_gpus_per_node=4"} <= set(overrides)


@pytest.mark.parametrize("missing", ["TRAIN_FILES", "MODEL_PATH"])
def test_recipe_refuses_to_start_without_required_paths(missing: str, sft_env) -> None:
    env = {k: v for k, v in sft_env.items() if k != missing}
    run = subprocess.run(["bash", str(RECIPES[0])], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and f"error: {missing} is not set" in run.stderr and run.stdout == ""
    bad = dict(env, **{missing: "/nonexistent/x"})
    run = subprocess.run(["bash", str(RECIPES[0])], env=bad, capture_output=True, timeout=120)
    assert run.returncode == 2 and f"{missing}: '/nonexistent/x' does not exist".encode() in run.stderr


def test_validation_files_are_optional_but_must_exist(sft_env) -> None:
    overrides, _ = dry_run(RECIPES[0], dict(sft_env, VAL_FILES=sft_env["TRAIN_FILES"]))
    assert compose_sft(overrides).data.val_files == [sft_env["TRAIN_FILES"]]
    bad = dict(sft_env, VAL_FILES="/nope.parquet")
    run = subprocess.run(["bash", str(RECIPES[0])], env=bad, capture_output=True, timeout=120)
    assert run.returncode == 2 and b"VAL_FILES: '/nope.parquet' does not exist" in run.stderr


# -- on a CPU: the settings in the yaml, the platform from the run's own config file ------------------------------
FP32 = {"param_dtype": "fp32", "reduce_dtype": "fp32", "buffer_dtype": "fp32"}


@pytest.mark.parametrize(
    ("device", "remove_padding", "attn", "precision"),
    [("cpu", False, "sdpa", FP32), ("cuda", True, "flash_attention_2", None), ("npu", True, "flash_attention_2", None)],
)
def test_device_settings_and_dataset_class_are_configuration(device, remove_padding, attn, precision) -> None:
    """The SFT settings a CPU needs are in gr_vl_sft.yaml (no code writes them), by trainer.device; the mixed-batch
    dataset is verl's ``data.custom_cls``."""
    from verl.utils.config import omega_conf_to_dataclass
    from verl.utils.import_utils import load_extern_object

    from gr_vl_verl.trainer.sft_dataset import GuardSFTDataset

    cfg = compose_sft([f"trainer.device={device}", "model.path=/nonexistent"])
    assert cfg.model.use_remove_padding is remove_padding
    assert cfg.model.override_config.attn_implementation == attn
    assert load_extern_object(cfg.data.custom_cls.path, cfg.data.custom_cls.name) is GuardSFTDataset
    engine = omega_conf_to_dataclass(cfg.engine)
    assert engine.strategy == "fsdp2"
    # fp32 compute on a CPU (no bf16 arithmetic there, docs/cpu.md); elsewhere verl's bf16 default (None)
    assert (dict(engine.mixed_precision) if engine.mixed_precision is not None else None) == precision


_PROBE_DATASET = '''
import json, os, sys


class Probe:
    """In place of the dataset: report what this SFT process runs on, then end it (nothing is trained)."""

    def __init__(self, parquet_files, tokenizer, config, processor=None, max_samples=-1):
        import torch
        import verl.workers.engine.fsdp.transformer_impl as impl
        from verl.plugin.platform import get_platform

        out = {"platform": type(get_platform()).__name__, "engine_device": impl.device_name,
               "backend": torch.distributed.get_backend(), "env": os.environ.get("VERL_PLATFORM")}
        print("PROBE " + json.dumps(out), flush=True)
        os._exit(0)
'''


def test_sft_launch_takes_the_cpu_platform_from_a_config_file(tmp_path, tiny_model_dir) -> None:
    """``trainer.device: cpu`` in the run's yaml, not on the command line: verl's SFT trainer, launched as the
    project launches it (torchrun), runs on the CPU platform, its engine module and process group included.
    A probe dataset ends the run once the process group is up and the model config is built."""
    from test_cpu_platform import config_file

    from gr_vl_verl.trainer.launch import sft_command

    config_file(tmp_path / "my_sft.yaml", "gr_vl_sft", "trainer.device", "cpu")
    (tmp_path / "probe.py").write_text(_PROBE_DATASET)
    # hydra's own flags after every override: its argument parser takes the overrides in one run
    argv = sft_command(tiny_model_dir, tmp_path / "unused.parquet", tmp_path / "out", 1, device=None, extra=[
        f"data.custom_cls.path={tmp_path / 'probe.py'}", "data.custom_cls.name=Probe",
        f"--config-path={tmp_path}", "--config-name=my_sft"])  # fmt: skip
    assert not any(a.startswith("trainer.device=") for a in argv)
    env = {k: v for k, v in os.environ.items() if k != "VERL_PLATFORM"}
    run = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    probes = [line for line in run.stdout.splitlines() if line.startswith("PROBE ")]
    assert run.returncode == 0 and probes, run.stdout[-2000:] + run.stderr[-4000:]
    out = json.loads(probes[-1][len("PROBE ") :])
    assert out == {"platform": "CPUPlatform", "engine_device": "cpu", "backend": "gloo", "env": "cpu"}
    assert "trainer.device=cpu comes from the run's config" in run.stderr


def test_sft_refuses_a_leftover_verl_platform_beside_cuda(tmp_path) -> None:
    """``VERL_PLATFORM=cpu`` left in the environment, trainer.device=cuda: verl's SFT entry point stops with one
    line at ``auto_set_device``, before any process group or model (no torchrun needed to see it)."""
    env = dict(os.environ, VERL_PLATFORM="cpu")
    argv = [sys.executable, "-m", "verl.trainer.sft_trainer", "--config-path=pkg://gr_vl_verl.trainer.config",
            "--config-name=gr_vl_sft", "trainer.device=cuda", "model.path=/nonexistent",
            f"hydra.run.dir={tmp_path}"]  # fmt: skip
    run = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 1
    assert run.stderr.strip().splitlines()[-1] == (
        "gr_vl_verl: VERL_PLATFORM=cpu is set in the environment but the run says trainer.device=cuda; "
        "unset VERL_PLATFORM to run on cuda, or set trainer.device=cpu to run on the CPU"
    ), run.stderr[-3000:]
