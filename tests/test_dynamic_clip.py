"""The per-step push of the clip range, end to end on CPU, on both verl 0.9.1 trainer paths.

Only the GPU worker group is replaced: :class:`ActorGroupStandIn` records ``set_loss_fn`` (round-tripping the
loss through cloudpickle, as Ray does) and, on ``update_actor``, calls the last loss exactly as verl's engine
does (``loss_fn(model_output=..., data=<micro-batch TensorDict>, dp_group=...)``). Everything else is verl's:
the trainers' own ``_update_actor`` and ``_load_checkpoint``, ``ppo_loss``, the vanilla policy loss, the
padding conversions and the config classes. Losses are checked against a hand computation.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from functools import partial

import cloudpickle
import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from tensordict import TensorDict
from verl import DataProto
from verl.utils import tensordict_utils as tu
from verl.utils.config import omega_conf_to_dataclass
from verl.utils.metric.utils import Metric
from verl.workers.utils.losses import ppo_loss
from verl.workers.utils.padding import left_right_2_no_padding

from gr_vl_verl.trainer import dynamic_clip
from gr_vl_verl.trainer.clip_schedule import ClipSchedule
from gr_vl_verl.trainer.dynamic_clip import (
    METRIC_HIGH,
    METRIC_LOW,
    GRRayPPOTrainer,
    clip_warning,
    updates_per_step,
    v1_trainer_cls,
    with_clip,
)

TOTAL_STEPS = 4  # linear from 0.2: steps 1..4 -> 0.15, 0.10, 0.05, 0.0
BASE_OVERRIDES = [
    "algorithm.adv_estimator=grpo",
    "data.train_batch_size=8",
    "actor_rollout_ref.rollout.n=2",
    "actor_rollout_ref.actor.ppo_mini_batch_size=4",
    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4",
    "actor_rollout_ref.actor.use_kl_loss=false",
    "actor_rollout_ref.actor.entropy_coeff=0",
]


def compose_config(*overrides: str):
    with initialize_config_module("gr_vl_verl.trainer.config", version_base=None):
        cfg = compose("gr_vl_trainer", overrides=[*BASE_OVERRIDES, *overrides])
    OmegaConf.resolve(cfg)
    return cfg


@pytest.fixture(scope="module")
def config():
    return compose_config()


# --------------------------------------------------------------------------------------------------
# A batch whose ratios straddle 1 ± eps for every step of the schedule
# --------------------------------------------------------------------------------------------------
PROMPT_LENS = [3, 2, 3, 1]  # left-padded to 3
RESPONSE_LENS = [4, 3, 2, 4]  # right-padded to 4
RATIOS = [
    [0.70, 1.12, 0.97, 1.30],
    [1.04, 0.83, 1.18, 0.0],
    [1.03, 1.30, 0.0, 0.0],
    [1.12, 0.70, 1.04, 0.92],
]
ADVANTAGES = [1.0, -0.5, 0.8, -0.3]  # GRPO: one value per sequence


def padded_batch() -> tuple[DataProto, torch.Tensor]:
    """The padded batch the trainer holds before ``_update_actor``, and the new policy's log-probs."""
    bs, p_max, r_max = len(PROMPT_LENS), 3, 4
    prompt_mask = torch.tensor([[0] * (p_max - n) + [1] * n for n in PROMPT_LENS])
    response_mask = torch.tensor([[1] * n + [0] * (r_max - n) for n in RESPONSE_LENS])
    attention_mask = torch.cat([prompt_mask, response_mask], dim=1)
    gen = torch.Generator().manual_seed(0)
    input_ids = torch.randint(5, 100, (bs, p_max + r_max), generator=gen) * attention_mask
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    old_log_probs = -0.5 - 1.5 * torch.rand(bs, r_max, generator=gen)
    ratio = torch.tensor(RATIOS, dtype=torch.float32).clamp(min=1e-3)
    new_log_probs = old_log_probs + torch.log(ratio)
    advantages = torch.tensor(ADVANTAGES).unsqueeze(1).expand(bs, r_max) * response_mask
    batch = DataProto.from_dict(
        tensors={
            "input_ids": input_ids,
            "prompts": input_ids[:, :p_max],
            "responses": input_ids[:, p_max:],
            "attention_mask": attention_mask,
            "position_ids": position_ids,
            "response_mask": response_mask,
            "old_log_probs": old_log_probs,
            "advantages": advantages,
        },
        meta_info={},
    )
    return batch, new_log_probs


def engine_model_output(data: TensorDict, new_log_probs: torch.Tensor) -> dict:
    """Log-probs in the engine's no-padding layout: all valid tokens of each sequence, shifted left by one."""
    values = []
    for i, (p, r) in enumerate(zip(PROMPT_LENS, RESPONSE_LENS, strict=True)):
        seq = torch.zeros(p + r)
        seq[p - 1 : p + r - 1] = new_log_probs[i, :r]
        values.append(seq)
    assert sum(len(v) for v in values) == int(data["attention_mask"].sum())
    return {"log_probs": torch.cat(values)}


def hand_loss(eps_low: float, eps_high: float) -> tuple[float, float]:
    """Token-mean clipped surrogate and clip fraction, written out from PPO's definition."""
    total, clipped, n = 0.0, 0, 0
    for row, adv, length in zip(RATIOS, ADVANTAGES, RESPONSE_LENS, strict=True):
        for r in row[:length]:
            unclipped = -adv * r
            clip_r = min(max(r, 1 - eps_low), 1 + eps_high)
            surrogate = -adv * clip_r
            token = max(unclipped, surrogate)
            if adv < 0:
                token = min(token, -adv * 3.0)  # verl's dual clip (clip_ratio_c = 3); inactive here
            total += token
            clipped += surrogate > unclipped
            n += 1
    return total / n, clipped / n


class ActorGroupStandIn:
    """Stands in for ``actor_rollout_wg`` (GPU workers): records pushes and runs the loss like the engine."""

    def __init__(self, new_log_probs: torch.Tensor, v1_data: TensorDict | None = None) -> None:
        self.new_log_probs = new_log_probs
        self.v1_data = v1_data
        self.loss_fns: list = []
        self.results: list[tuple[float, dict]] = []
        self.loaded: list[str] = []

    def set_loss_fn(self, loss_fn) -> None:
        self.loss_fns.append(cloudpickle.loads(cloudpickle.dumps(loss_fn)))  # what crosses Ray

    def load_checkpoint(self, local_path, hdfs_path=None, del_local_after_load=False) -> None:
        self.loaded.append(local_path)

    def update_actor(self, data):
        if not isinstance(data, TensorDict):  # V1: the worker reads the batch from TransferQueue
            td = self.v1_data.clone()
            tu.assign_non_tensor(td, global_batch_size=data.extra_info["global_batch_size"])
            data = td
        loss, metrics = call_like_engine(self.loss_fns[-1], data, self.new_log_probs)
        metrics = {k: [v.aggregate() if isinstance(v, Metric) else v] for k, v in metrics.items()}
        self.results.append((loss, metrics))
        return tu.get_tensordict(tensor_dict={}, non_tensor_dict={"metrics": {**metrics, "mfu": [0.0]}})


def call_like_engine(loss_fn, data: TensorDict, new_log_probs: torch.Tensor) -> tuple[float, dict]:
    """One micro-batch on one rank, as ``FSDPEngine.forward_backward_batch`` prepares and calls it."""
    data = data.clone()
    tu.assign_non_tensor(data, batch_num_tokens=int(data["loss_mask"].sum()), dp_size=1)
    loss, metrics = loss_fn(model_output=engine_model_output(data, new_log_probs), data=data, dp_group=None)
    return float(loss), metrics


def no_padding_td(batch: DataProto) -> TensorDict:
    return left_right_2_no_padding(batch.to_tensordict())


def legacy_trainer(config, wg, step: int) -> GRRayPPOTrainer:
    # Built the way verl's CPU tests build trainers: __new__ plus the attributes the hook reads.
    trainer = GRRayPPOTrainer.__new__(GRRayPPOTrainer)
    trainer.config = config
    trainer.actor_rollout_wg = wg
    trainer.global_steps = step
    trainer.total_training_steps = TOTAL_STEPS
    trainer.use_critic = False
    return trainer


def v1_trainer(config, wg, step: int):
    cls = v1_trainer_cls("sync")
    trainer = cls.__new__(cls)
    trainer.config = config
    trainer.actor_rollout_wg = wg
    trainer.global_steps = step
    trainer.total_training_steps = TOTAL_STEPS
    trainer.use_critic = False
    trainer.trainer_mode = "sync"
    return trainer


def kv_batch():
    from transfer_queue import KVBatchMeta

    return KVBatchMeta(partition_id="train", keys=[], tags=[])


# --------------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------------
def test_hand_values_straddle_the_clip_range() -> None:
    fracs = [hand_loss(e, e)[1] for e in (0.15, 0.10, 0.05, 0.0)]
    assert len(set(fracs)) == 4 and 0 < fracs[0] < fracs[-1] < 1, fracs


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
    assert math.isfinite(updates_per_step(compose_config("trainer.use_v1=false")))
