"""Trainer subclasses that move the clip range to the actor workers every step (verl 0.9.1).

verl's actor worker builds its loss once, in ``ActorRolloutRefWorker.init_model``, as
``partial(ppo_loss, config=omega_conf_to_dataclass(config.actor))``, and never sees the global step.
Editing the driver's config afterwards (what the original GuardReasoner-VL code did) changes nothing in the
workers. So
before each actor update the trainer builds the same partial with ``clip_ratio_low/high = eps(step)`` and
sends it with ``actor_rollout_wg.set_loss_fn`` (``Dispatch.ONE_TO_ALL``: every rank, before ``update_actor``
is queued). ``step`` is the trainer's ``global_steps``, which verl restores from the checkpoint folder name on
resume, so a resumed run continues the schedule where it stopped.

The driver logs the range it pushed (``actor/clip_eps_low/high``); the pushed loss itself
(:class:`ClipReportingLoss`) adds the range the worker's policy loss read to the metrics it returns
(``actor/loss_clip_low/high``), so a push that never reached the workers' loss shows in the run's metrics.

Both trainer paths are covered: :class:`GRRayPPOTrainer` (legacy, ``trainer.use_v1=false``) and
:func:`v1_trainer_cls` (the V1 trainer of any ``trainer.v1.trainer_mode``). The V1 module needs
``transfer_queue``, so it is only imported when asked for.

The same mixin adds the paper's metric to verl's validation metrics: F1 per data source, from the confusion
terms the reward returns (:mod:`gr_vl_verl.trainer.val_f1`).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from collections.abc import Callable
from functools import cache, partial
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict
from verl import DataProto
from verl.trainer.ppo.ray_trainer import RayPPOTrainer

from gr_vl_verl.settings import section
from gr_vl_verl.trainer.clip_schedule import ClipSchedule
from gr_vl_verl.trainer.replay_poll import ReplayPollMixin
from gr_vl_verl.trainer.reward_metrics import columns_to_rows, term_means
from gr_vl_verl.trainer.run_length import planned_steps
from gr_vl_verl.trainer.val_f1 import f1_metrics

logger = logging.getLogger(__name__)

METRIC_LOW = "actor/clip_eps_low"
METRIC_HIGH = "actor/clip_eps_high"
#: The clip range the actor workers' policy loss read, reported by the loss itself (:class:`ClipReportingLoss`).
METRIC_APPLIED_LOW = "actor/loss_clip_low"
METRIC_APPLIED_HIGH = "actor/loss_clip_high"
#: Seconds the push took (building the loss and ``set_loss_fn`` on every rank), beside verl's ``timing_s/*``.
METRIC_PUSH_SECONDS = "timing_s/gr_vl_clip_push"


# --------------------------------------------------------------------------------------------------
# The loss the worker would build, at a given clip range
# --------------------------------------------------------------------------------------------------
def base_actor_config(config: DictConfig) -> Any:
    """The worker's ``ActorConfig``: verl's own conversion of ``actor_rollout_ref.actor``.

    The worker additionally sets ``model_config`` (an ``HFModelConfig`` that loads the tokenizer); the policy
    losses and ``ppo_loss`` do not read it in 0.9.1, so it is left at its default here.
    """
    from verl.utils.config import omega_conf_to_dataclass

    return omega_conf_to_dataclass(config.actor_rollout_ref.actor)


def with_clip(actor_config: Any, eps_low: float, eps_high: float) -> Any:
    """A copy of ``actor_config`` with the clip range set (``clip_ratio`` is only verl's fallback)."""
    return dataclasses.replace(
        actor_config,
        clip_ratio=eps_low,
        clip_ratio_low=eps_low,
        clip_ratio_high=eps_high,
        global_batch_info={},
    )


def applied_clip(actor_config: Any) -> tuple[float, float]:
    """The clip range verl 0.9.1's clipped policy losses read from an ``ActorConfig``: ``clip_ratio_low`` and
    ``clip_ratio_high``, each falling back to ``clip_ratio`` (``core_algos.compute_policy_loss_vanilla``)."""
    low, high = actor_config.clip_ratio_low, actor_config.clip_ratio_high
    fallback = actor_config.clip_ratio
    return float(fallback if low is None else low), float(fallback if high is None else high)


class ClipReportingLoss(partial):
    """The worker's loss partial (``ppo_loss`` or the distillation loss, ``func``/``keywords`` as verl built
    them) that also returns, among its metrics, the clip range of the ``config`` the policy loss was called
    with. The figure is produced in the actor worker, per micro-batch, by the loss it trains with: if a push
    never reached the engine, the run's metrics lack ``actor/loss_clip_*`` or show the worker's own range."""

    def __call__(self, /, *args: Any, **kwargs: Any) -> Any:
        result = super().__call__(*args, **kwargs)
        if not isinstance(result, tuple):  # the distillation loss's logit pass: a tensor, no metrics
            return result
        loss, metrics = result
        low, high = applied_clip(self.keywords["config"])
        metrics[METRIC_APPLIED_LOW] = low
        metrics[METRIC_APPLIED_HIGH] = high
        return loss, metrics


def make_loss_fn(config: DictConfig, actor_config: Any) -> Callable[..., Any]:
    """The partial the worker's ``init_model`` builds: ``ppo_loss``, or the distillation loss when enabled,
    reporting the clip range it applied (:class:`ClipReportingLoss`)."""
    from verl.trainer.distillation import distillation_ppo_loss, is_distillation_enabled
    from verl.utils.config import omega_conf_to_dataclass
    from verl.workers.utils.losses import ppo_loss

    distillation = config.get("distillation")
    if is_distillation_enabled(distillation):
        return ClipReportingLoss(
            distillation_ppo_loss,
            config=actor_config,
            distillation_config=omega_conf_to_dataclass(distillation),
        )
    return ClipReportingLoss(ppo_loss, config=actor_config)


# --------------------------------------------------------------------------------------------------
# When clipping cannot act
# --------------------------------------------------------------------------------------------------
def updates_per_step(config: DictConfig) -> int:
    """Optimizer updates per training step: mini-batches per (sub-)batch times PPO epochs.

    On the first mini-batch of a step the policy still equals the one that computed ``old_log_prob``, so the
    ratio is exactly 1 and the clip is inactive; only later mini-batches or epochs can be clipped.
    """
    actor = config.actor_rollout_ref.actor
    batch = int(config.data.train_batch_size)
    trainer = config.get("trainer", {})
    if trainer.get("use_v1", True):
        mode = OmegaConf.select(config, "trainer.v1.trainer_mode", default="sync")
        sync_step = OmegaConf.select(config, f"trainer.v1.{mode}.parameter_sync_step", default=1) or 1
        batch = max(1, batch // int(sync_step))
    mini = max(1, int(actor.ppo_mini_batch_size))
    return math.ceil(batch / mini) * int(actor.ppo_epochs)


#: verl 0.9.1 policy losses that never read ``clip_ratio``, ``clip_ratio_low`` or ``clip_ratio_high``
#: (``verl/trainer/ppo/core_algos.py``): SAPO's soft gate, GPG's plain policy gradient, KL-Cov's KL penalty
#: and DRO's quadratic log-ratio penalty. ``bypass_mode`` is in the same case with ``loss_type=reinforce``.
CLIP_FREE_LOSS_MODES: frozenset[str] = frozenset({"sapo", "gpg", "kl_cov", "dro"})


def worker_loss_mode(config: DictConfig) -> str:
    """The policy loss the actor workers run: ``actor_rollout_ref.actor.policy_loss.loss_mode``."""
    return OmegaConf.select(config, "actor_rollout_ref.actor.policy_loss.loss_mode", default=None) or "vanilla"


def clip_is_read(config: DictConfig) -> bool:
    """Whether the workers' policy loss reads the clip range at all."""
    mode = worker_loss_mode(config)
    if mode == "bypass_mode":
        path = "actor_rollout_ref.actor.policy_loss.rollout_correction.loss_type"
        return (OmegaConf.select(config, path, default=None) or "ppo_clip") != "reinforce"
    return mode not in CLIP_FREE_LOSS_MODES


def clip_schedule_from(config: DictConfig) -> ClipSchedule:
    """The clip schedule of a run (``gr_vl.clip``; the paper's defaults where absent)."""
    return ClipSchedule.from_mapping(section(config, "clip"))


def clip_warning(config: DictConfig) -> str | None:
    """A message when the loss or the batching leaves the clip schedule nothing to do, else ``None``."""
    if not clip_is_read(config):
        return (
            f"dynamic clipping has no effect: the policy loss "
            f"actor_rollout_ref.actor.policy_loss.loss_mode={worker_loss_mode(config)} never reads the clip "
            "range, so gr_vl.clip is not pushed and actor/clip_eps_* is not logged. Use loss_mode=vanilla "
            "(the paper's clipped objective) for the schedule to act."
        )
    if updates_per_step(config) > 1:
        return None
    actor = config.actor_rollout_ref.actor
    return (
        "dynamic clipping cannot act: each step is one mini-batch "
        f"(data.train_batch_size={config.data.train_batch_size}, "
        f"actor_rollout_ref.actor.ppo_mini_batch_size={actor.ppo_mini_batch_size}) and one epoch "
        f"(ppo_epochs={actor.ppo_epochs}), so the importance ratio is 1 and nothing is clipped. "
        "Lower ppo_mini_batch_size (e.g. to train_batch_size / 2) or raise ppo_epochs."
    )


def bypass_mode_warning(config: DictConfig) -> str | None:
    """A message when ``algorithm.rollout_correction.bypass_mode`` asks for a loss the workers will not run."""
    if not OmegaConf.select(config, "algorithm.rollout_correction.bypass_mode", default=False):
        return None
    mode = worker_loss_mode(config)
    if mode == "bypass_mode":
        return None
    return (
        "algorithm.rollout_correction.bypass_mode=true: old log-probs are the rollout's, but the actor workers "
        f"keep actor_rollout_ref.actor.policy_loss.loss_mode={mode} on both trainer paths (verl 0.9.1 switches "
        "to its bypass_mode loss only in the legacy trainer's driver config, which never reaches the workers). "
        "Set actor_rollout_ref.actor.policy_loss.loss_mode=bypass_mode to train with that loss."
    )


# --------------------------------------------------------------------------------------------------
# The per-step hook, shared by both trainer paths
# --------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class _ClipState:
    schedule: ClipSchedule
    base: Any  # the ActorConfig dataclass, converted once (hydra instantiation costs ~50 ms)
    loss_fn_config: DictConfig  # the config the loss is built from: the driver's, as the workers got it
    acts: bool  # whether the workers' policy loss reads the clip range


class DynamicClipMixin:
    """Computes ``eps(global_steps)`` and pushes the matching loss to ``actor_rollout_wg``.

    Needs only ``config``, ``global_steps``, ``total_training_steps`` and ``actor_rollout_wg`` from the
    trainer. The actor config is converted once, right after the workers are built
    (:meth:`remember_worker_config`, called by both trainers' start-up hooks), and reused with only the clip
    range replaced, so the pushed loss is the workers' own. That matters with
    ``algorithm.rollout_correction.bypass_mode``: verl 0.9.1's legacy ``fit`` then rewrites the driver's
    ``actor.policy_loss`` (``loss_mode=bypass_mode``) after the workers were built, an edit stock verl never
    delivers to them and the V1 trainer never makes. Converting at the first push would carry it to the
    workers on the legacy path only; the snapshot keeps both paths on the loss stock verl runs, plus the clip.
    Trainers built without start-up (tests) convert at the first push.
    """

    config: DictConfig
    global_steps: int
    total_training_steps: int
    actor_rollout_wg: Any

    def remember_worker_config(self) -> None:
        """Convert the actor config the workers were just built from; later driver edits do not reach it."""
        config = copy.deepcopy(self.config)
        self.__dict__["_gr_vl_clip_state"] = _ClipState(
            schedule=clip_schedule_from(config),
            base=base_actor_config(config),
            loss_fn_config=config,
            acts=clip_is_read(config),
        )

    def _clip_state(self) -> _ClipState:
        if self.__dict__.get("_gr_vl_clip_state") is None:
            self.remember_worker_config()
        return self.__dict__["_gr_vl_clip_state"]

    def _val_metrics_update(
        self, data_sources: Any, sample_uids: Any, reward_extra_infos_dict: Any, *args: Any, **kwargs: Any
    ) -> dict[str, Any]:
        """verl's validation metrics plus the paper's F1 per data source and overall (``val/f1_*``).

        Both trainer paths (legacy ``RayPPOTrainer`` and V1 ``trainer_base``) end ``_validate`` here with the
        samples' data sources and reward terms; without the reward's confusion terms nothing is added.
        """
        metrics = super()._val_metrics_update(  # type: ignore[misc]
            data_sources, sample_uids, reward_extra_infos_dict, *args, **kwargs
        )
        metrics.update(f1_metrics(data_sources, reward_extra_infos_dict))
        return metrics

    def cap_total_steps(self, batches_per_epoch: int, optim_steps_per_step: int = 1) -> None:
        """Cap verl's ``total_training_steps`` at what the data gives (:mod:`.run_length`), in the trainer and in
        the optimiser config verl just wrote it to; warn when the configured count was more."""
        configured = self.config.trainer.get("total_training_steps")
        steps, warning = planned_steps(configured, batches_per_epoch, int(self.config.trainer.total_epochs))
        if warning is None:
            return
        logger.warning(warning)
        print(f"gr_vl_verl: warning: {warning}", flush=True)  # verl's own start-up lines are prints
        self.total_training_steps = steps
        with open_dict(self.config):
            for optim in ("actor_rollout_ref.actor.optim", "critic.optim"):
                if OmegaConf.select(self.config, optim) is not None:
                    OmegaConf.select(self.config, optim).total_training_steps = steps * optim_steps_per_step

    def push_clip_eps(self) -> dict[str, float]:
        """Send this step's loss to every actor rank; return the metrics to log (none if the loss ignores
        the clip range: then nothing is pushed and the workers keep their own loss)."""
        state = self._clip_state()
        if not state.acts:
            return {}
        start = time.perf_counter()
        low, high = state.schedule.eps(int(self.global_steps), int(self.total_training_steps))
        self.actor_rollout_wg.set_loss_fn(make_loss_fn(state.loss_fn_config, with_clip(state.base, low, high)))
        return {METRIC_LOW: low, METRIC_HIGH: high, METRIC_PUSH_SECONDS: time.perf_counter() - start}


class GRRayPPOTrainer(DynamicClipMixin, RayPPOTrainer):
    """verl's legacy ``RayPPOTrainer`` with the dynamic clip (``trainer.use_v1=false``)."""

    def _create_dataloader(self, *args: Any, **kwargs: Any) -> None:
        super()._create_dataloader(*args, **kwargs)
        self.cap_total_steps(len(self.train_dataloader))

    def init_workers(self) -> None:
        super().init_workers()
        self.remember_worker_config()

    def _update_actor(self, batch: DataProto) -> DataProto:
        clip_metrics = self.push_clip_eps()
        output = super()._update_actor(batch)
        output.meta_info["metrics"].update(clip_metrics)
        output.meta_info["metrics"].update(legacy_reward_metrics(batch))
        return output


def legacy_reward_metrics(batch: DataProto) -> dict[str, float]:
    """The reward terms verl's legacy ``fit`` stored in the batch (``reward_extra_keys`` columns)."""
    keys = batch.meta_info.get("reward_extra_keys") or []
    columns = {k: batch.non_tensor_batch[k] for k in keys if k in batch.non_tensor_batch}
    return term_means(columns_to_rows(columns))


class DynamicClipV1Mixin(DynamicClipMixin):
    """The V1 hook: ``PPOTrainer._update_actor(batch, metrics)`` runs once per update, metrics in place."""

    def init(self) -> None:
        super().init()  # type: ignore[misc]
        self.remember_worker_config()

    def _init_dataloader(self) -> None:
        super()._init_dataloader()  # type: ignore[misc]
        # V1 steps the LR scheduler once per local update, parameter_sync_step of them per global step
        self.cap_total_steps(int(self.steps_per_epoch), int(getattr(self, "parameter_sync_step", 1)))

    def _update_actor(self, batch: Any, metrics: dict) -> Any:
        metrics.update(self.push_clip_eps())
        return super()._update_actor(batch, metrics)  # type: ignore[misc]

    def _compute_metrics(self, batch: Any, metrics: dict, *args: Any, **kwargs: Any) -> Any:
        """verl's training metrics plus ``reward/<term>/mean`` from each sample's ``reward_extra_info``."""
        result = super()._compute_metrics(batch, metrics, *args, **kwargs)  # type: ignore[misc]
        import transfer_queue as tq

        fields = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=["extra_fields"])
        column = fields.pop("extra_fields")
        extra = column.tolist() if hasattr(column, "tolist") else list(column)
        infos = [
            (e or {}).get("reward_extra_info") if isinstance(e, dict) else None
            for e, tag in zip(extra, batch.tags, strict=True)
            if not (tag or {}).get("is_padding", False)
        ]
        metrics.update(term_means(infos))
        return result


@cache
def v1_trainer_cls(trainer_mode: str = "sync") -> type:
    """verl's V1 trainer for ``trainer_mode`` (``sync``, ``colocate_async``, ``separate_async`` or a
    registered one) with the dynamic clip and the replay buffer's poll interval
    (:mod:`gr_vl_verl.trainer.replay_poll`). Built on demand (``verl.trainer.ppo.v1`` needs ``transfer_queue``).
    """
    from verl.trainer.ppo.v1 import get_trainer_cls

    base = get_trainer_cls(trainer_mode)
    name = f"GR{base.__name__}"
    return type(name, (DynamicClipV1Mixin, ReplayPollMixin, base), {"__module__": __name__, "__qualname__": name})
