"""The per-step push of the clip range on CPU, on both verl 0.9.1 trainer paths: the trainer side.

Real: the plugin's trainer subclasses running verl's own ``RayPPOTrainer._update_actor`` /
``PPOTrainerSync._update_actor`` and ``_load_checkpoint``, the configs composed by hydra from the plugin's
yaml over verl's, ``omega_conf_to_dataclass``, ``ppo_loss``, the vanilla policy loss, and verl's padding
conversions. Not real: the actor worker group. :class:`ActorGroupStandIn` takes its place: it records what
``set_loss_fn`` receives (after a cloudpickle round trip, as Ray would send it) and, on ``update_actor``,
calls the last pushed loss the way verl's engine calls its loss function
(``loss_fn(model_output=..., data=<micro-batch TensorDict>, dp_group=...)``) on log-probs the test supplies;
it does not run verl's ``ActorRolloutRefWorker`` or ``TrainingWorker``. Those, with a stub engine, are in
``test_clip_workers.py``. Losses are checked against a hand computation.
"""

from __future__ import annotations

import dataclasses
import logging
from functools import partial

import pytest
import torch
from clip_helpers import (
    TOTAL_STEPS,
    ActorGroupStandIn,
    call_like_engine,
    compose_config,
    hand_loss,
    kv_batch,
    legacy_trainer,
    no_padding_td,
    padded_batch,
    v1_trainer,
)
from verl.utils import tensordict_utils as tu
from verl.utils.config import omega_conf_to_dataclass
from verl.workers.utils.losses import ppo_loss

from gr_vl_verl.trainer import dynamic_clip
from gr_vl_verl.trainer.clip_schedule import ClipSchedule
from gr_vl_verl.trainer.dynamic_clip import (
    METRIC_APPLIED_HIGH,
    METRIC_APPLIED_LOW,
    METRIC_HIGH,
    METRIC_LOW,
    clip_warning,
    updates_per_step,
    with_clip,
)


@pytest.fixture(scope="module")
def config():
    return compose_config()


@pytest.mark.parametrize("step", [1, 2, 3, 4])
def test_legacy_trainer_pushes_eps_of_the_step(config, step: int) -> None:
    batch, new_lp = padded_batch()
    wg = ActorGroupStandIn(new_lp)
    trainer = legacy_trainer(config, wg, step)

    out = trainer._update_actor(batch)  # runs verl's RayPPOTrainer._update_actor through super()

    eps = 0.2 * (TOTAL_STEPS - step) / TOTAL_STEPS
    assert len(wg.loss_fns) == 1
    pushed = wg.loss_fns[0]
    assert pushed.func is ppo_loss
    assert pushed.keywords["config"].clip_ratio_low == pytest.approx(eps)
    assert pushed.keywords["config"].clip_ratio_high == pytest.approx(eps)
    loss, metrics = wg.results[0]
    want_loss, want_frac = hand_loss(eps, eps)
    assert loss == pytest.approx(want_loss, rel=1e-5, abs=1e-6)
    assert metrics["actor/pg_clipfrac"][0] == pytest.approx(want_frac)
    logged = out.meta_info["metrics"]
    assert logged[METRIC_LOW] == pytest.approx(eps) and logged[METRIC_HIGH] == pytest.approx(eps)
    assert logged["actor/pg_clipfrac"] == [pytest.approx(want_frac)]


@pytest.mark.parametrize("step", [1, 3])
def test_v1_trainer_pushes_eps_of_the_step(config, step: int) -> None:
    from verl.trainer.ppo.v1 import PPOTrainerSync

    batch, new_lp = padded_batch()
    wg = ActorGroupStandIn(new_lp, v1_data=no_padding_td(batch))
    trainer = v1_trainer(config, wg, step)
    assert isinstance(trainer, PPOTrainerSync)
    metrics: dict = {}

    trainer._update_actor(kv_batch(), metrics)

    eps = 0.2 * (TOTAL_STEPS - step) / TOTAL_STEPS
    loss, _ = wg.results[0]
    want_loss, want_frac = hand_loss(eps, eps)
    assert loss == pytest.approx(want_loss, rel=1e-5, abs=1e-6)
    assert metrics["actor/pg_clipfrac"] == pytest.approx(want_frac)
    assert metrics[METRIC_LOW] == pytest.approx(eps) and metrics[METRIC_HIGH] == pytest.approx(eps)


def test_every_step_pushes_a_new_range_and_the_loss_follows(config) -> None:
    batch, new_lp = padded_batch()
    wg = ActorGroupStandIn(new_lp)
    trainer = legacy_trainer(config, wg, 1)
    for step in range(1, TOTAL_STEPS + 1):
        trainer.global_steps = step
        trainer._update_actor(batch)
    pushed = [fn.keywords["config"].clip_ratio_low for fn in wg.loss_fns]
    assert pushed == pytest.approx([0.15, 0.10, 0.05, 0.0])
    fracs = [m["actor/pg_clipfrac"][0] for _, m in wg.results]
    assert fracs == pytest.approx([hand_loss(e, e)[1] for e in (0.15, 0.10, 0.05, 0.0)])
    assert fracs == sorted(fracs) and len(set(fracs)) == 4


def test_clip_higher_and_product_schedule_reach_the_loss() -> None:
    cfg = compose_config("actor_rollout_ref.actor.clip_ratio_high=0.28", "gr_vl.clip.kind=product")
    batch, new_lp = padded_batch()
    wg = ActorGroupStandIn(new_lp)
    trainer = legacy_trainer(cfg, wg, 2)
    out = trainer._update_actor(batch)
    f = (1 - 1 / 4) * (1 - 2 / 4)
    low, high = 0.2 * f, 0.28 * f
    assert out.meta_info["metrics"][METRIC_LOW] == pytest.approx(low)
    assert out.meta_info["metrics"][METRIC_HIGH] == pytest.approx(high)
    loss, metrics = wg.results[0]
    assert (loss, metrics["actor/pg_clipfrac"][0]) == pytest.approx(hand_loss(low, high), rel=1e-5, abs=1e-6)


def test_pushed_loss_equals_the_one_verl_builds_from_static_keys(config) -> None:
    """The pushed partial gives the same loss and metrics as the worker's own
    ``partial(ppo_loss, config=omega_conf_to_dataclass(actor))`` with the clip keys set in the config."""
    batch, new_lp = padded_batch()
    td = no_padding_td(batch)
    tu.assign_non_tensor(td, global_batch_size=8)
    for step in (1, 2, 4):
        low, high = ClipSchedule().eps(step, TOTAL_STEPS)
        static_cfg = compose_config(
            f"actor_rollout_ref.actor.clip_ratio={low}",
            f"actor_rollout_ref.actor.clip_ratio_low={low}",
            f"actor_rollout_ref.actor.clip_ratio_high={high}",
        )
        verl_fn = partial(ppo_loss, config=omega_conf_to_dataclass(static_cfg.actor_rollout_ref.actor))
        wg = ActorGroupStandIn(new_lp)
        legacy_trainer(config, wg, step).push_clip_eps()
        # the dataclass is the one verl builds, field for field (before ppo_loss fills global_batch_info)
        assert dataclasses.asdict(wg.loss_fns[0].keywords["config"]) == dataclasses.asdict(verl_fn.keywords["config"])
        ours = call_like_engine(wg.loss_fns[0], td, new_lp)
        theirs = call_like_engine(verl_fn, td, new_lp)
        assert ours[0] == theirs[0]
        reported = {k: ours[1].pop(k) for k in (METRIC_APPLIED_LOW, METRIC_APPLIED_HIGH)}
        assert reported == {METRIC_APPLIED_LOW: pytest.approx(low), METRIC_APPLIED_HIGH: pytest.approx(high)}
        assert {k: v.aggregate() for k, v in ours[1].items()} == {k: v.aggregate() for k, v in theirs[1].items()}


def test_resume_continues_the_schedule_from_the_restored_step(config, tmp_path) -> None:
    """verl's own ``_load_checkpoint`` sets ``global_steps`` from ``global_step_<n>``; ``fit`` adds one."""
    ckpt = tmp_path / "global_step_2"
    (ckpt / "actor").mkdir(parents=True)
    resume = compose_config("trainer.resume_mode=resume_path", f"trainer.resume_from_path={ckpt}")
    batch, new_lp = padded_batch()
    for make in (legacy_trainer, v1_trainer):
        wg = ActorGroupStandIn(new_lp, v1_data=no_padding_td(batch))
        trainer = make(resume, wg, 0)
        trainer._load_checkpoint()
        assert trainer.global_steps == 2 and wg.loaded == [str(ckpt / "actor")]
        trainer.global_steps += 1  # fit(): "we start from step 1" after the restore
        trainer.push_clip_eps()
        assert wg.loss_fns[-1].keywords["config"].clip_ratio_low == pytest.approx(0.05)  # eps(3) of 4


def test_distillation_keeps_verl_s_distillation_loss(config) -> None:
    from verl.trainer.distillation import distillation_ppo_loss

    cfg = compose_config("distillation.enabled=true", "distillation.teacher_models.teacher_model.model_path=/t")
    fn = dynamic_clip.make_loss_fn(cfg, with_clip(dynamic_clip.base_actor_config(config), 0.1, 0.1))
    assert fn.func is distillation_ppo_loss
    assert fn.keywords["config"].clip_ratio_low == 0.1
    assert fn.keywords["distillation_config"].enabled is True


def test_actor_config_is_converted_once_and_reused(config) -> None:
    wg = ActorGroupStandIn(torch.zeros(1))
    trainer = legacy_trainer(config, wg, 1)
    trainer.push_clip_eps()
    base = trainer._clip_state().base
    trainer.global_steps = 2
    trainer.push_clip_eps()
    assert trainer._clip_state().base is base
    assert wg.loss_fns[0].keywords["config"].clip_ratio_low != wg.loss_fns[1].keywords["config"].clip_ratio_low


def test_warns_when_clipping_cannot_act(caplog) -> None:
    inert = compose_config("actor_rollout_ref.actor.ppo_mini_batch_size=8")
    assert updates_per_step(inert) == 1
    assert "dynamic clipping cannot act" in clip_warning(inert)
    from gr_vl_verl.trainer import main_ppo

    wg = ActorGroupStandIn(torch.zeros(1))
    with caplog.at_level(logging.WARNING):
        # what `main` runs before Ray starts (verl's own checks need the log-prob batching set)
        main_ppo.prepare(
            compose_config(
                "actor_rollout_ref.actor.ppo_mini_batch_size=8",
                "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=1",
                "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=1",
            )
        )
        legacy_trainer(inert, wg, 1).push_clip_eps()
        legacy_trainer(inert, wg, 2).push_clip_eps()
    warnings = [r for r in caplog.records if "dynamic clipping cannot act" in r.getMessage()]
    assert len(warnings) == 1 and "ppo_mini_batch_size=8" in warnings[0].getMessage()  # once per run
    # two epochs on one mini-batch: the second epoch sees ratio != 1
    assert (
        clip_warning(
            compose_config("actor_rollout_ref.actor.ppo_mini_batch_size=8", "actor_rollout_ref.actor.ppo_epochs=2")
        )
        is None
    )


def test_async_v1_counts_updates_per_parameter_sync(config) -> None:
    cfg = compose_config(
        "trainer.v1.trainer_mode=separate_async",
        "trainer.v1.separate_async.parameter_sync_step=2",
    )
    assert updates_per_step(config) == 2
    assert updates_per_step(cfg) == 1  # 8 prompts / 2 syncs = 4 = one mini-batch per update
    legacy = compose_config(
        "trainer.use_v1=false",
        "trainer.v1.trainer_mode=separate_async",
        "trainer.v1.separate_async.parameter_sync_step=2",
    )
    assert updates_per_step(legacy) == 2  # the legacy trainer has no parameter sync steps: 8 / 4 per update
