"""The R-SFT recipes and ``gr_vl_sft.yaml``, composed against verl 0.9.1's real SFT config tree.

Each recipe runs in its dry mode (overrides on stdout, the launch command on stderr); the overrides are composed
with ``gr_vl_sft.yaml`` by hydra, converted by verl's own dataclasses as ``SFTTrainer`` does, and the prep's SFT
parquet is loaded with the composed data config. The launch command itself is run with ``--cfg job``, so the
``--config-path``/``--config-name`` that point verl's trainer at our config are tested as the script passes them.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
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
    return env


def dry_run(script: Path, env: dict[str, str], *extra: str) -> tuple[list[str], list[str]]:
    """The recipe's overrides and its launch command."""
    run = subprocess.run(
        ["bash", str(script), *extra], env=env, capture_output=True, text=True, check=True, timeout=120
    )
    (command,) = [line.removeprefix("command: ") for line in run.stderr.splitlines() if line.startswith("command: ")]
    return run.stdout.splitlines(), shlex.split(command)


def test_there_are_two_sft_recipes() -> None:
    assert [p.stem for p in RECIPES] == ["sft_qwen2_5_vl_3b", "sft_qwen2_5_vl_7b"]


@pytest.mark.parametrize("script", RECIPES, ids=lambda p: p.stem)
def test_recipe_composes_to_the_papers_r_sft(script: Path, sft_env) -> None:
    from verl.utils.config import omega_conf_to_dataclass

    overrides, _ = dry_run(script, sft_env)
    keys = [o.split("=", 1)[0] for o in overrides]
    assert set(keys) <= RECIPE_KEYS and len(keys) == len(set(keys))
    cfg = compose_sft(overrides)

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


def test_launch_command_runs_verls_sft_trainer_with_our_config(sft_env) -> None:
    """The command the script execs, with torchrun's own arguments removed and ``--cfg job`` added: verl's
    trainer finds gr_vl_sft.yaml through --config-path and accepts every override."""
    overrides, command = dry_run(RECIPES[1], sft_env, "trainer.total_epochs=1")
    assert command[1:3] == ["-m", "torch.distributed.run"] and "--standalone" in command
    assert "--nproc_per_node=8" in command
    module_at = command.index("-m", 3)
    trainer_args = command[module_at:]
    assert trainer_args[:2] == ["-m", "verl.trainer.sft_trainer"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    job = subprocess.run(
        [sys.executable, *trainer_args, *overrides, "--cfg", "job"],
        env=env,
        capture_output=True,
        text=True,
        cwd=tempfile.mkdtemp(prefix="gr_vl_hydra_"),
        timeout=300,
    )
    assert job.returncode == 0, job.stderr[-2000:]
    for line in ("train_batch_size: 192", "max_length: 2048", "lr: 5.0e-05", "total_epochs: 1", "- hf_model"):
        assert line in job.stdout


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
    run = subprocess.run(
        ["bash", str(RECIPES[0])], env=dict(env, **{missing: "/nonexistent/x"}), capture_output=True, timeout=120
    )
    assert run.returncode == 2 and f"{missing}: '/nonexistent/x' does not exist".encode() in run.stderr


def test_validation_files_are_optional_but_must_exist(sft_env) -> None:
    overrides, _ = dry_run(RECIPES[0], dict(sft_env, VAL_FILES=sft_env["TRAIN_FILES"]))
    assert compose_sft(overrides).data.val_files == [sft_env["TRAIN_FILES"]]
    run = subprocess.run(
        ["bash", str(RECIPES[0])], env=dict(sft_env, VAL_FILES="/nope.parquet"), capture_output=True, timeout=120
    )
    assert run.returncode == 2 and b"VAL_FILES: '/nope.parquet' does not exist" in run.stderr
