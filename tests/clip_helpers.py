"""Shared pieces of the dynamic-clip tests: configs composed from the plugin's trainer yaml, a batch whose
importance ratios straddle 1 +- eps at every step of the schedule, its hand-computed PPO loss, and trainers
built as verl's CPU tests build them (``__new__`` plus the attributes the hook reads)."""

from __future__ import annotations

import cloudpickle
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from tensordict import TensorDict
from verl import DataProto
from verl.utils import tensordict_utils as tu
from verl.utils.metric.utils import Metric
from verl.workers.utils.padding import left_right_2_no_padding

from gr_vl_verl.trainer.dynamic_clip import GRRayPPOTrainer, v1_trainer_cls

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
    """Stands in for ``actor_rollout_wg`` (GPU workers): records pushes and runs the loss like the engine.

    ``initial_loss_fn`` is the loss the worker built in ``init_model``; it runs until a loss is pushed.
    """

    def __init__(self, new_log_probs: torch.Tensor, v1_data: TensorDict | None = None, initial_loss_fn=None) -> None:
        self.new_log_probs = new_log_probs
        self.v1_data = v1_data
        self.initial_loss_fn = initial_loss_fn
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
        loss_fn = self.loss_fns[-1] if self.loss_fns else self.initial_loss_fn
        loss, metrics = call_like_engine(loss_fn, data, self.new_log_probs)
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
