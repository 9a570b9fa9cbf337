"""The plugin trainer config and the GRPO recipes, composed against verl 0.9.1's real config tree.

``gr_vl_trainer.yaml`` alone (plus data and model paths) must be the paper's GRPO; each recipe runs in its dry
mode (prints its overrides), which are then composed with it by hydra and checked by :func:`main_ppo.prepare`
(verl's ``validate_config`` and the ``gr_vl`` block), so a misspelt or removed key fails here rather than on a
GPU cluster.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.errors import ConfigCompositionException

from gr_vl_verl.trainer import main_ppo
from gr_vl_verl.trainer.dynamic_clip import DynamicClipMixin, GRRayPPOTrainer, clip_warning, updates_per_step

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("grpo_*.sh"))
BETA = {"grpo_qwen2_5_vl_3b": 1.0, "grpo_qwen2_5_vl_7b": 1.0, "grpo_qwen2_5_vl_3b_eco": 500 / 3072}
BETA["grpo_qwen2_5_vl_7b_eco"] = 500 / 3072  # Eco: the gain stops at 500 characters (docs/reward.md)
BETA |= {"grpo_qwen3_vl_4b": 1.0, "grpo_qwen3_vl_8b": 1.0, "grpo_qwen3_vl_4b_eco": 500 / 3072}
BETA["grpo_qwen3_vl_8b_eco"] = 500 / 3072
#: The RL image bounds each family's recipes run with: the paper's on Qwen2.5-VL (the yaml's), the same numbers of
#: vision tokens on Qwen3-VL's 32-pixel grid (docs/models.md), written out here to check the table they come from.
RL_PIXELS = {"qwen2_5_vl": (262144, 4194304), "qwen3_vl": (342393, 5478274)}
#: What a recipe adds for a family other than the paper's: the image bounds on its grid.
FAMILY_KEYS = ["data.mm_processor_kwargs.max_pixels", "data.mm_processor_kwargs.min_pixels"]


def family(script: Path) -> str:
    return "qwen3_vl" if script.stem.startswith("grpo_qwen3_vl_") else "qwen2_5_vl"


def compose_cfg(overrides: list[str]):
    with initialize_config_module("gr_vl_verl.trainer.config", version_base=None):
        return compose(main_ppo.CONFIG_NAME, overrides=overrides)


@pytest.fixture(scope="module")
def recipe_env(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("recipe")
    (d / "train.parquet").write_bytes(b"")
    (d / "val.parquet").write_bytes(b"")
    (d / "model").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRAIN_", "VAL_", "MODEL_"))}
    env.update(
        TRAIN_FILES=str(d / "train.parquet"),
        VAL_FILES=str(d / "val.parquet"),
        MODEL_PATH=str(d / "model"),
        GR_VL_DRY_RUN="1",
        PYTHON=sys.executable,  # a family's image bounds are read through the interpreter the recipe runs
    )
    return env


def recipe_overrides(script: Path, env: dict[str, str], *extra: str) -> list[str]:
    argv = ["bash", str(script), *extra]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, check=True, timeout=120)
    return out.stdout.splitlines()


# What a GRPO recipe may set: paths, hardware, run bookkeeping (and the Eco scripts their preset). The method
# is in gr_vl_trainer.yaml.
RECIPE_KEYS = {
    "data.train_files",
    "data.val_files",
    "actor_rollout_ref.model.path",
    "actor_rollout_ref.actor.ppo_max_token_len_per_gpu",
    "actor_rollout_ref.actor.fsdp_config.param_offload",
    "actor_rollout_ref.actor.fsdp_config.optimizer_offload",
    "actor_rollout_ref.rollout.tensor_model_parallel_size",
    "actor_rollout_ref.rollout.gpu_memory_utilization",
    "trainer.nnodes",
    "trainer.n_gpus_per_node",
    "trainer.use_v1",
    "trainer.logger",
    "trainer.project_name",
    "trainer.experiment_name",
    "trainer.default_local_dir",
    "trainer.val_before_train",
    "trainer.save_freq",
    "trainer.test_freq",
    "actor_rollout_ref.actor.checkpoint.save_contents",
}


def paths_only(tmp: Path, *extra: str):
    """The plugin config with nothing but data and model paths (and ``extra``)."""
    return compose_cfg(
        [
            f"data.train_files=['{tmp / 'train.parquet'}']",
            f"data.val_files=['{tmp / 'val.parquet'}']",
            f"actor_rollout_ref.model.path={tmp / 'model'}",
            *extra,
        ]
    )


def test_plugin_config_with_only_paths_is_the_papers_grpo(tmp_path) -> None:
    cfg = paths_only(tmp_path)
    settings = main_ppo.prepare(cfg)  # verl's validate_config passes with nothing else given
    algo, data = cfg.algorithm, cfg.data
    actor, rollout = cfg.actor_rollout_ref.actor, cfg.actor_rollout_ref.rollout
    assert (algo.adv_estimator, algo.norm_adv_by_std_in_grpo, algo.use_kl_in_reward) == ("grpo", True, False)
    assert (data.train_batch_size, actor.ppo_mini_batch_size, actor.ppo_epochs) == (512, 256, 1)
    assert (rollout.n, rollout.temperature, rollout.top_p, rollout.name) == (16, 1.2, 1.0, "vllm")
    val = rollout.val_kwargs
    assert (val.do_sample, val.temperature, val.n) == (True, 1.0, 1)
    assert (actor.optim.lr, actor.optim.weight_decay, actor.optim.clip_grad) == (1e-6, 1e-2, 1.0)
    assert (actor.optim.lr_warmup_steps_ratio, actor.optim.lr_scheduler_type) == (0, "constant")
    # prompt and response lengths reach the rollout through verl's interpolations
    assert (data.max_prompt_length, data.max_response_length) == (3072, 3072)
    assert (rollout.prompt_length, rollout.response_length) == (3072, 3072)
    assert rollout.max_model_len == 3072 + 3072
    assert cfg.trainer.total_epochs == 1
    assert (actor.use_kl_loss, actor.kl_loss_coef, actor.entropy_coeff, actor.loss_agg_mode) == (
        False,
        0.0,
        0,
        "token-mean",
    )
    assert (actor.clip_ratio_low, actor.clip_ratio_high) == (0.2, 0.2)
    assert settings.clip.kind == "linear" and settings.clip.eps(1, 23) == pytest.approx((0.2 * 22 / 23,) * 2)
    # the dual clip can never bind: verl clamps the log-ratio to +-20
    assert actor.clip_ratio_c > math.exp(20)
    assert cfg.gr_vl.reward.preset == "gr-vl" and settings.reward.beta == 1.0
    assert settings.reward.max_length == 3072
    assert (data.filter_overlong_prompts, data.truncation) == (True, "error")
    assert dict(data.mm_processor_kwargs) == {"min_pixels": 262144, "max_pixels": 4194304}
    assert rollout.multi_stage_wake_up is False  # verl 0.9.1 reads it nowhere; the recipes no longer set it
    assert updates_per_step(cfg) == 2 and clip_warning(cfg) is None


def test_eco_is_one_override(tmp_path) -> None:
    eco = main_ppo.prepare(paths_only(tmp_path, "gr_vl.reward.preset=gr-vl-eco"))
    # Eco stops the length gain at 500 characters, as the released code did (docs/reward.md); the format gate
    # stays the paper's
    assert (eco.reward.beta, eco.reward.length_unit, eco.reward.max_length) == (500 / 3072, "chars", 3072)
    plain = main_ppo.prepare(paths_only(tmp_path)).reward
    assert eco.reward == dataclasses.replace(plain, beta=500 / 3072, length_unit="chars", max_length=3072)


def test_dual_clip_of_the_composed_config_never_binds(tmp_path) -> None:
    """verl's vanilla loss with the composed actor config, at the largest ratio verl allows (log-ratio clamped
    to 20) and a negative advantage: nothing is dual-clipped, unlike with verl's default 3.0."""
    import torch
    from verl.trainer.ppo.core_algos import compute_policy_loss_vanilla

    from gr_vl_verl.trainer.dynamic_clip import base_actor_config

    actor = dataclasses.replace(base_actor_config(paths_only(tmp_path)), global_batch_info={})
    old = torch.zeros(2, 3)
    new = torch.tensor([[25.0, 20.0, 3.0], [0.5, -1.0, 0.0]])  # 25 is clamped to 20 by verl
    adv = torch.tensor([[-2.0, -2.0, -2.0], [-1.0, 1.0, 1.0]])
    mask = torch.ones(2, 3, dtype=torch.bool)
    ratio = torch.exp(new.clamp(max=20.0))
    unclipped = torch.maximum(-adv * ratio, -adv * ratio.clamp(0.8, 1.2)).mean()  # eq. 6, token-mean

    loss, metrics = compute_policy_loss_vanilla(old, new, adv, mask, "token-mean", actor)
    assert metrics["actor/pg_clipfrac_lower"] == 0.0
    assert loss.item() == pytest.approx(unclipped.item(), rel=1e-6)
    default, default_metrics = compute_policy_loss_vanilla(
        old, new, adv, mask, "token-mean", dataclasses.replace(actor, clip_ratio_c=3.0)
    )
    assert default_metrics["actor/pg_clipfrac_lower"] > 0 and default.item() < loss.item()


def test_context_length_must_hold_prompt_and_response(tmp_path) -> None:
    with pytest.raises(main_ppo.SettingsError, match=r"max_model_len=6144 is below .*\(3072 \+ 4096 = 7168\)"):
        main_ppo.prepare(paths_only(tmp_path, "data.max_response_length=4096"))
    cfg = paths_only(tmp_path, "data.max_response_length=4096", "actor_rollout_ref.rollout.max_model_len=7168")
    assert main_ppo.prepare(cfg).reward.max_length == 4096
    main_ppo.prepare(paths_only(tmp_path, "actor_rollout_ref.rollout.max_model_len=null"))  # the model's own limit


def test_image_bounds_reach_the_processor_only_as_a_pair(tmp_path, tiny_model_dir) -> None:
    """The composed ``data.mm_processor_kwargs`` through verl's own processor call: a 1x1 image (the RL data's
    text placeholder) is scaled up to the paper's 262144 pixels; transformers ignores ``min_pixels`` alone."""
    from PIL import Image
    from verl.utils import hf_processor
    from verl.utils.tokenizer import build_multimodal_processor_inputs

    processor = hf_processor(str(tiny_model_dir))
    kwargs = dict(paths_only(tmp_path).data.mm_processor_kwargs)
    image = Image.new("RGB", (1, 1), (255, 255, 255))

    def pixels(mm_kwargs: dict) -> int:
        text = ["<|vision_start|><|image_pad|><|vision_end|>"]
        out = build_multimodal_processor_inputs(processor, text=text, images=[image], mm_processor_kwargs=mm_kwargs)
        _, h, w = out["image_grid_thw"][0].tolist()
        return h * w * 14 * 14

    assert pixels(kwargs) >= 262144
    assert pixels({"min_pixels": kwargs["min_pixels"]}) < 262144  # one bound alone does nothing


def test_there_are_eight_grpo_recipes() -> None:
    assert [p.stem for p in RECIPES] == sorted(BETA)


@pytest.mark.parametrize("script", RECIPES, ids=lambda p: p.stem)
def test_recipe_composes_and_passes_verl_checks(script: Path, recipe_env) -> None:
    cfg = compose_cfg(recipe_overrides(script, recipe_env))
    settings = main_ppo.prepare(cfg)  # verl's validate_config + the gr_vl block, as before Ray starts

    actor, rollout = cfg.actor_rollout_ref.actor, cfg.actor_rollout_ref.rollout
    assert cfg.algorithm.adv_estimator == "grpo"
    assert not actor.use_kl_loss and not cfg.algorithm.use_kl_in_reward
    assert (rollout.n, rollout.temperature, rollout.name) == (16, 1.2, "vllm")
    assert (cfg.data.train_batch_size, cfg.data.max_prompt_length, cfg.data.max_response_length) == (
        512,
        3072,
        3072,
    )
    assert (actor.optim.lr, actor.optim.weight_decay, cfg.trainer.total_epochs) == (1e-6, 1e-2, 1)
    assert (actor.clip_ratio_low, actor.clip_ratio_high) == (0.2, 0.2)
    assert cfg.reward.reward_manager.name == "GuardRewardManager"
    assert settings.clip.kind == "linear" and settings.clip.eps(1, 23)[0] == pytest.approx(0.2 * 22 / 23)
    assert settings.reward.beta == pytest.approx(BETA[script.stem])
    assert settings.reward.max_length == 3072  # tokens: the rollout's response length; Eco: 3072 characters
    assert settings.reward.length_unit == ("chars" if script.stem.endswith("_eco") else "tokens")
    assert updates_per_step(cfg) >= 2 and clip_warning(cfg) is None  # the clip has something to clip
    assert Path(cfg.data.train_files[0]) == Path(recipe_env["TRAIN_FILES"])
    assert actor.clip_ratio_c > math.exp(20) and rollout.max_model_len == 6144
    # checkpoints: verl's sharded state for resuming, plus the Hugging Face folder evaluation loads
    assert list(actor.checkpoint.save_contents) == ["model", "optimizer", "extra", "hf_model"]
    low, high = RL_PIXELS[family(script)]
    assert dict(cfg.data.mm_processor_kwargs) == {"min_pixels": low, "max_pixels": high}


@pytest.mark.parametrize("script", RECIPES, ids=lambda p: p.stem)
def test_recipe_sets_only_paths_hardware_and_bookkeeping(script: Path, recipe_env) -> None:
    keys = [line.split("=", 1)[0] for line in recipe_overrides(script, recipe_env)]
    eco = ["gr_vl.reward.preset"] if script.stem.endswith("_eco") else []
    own = FAMILY_KEYS if family(script) != "qwen2_5_vl" else []
    assert sorted(set(keys) - RECIPE_KEYS) == sorted(eco + own)
    assert len(keys) == len(set(keys))


def test_recipe_warns_about_method_variables_it_no_longer_reads(recipe_env) -> None:
    env = dict(recipe_env, LR="2e-6")
    run = subprocess.run(["bash", str(RECIPES[0])], env=env, capture_output=True, text=True, check=True, timeout=120)
    assert "LR is no longer read" in run.stderr and "actor_rollout_ref.actor.optim.lr=" in run.stderr
    assert not any(line.startswith("actor_rollout_ref.actor.optim.lr") for line in run.stdout.splitlines())


def test_a_misspelt_key_in_a_recipe_fails_composition(recipe_env) -> None:
    overrides = recipe_overrides(RECIPES[0], recipe_env, "actor_rollout_ref.actor.clip_ratio_hgh=0.3")
    with pytest.raises(ConfigCompositionException, match="clip_ratio_hgh"):
        compose_cfg(overrides)


def test_extra_arguments_override_the_recipe_defaults(recipe_env) -> None:
    overrides = recipe_overrides(RECIPES[0], recipe_env, "gr_vl.clip.kind=product", "trainer.use_v1=False")
    cfg = compose_cfg(overrides)
    assert cfg.gr_vl.clip.kind == "product" and cfg.trainer.use_v1 is False


@pytest.mark.parametrize("missing", ["TRAIN_FILES", "VAL_FILES", "MODEL_PATH"])
def test_recipe_refuses_to_start_without_required_paths(missing: str, recipe_env) -> None:
    env = {k: v for k, v in recipe_env.items() if k != missing}
    run = subprocess.run(["bash", str(RECIPES[0])], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert f"error: {missing} is not set" in run.stderr and run.stdout == ""

    env[missing] = "/nonexistent/gr_vl/path"
    run = subprocess.run(["bash", str(RECIPES[0])], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert f"{missing}: '/nonexistent/gr_vl/path' does not exist" in run.stderr


def test_recipe_accepts_comma_separated_files(recipe_env) -> None:
    env = dict(recipe_env, TRAIN_FILES=f"{recipe_env['TRAIN_FILES']},{recipe_env['VAL_FILES']}")
    cfg = compose_cfg(recipe_overrides(RECIPES[0], env))
    assert list(cfg.data.train_files) == [recipe_env["TRAIN_FILES"], recipe_env["VAL_FILES"]]


def test_default_config_selects_the_plugin_pieces() -> None:
    manager = compose_cfg([]).reward.reward_manager
    assert (manager.source, manager.name, manager.module.path) == (
        "importlib",
        "GuardRewardManager",
        "pkg://gr_vl_verl.reward.manager",
    )
    # the clip starts from verl's own keys unless gr_vl.clip says otherwise
    cfg = compose_cfg(["actor_rollout_ref.actor.clip_ratio_high=0.28"])
    assert main_ppo.validate_settings(cfg).clip.eps(1, 1) == (0.0, 0.0)
    assert main_ppo.validate_settings(cfg).clip.high_start == 0.28


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("+gr_vl.clip.epsilon=0.3", r"unknown key\(s\) \['epsilon'\] in gr_vl.clip"),
        ("+gr_vl.reward.gamma=1", r"unknown key\(s\) \['gamma'\] in gr_vl.reward"),
        ("+gr_vl.sampler.k=4", r"unknown key\(s\) \['sampler'\] in gr_vl"),
        ("gr_vl.clip.eps_low=-0.1", "eps_low must be a number in"),
        ("gr_vl.clip.total_steps=0", "total_steps must be an integer >= 1"),
        ("gr_vl.clip.kind=step", "kind must be one of"),
        ("gr_vl.reward.preset=gr-vl-tiny", "unknown reward preset"),
        ("gr_vl.reward.beta=-1", "beta must be a number > 0"),
        ("gr_vl.replay_buffer.poll_s=0", "poll_s must be a number of seconds > 0 or null"),
        ("+gr_vl.replay_buffer.every=1", r"unknown key\(s\) \['every'\] in gr_vl.replay_buffer"),
    ],
)
def test_bad_gr_vl_settings_fail_before_anything_starts(override: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        main_ppo.prepare(compose_cfg([override, "algorithm.adv_estimator=grpo"]))


def test_trainer_and_task_runner_classes_follow_use_v1() -> None:
    from verl.trainer.main_ppo import TaskRunnerV1
    from verl.trainer.main_ppo_v0 import BaseTaskRunner
    from verl.trainer.ppo.v1 import PPOTrainerSeparateAsync, PPOTrainerSync

    v1 = compose_cfg([])
    assert issubclass(main_ppo.trainer_class(v1), PPOTrainerSync)
    assert issubclass(main_ppo.trainer_class(v1), DynamicClipMixin)
    sep = compose_cfg(["trainer.v1.trainer_mode=separate_async"])
    assert issubclass(main_ppo.trainer_class(sep), PPOTrainerSeparateAsync)
    legacy = compose_cfg(["trainer.use_v1=false"])
    assert main_ppo.trainer_class(legacy) is GRRayPPOTrainer

    assert main_ppo.task_runner_class(v1) is main_ppo.GRTaskRunnerV1
    assert issubclass(main_ppo.GRTaskRunnerV1.__ray_actor_class__, TaskRunnerV1.__ray_actor_class__)
    assert main_ppo.task_runner_class(legacy) is main_ppo.GRTaskRunner
    assert issubclass(main_ppo.GRTaskRunner.__ray_actor_class__, BaseTaskRunner)


def _replay_buffer(overrides: list[str]):
    """The replay buffer verl's own ``PPOTrainer._build_replay_buffer`` builds for the plugin's trainer class
    (the trainer made as verl's CPU tests make them: ``__new__`` plus the attributes the builder reads)."""
    cfg = compose_cfg(overrides)
    cls = main_ppo.trainer_class(cfg)
    trainer = cls.__new__(cls)
    trainer.config = cfg
    trainer.trainer_mode = cfg.trainer.v1.trainer_mode
    trainer._add_prompts_to_generate = lambda n: None
    return trainer._build_replay_buffer()


def test_the_sync_replay_buffer_polls_at_the_plugins_interval() -> None:
    from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer, ReplayBufferAsync

    sync = _replay_buffer([])
    assert type(sync) is ReplayBuffer and sync.poll_interval == 0.25
    assert _replay_buffer(["gr_vl.replay_buffer.poll_s=0.5"]).poll_interval == 0.5
    # null keeps verl's own value; the async modes read poll_interval as their idle threshold: left to verl
    default = ReplayBuffer.__init__.__defaults__[0]
    assert default == 2.0
    assert _replay_buffer(["gr_vl.replay_buffer.poll_s=null"]).poll_interval == default
    async_buffer = _replay_buffer(["trainer.v1.trainer_mode=separate_async"])
    assert isinstance(async_buffer, ReplayBufferAsync) and async_buffer.poll_interval == default


def _run_main(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    # hydra writes its run folder (outputs/DATE/...) into the working directory: keep it out of the checkout
    with tempfile.TemporaryDirectory(prefix="gr_vl_hydra_") as cwd:
        argv = [sys.executable, "-m", "gr_vl_verl.trainer.main_ppo", *args]
        return subprocess.run(argv, env=env, capture_output=True, text=True, cwd=cwd, timeout=600)


def test_cli_prints_a_recipe_config_and_rejects_bad_gr_vl_keys_before_ray(recipe_env) -> None:
    """The real command line: a recipe's overrides parse (``--cfg job``); an unknown ``gr_vl`` key exits
    with the key named and without initialising Ray."""
    job = _run_main(*recipe_overrides(RECIPES[0], recipe_env), "--cfg", "job")
    assert job.returncode == 0, job.stderr[-2000:]
    assert "preset: gr-vl" in job.stdout and "temperature: 1.2" in job.stdout

    # a Qwen3-VL recipe: its bounds reach the printed job config (the yaml's Qwen2.5-VL ones are replaced)
    qwen3 = _run_main(*recipe_overrides(ROOT / "recipes" / "grpo_qwen3_vl_8b_eco.sh", recipe_env), "--cfg", "job")
    assert qwen3.returncode == 0, qwen3.stderr[-2000:]
    assert "min_pixels: 342393" in qwen3.stdout and "max_pixels: 5478274" in qwen3.stdout
    assert "262144" not in qwen3.stdout and "preset: gr-vl-eco" in qwen3.stdout

    bad = _run_main("+gr_vl.clip.epsilon=0.3", "algorithm.adv_estimator=grpo")
    assert bad.returncode != 0
    assert "gr_vl_verl: unknown key(s) ['epsilon'] in gr_vl.clip" in bad.stderr
    assert "ray init kwargs" not in bad.stdout + bad.stderr


def test_recipe_keeps_each_launchs_metrics_beside_its_checkpoints(recipe_env, tmp_path) -> None:
    env = dict(recipe_env, CKPT_DIR=str(tmp_path / "ckpt"))
    env.pop("VERL_FILE_LOGGER_PATH", None)
    run = subprocess.run(["bash", str(RECIPES[0])], env=env, capture_output=True, text=True, check=True, timeout=120)
    assert 'trainer.logger=["console","tensorboard","file"]' in run.stdout.splitlines()
    metrics = [line.removeprefix("metrics: ") for line in run.stderr.splitlines() if line.startswith("metrics: ")]
    assert len(metrics) == 1 and re.fullmatch(
        re.escape(str(tmp_path / "ckpt")) + r"/metrics_\d{8}T\d{6}Z\.jsonl", metrics[0]
    )
    assert not (tmp_path / "ckpt").exists()  # a dry run creates nothing
    mine = dict(env, VERL_FILE_LOGGER_PATH=str(tmp_path / "mine.jsonl"))
    run = subprocess.run(["bash", str(RECIPES[0])], env=mine, capture_output=True, text=True, check=True, timeout=120)
    assert f"metrics: {tmp_path / 'mine.jsonl'}" in run.stderr.splitlines()
