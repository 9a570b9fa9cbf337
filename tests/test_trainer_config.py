"""The plugin trainer config and the GRPO recipes, composed against verl 0.9.1's real config tree.

Each recipe runs in its dry mode (prints its overrides); the overrides are then composed with
``gr_vl_trainer.yaml`` by hydra and checked by :func:`main_ppo.prepare` (verl's ``validate_config`` and the
``gr_vl`` block), so a misspelt or removed key fails here rather than on a GPU cluster.
"""

from __future__ import annotations

import os
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
    )
    return env


def recipe_overrides(script: Path, env: dict[str, str], *extra: str) -> list[str]:
    out = subprocess.run(["bash", str(script), *extra], env=env, capture_output=True, text=True, check=True)
    return out.stdout.splitlines()


def test_there_are_four_grpo_recipes() -> None:
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
    run = subprocess.run(["bash", str(RECIPES[0])], env=env, capture_output=True, text=True)
    assert run.returncode == 2
    assert f"error: {missing} is not set" in run.stderr and run.stdout == ""

    env[missing] = "/nonexistent/gr_vl/path"
    run = subprocess.run(["bash", str(RECIPES[0])], env=env, capture_output=True, text=True)
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


def _run_main(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    # hydra writes its run folder (outputs/DATE/...) into the working directory: keep it out of the checkout
    return subprocess.run(
        [sys.executable, "-m", "gr_vl_verl.trainer.main_ppo", *args],
        env=env,
        capture_output=True,
        text=True,
        cwd=tempfile.mkdtemp(prefix="gr_vl_hydra_"),
    )


def test_cli_prints_a_recipe_config_and_rejects_bad_gr_vl_keys_before_ray(recipe_env) -> None:
    """The real command line: a recipe's overrides parse (``--cfg job``); an unknown ``gr_vl`` key exits
    with the key named and without initialising Ray."""
    job = _run_main(*recipe_overrides(RECIPES[0], recipe_env), "--cfg", "job")
    assert job.returncode == 0, job.stderr[-2000:]
    assert "preset: gr-vl" in job.stdout and "temperature: 1.2" in job.stdout

    bad = _run_main("+gr_vl.clip.epsilon=0.3", "algorithm.adv_estimator=grpo")
    assert bad.returncode != 0
    assert "gr_vl_verl: unknown key(s) ['epsilon'] in gr_vl.clip" in bad.stderr
    assert "ray init kwargs" not in bad.stdout + bad.stderr
