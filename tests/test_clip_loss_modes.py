"""verl configurations where the clip schedule cannot act or where the two trainer paths could differ.

Real: verl 0.9.1's policy-loss registry and losses, its ``apply_bypass_mode`` (what the legacy ``fit`` runs
before each update in bypass mode), the trainers' ``_update_actor``, and the plugin's ``prepare``. The actor
worker group is :class:`clip_helpers.ActorGroupStandIn`, and building the GPU workers (``init_workers`` /
``init``) is skipped: the plugin's start-up hooks around it run.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from functools import partial

import pytest
import torch
from clip_helpers import (
    ActorGroupStandIn,
    compose_config,
    kv_batch,
    legacy_trainer,
    no_padding_td,
    padded_batch,
    v1_trainer,
)
from verl.trainer.ppo.core_algos import POLICY_LOSS_REGISTRY, get_policy_loss_fn
from verl.trainer.ppo.ray_trainer import RayPPOTrainer
from verl.trainer.ppo.rollout_corr_helper import apply_bypass_mode
from verl.utils.config import omega_conf_to_dataclass
from verl.workers.utils.losses import ppo_loss

from gr_vl_verl.trainer import main_ppo
from gr_vl_verl.trainer.dynamic_clip import (
    CLIP_FREE_LOSS_MODES,
    METRIC_LOW,
    base_actor_config,
    clip_is_read,
    clip_warning,
    with_clip,
)

VERL_CHECKS = [  # verl's own validate_config needs the log-prob batching set
    "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=1",
    "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=1",
]


def loss_at_clip(mode: str, eps: float, **policy_loss: object) -> float:
    """verl's registered loss ``mode`` at clip range ``eps`` on ratios from 0.4 to 1.65 (whole sequences too)."""
    base = base_actor_config(compose_config("+actor_rollout_ref.actor.policy_loss.dro_beta=0.1"))
    config = with_clip(base, eps, eps)
    config = dataclasses.replace(
        config, policy_loss=dataclasses.replace(config.policy_loss, loss_mode=mode, **policy_loss)
    )
    config.global_batch_info.update(dp_size=1, batch_num_tokens=24, global_batch_size=4, loss_scale_factor=None)
    old = -1.0 - torch.linspace(0, 1, 24).reshape(4, 6)
    ratio = torch.tensor([[0.7, 1.12, 0.97, 1.3, 1.5, 0.5]]) * torch.tensor([[1.2], [0.8], [1.1], [0.9]])
    advantages = torch.tensor([1.0, -0.5, 0.8, -0.3]).unsqueeze(1).expand(4, 6).clone()
    loss, _ = get_policy_loss_fn(mode)(
        old_log_prob=old,
        log_prob=old + ratio.log(),
        advantages=advantages,
        response_mask=torch.ones(4, 6, dtype=torch.bool),
        loss_agg_mode="token-mean",
        config=config,
        rollout_is_weights=None,
    )
    return float(loss)


@pytest.mark.parametrize("mode", sorted(POLICY_LOSS_REGISTRY))
def test_the_clip_free_list_is_what_verls_losses_do(mode: str) -> None:
    """Every loss verl registers either moves with the clip range or is listed as clip-free, and only those."""
    ignores_clip = loss_at_clip(mode, 0.05) == loss_at_clip(mode, 0.3)
    assert ignores_clip == (mode in CLIP_FREE_LOSS_MODES)
    assert clip_is_read(compose_config(f"actor_rollout_ref.actor.policy_loss.loss_mode={mode}")) == (not ignores_clip)


def test_bypass_mode_with_reinforce_ignores_the_clip() -> None:
    reinforce = dataclasses.replace(
        base_actor_config(compose_config()).policy_loss.rollout_correction, loss_type="reinforce"
    )
    assert loss_at_clip("bypass_mode", 0.05, rollout_correction=reinforce) == loss_at_clip(
        "bypass_mode", 0.3, rollout_correction=reinforce
    )
    cfg = compose_config(
        "actor_rollout_ref.actor.policy_loss.loss_mode=bypass_mode",
        "+actor_rollout_ref.actor.policy_loss.rollout_correction.loss_type=reinforce",
    )
    assert not clip_is_read(cfg)


@pytest.mark.parametrize("mode", sorted(CLIP_FREE_LOSS_MODES))
def test_a_clip_free_loss_is_not_pushed_nor_logged_and_warns_once(mode: str, caplog) -> None:
    cfg = compose_config(
        f"actor_rollout_ref.actor.policy_loss.loss_mode={mode}",
        "+actor_rollout_ref.actor.policy_loss.dro_beta=0.1",
        *VERL_CHECKS,
    )
    batch, new_lp = padded_batch()
    workers_own = partial(ppo_loss, config=omega_conf_to_dataclass(cfg.actor_rollout_ref.actor))
    wg = ActorGroupStandIn(new_lp, initial_loss_fn=workers_own)
    with caplog.at_level(logging.WARNING):
        main_ppo.prepare(cfg)
        outputs = [legacy_trainer(cfg, wg, step)._update_actor(batch) for step in (1, 2)]
    assert wg.loss_fns == []  # the workers keep the loss they built
    for out in outputs:
        assert not [k for k in out.meta_info["metrics"] if k.startswith("actor/clip_eps")]
        assert "actor/pg_loss" in out.meta_info["metrics"]
    warnings = [r.getMessage() for r in caplog.records if "dynamic clipping has no effect" in r.getMessage()]
    assert len(warnings) == 1 and f"loss_mode={mode}" in warnings[0]
    assert clip_warning(compose_config()) is None


def _skip_gpu_worker_start(monkeypatch) -> None:
    """Building the actor workers needs GPUs: skip verl's part, keep the plugin's hooks around it."""
    from verl.trainer.ppo.v1.trainer_base import PPOTrainer

    monkeypatch.setattr(RayPPOTrainer, "init_workers", lambda self: None)
    monkeypatch.setattr(PPOTrainer, "init", lambda self: None)


def test_bypass_mode_pushes_the_workers_loss_on_both_trainer_paths(monkeypatch) -> None:
    """verl's legacy ``fit`` rewrites the driver's policy loss to ``bypass_mode`` after the workers were built;
    stock verl never delivers that edit and the V1 trainer never makes it. Both plugin trainers push the loss
    the workers were built with (``vanilla`` here), at the step's clip range, and so train identically."""
    _skip_gpu_worker_start(monkeypatch)
    cfg = compose_config("algorithm.rollout_correction.bypass_mode=true")
    batch, new_lp = padded_batch()
    batch.batch["rollout_log_probs"] = batch.batch["old_log_probs"].clone()
    pushed = {}
    for make in (legacy_trainer, v1_trainer):
        config = copy.deepcopy(cfg)
        wg = ActorGroupStandIn(new_lp, v1_data=no_padding_td(batch))
        trainer = make(config, wg, 2)
        if make is legacy_trainer:
            trainer.init_workers()
            apply_bypass_mode(  # as RayPPOTrainer.fit does before the update
                batch=batch,
                rollout_corr_config=config.algorithm.rollout_correction,
                policy_loss_config=config.actor_rollout_ref.actor.policy_loss,
            )
            assert config.actor_rollout_ref.actor.policy_loss.loss_mode == "bypass_mode"
            trainer._update_actor(batch)
        else:
            trainer.init()
            trainer._update_actor(kv_batch(), {})
        pushed[make.__name__] = wg.loss_fns[-1].keywords["config"], wg.results[-1][0]
    (legacy_cfg, legacy_loss), (v1_cfg, v1_loss) = pushed["legacy_trainer"], pushed["v1_trainer"]
    assert legacy_cfg.policy_loss.loss_mode == v1_cfg.policy_loss.loss_mode == "vanilla"
    assert dataclasses.asdict(legacy_cfg.policy_loss) == dataclasses.asdict(v1_cfg.policy_loss)
    assert legacy_cfg.clip_ratio_low == v1_cfg.clip_ratio_low == pytest.approx(0.1)
    assert legacy_loss == pytest.approx(v1_loss, rel=1e-6)


def test_the_start_up_snapshot_is_what_the_first_push_uses(monkeypatch) -> None:
    """Without the snapshot taken by ``init_workers``, the first push would convert the edited config."""
    _skip_gpu_worker_start(monkeypatch)
    config = compose_config("algorithm.rollout_correction.bypass_mode=true")
    wg = ActorGroupStandIn(torch.zeros(1))
    trainer = legacy_trainer(config, wg, 1)
    trainer.init_workers()
    config.actor_rollout_ref.actor.policy_loss.loss_mode = "bypass_mode"
    assert trainer.push_clip_eps()[METRIC_LOW] == pytest.approx(0.15)
    assert wg.loss_fns[-1].keywords["config"].policy_loss.loss_mode == "vanilla"
    late = legacy_trainer(config, ActorGroupStandIn(torch.zeros(1)), 1)  # no start-up: converts at first push
    late.push_clip_eps()
    assert late.actor_rollout_wg.loss_fns[-1].keywords["config"].policy_loss.loss_mode == "bypass_mode"


def test_prepare_says_when_bypass_mode_asks_for_a_loss_the_workers_will_not_run(caplog) -> None:
    with caplog.at_level(logging.WARNING):
        main_ppo.prepare(compose_config("algorithm.rollout_correction.bypass_mode=true", *VERL_CHECKS))
        main_ppo.prepare(
            compose_config(
                "algorithm.rollout_correction.bypass_mode=true",
                "actor_rollout_ref.actor.policy_loss.loss_mode=bypass_mode",
                *VERL_CHECKS,
            )
        )
    warnings = [r.getMessage() for r in caplog.records if "bypass_mode=true" in r.getMessage()]
    assert len(warnings) == 1 and "policy_loss.loss_mode=vanilla" in warnings[0]
