"""One-process stand-ins for verl's GPU trainers, so the whole method runs on a CPU (`gr-vl demo`).

verl's trainers need GPUs (FSDP engines, vLLM rollout servers). What stays real here is everything that decides
the numbers: verl's ``MultiTurnSFTDataset`` (SFT rows, loss mask), the plugin's reward manager as verl's
``load_reward_manager`` builds it, verl's GRPO advantage estimator, and the loss function the dynamic-clip hook
pushes to the actor workers (``partial(ppo_loss, config=...)`` at that step's clip range), called the way verl's
engine calls it: on verl's no-padding layout of the batch, with the policy's log-probs and entropy. What is
stood in for: the FSDP engine (a plain model and AdamW here), the vLLM rollout (``transformers.generate``) and
the Ray worker group (:class:`LocalActor` receives the pushed loss).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gr_vl_verl.trainer.dynamic_clip import DynamicClipMixin


# --------------------------------------------------------------------------------------------------
# Reasoning SFT
# --------------------------------------------------------------------------------------------------
def sft(
    model: Any, sft_parquet: Path, tokenizer: Any, processor: Any, steps: int, lr: float, seed: int
) -> dict[str, Any]:
    """Teacher forcing on verl's ``MultiTurnSFTDataset`` view of the SFT parquet (loss on the answer only)."""
    from omegaconf import OmegaConf
    from verl.utils.dataset.multiturn_sft_dataset import MultiTurnSFTDataset

    cfg = OmegaConf.create(
        {"messages_key": "messages", "image_key": "images", "max_length": 4096, "truncation": "error",
         "pad_mode": "no_padding"}
    )  # fmt: skip
    dataset = MultiTurnSFTDataset(str(sft_parquet), tokenizer, cfg, processor)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    losses = []
    model.train()
    for _ in range(steps):
        item = dataset[int(torch.randint(len(dataset), (1,), generator=gen))]
        ids, mask = item["input_ids"][None], item["loss_mask"][None].bool()
        logits = model(input_ids=ids, **item.get("multi_modal_inputs", {})).logits[:, :-1].float()
        target, target_mask = ids[:, 1:], mask[:, 1:]
        loss = torch.nn.functional.cross_entropy(logits[target_mask], target[target_mask])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    window = max(1, min(10, steps // 4))
    return {
        "rows": len(dataset),
        "steps": steps,
        "loss_first": sum(losses[:window]) / window,
        "loss_last": sum(losses[-window:]) / window,
    }


# --------------------------------------------------------------------------------------------------
# Rollout (stand-in for vLLM)
# --------------------------------------------------------------------------------------------------
VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")


@dataclass
class Trajectory:
    """One sampled answer: token ids, the vision inputs of its prompt, and the policy's log-probs at sampling."""

    prompt_ids: torch.Tensor  # (P,)
    response_ids: torch.Tensor  # (R,), R >= 1
    vision: dict[str, torch.Tensor]
    old_log_probs: torch.Tensor | None = None


def rollout(model: Any, processor: Any, request: Any, n: int, temperature: float, max_new_tokens: int):
    """``n`` sampled answers to one prompt (a ``generation.prompts.Request``, built as verl builds it)."""
    tokenizer = processor.tokenizer
    enc = processor(text=[request.prompt], images=request.images or None, return_tensors="pt")
    # A real checkpoint never writes vision placeholders, a random one might; the policy's forward pass would
    # then expect image features for them. vLLM's rollout masks nothing here, so this is a stand-in detail.
    vision_tokens = [tokenizer.convert_tokens_to_ids(t) for t in VISION_TOKENS]
    vision = {k: enc[k] for k in ("pixel_values", "image_grid_thw") if k in enc}
    with torch.no_grad():
        out = model.generate(
            **enc,
            do_sample=True,
            temperature=temperature,
            top_p=1.0,
            top_k=0,
            max_new_tokens=max_new_tokens,
            num_return_sequences=n,
            pad_token_id=tokenizer.pad_token_id,
            suppress_tokens=[t for t in vision_tokens if t is not None and t >= 0],
        )
    prompt_ids = enc["input_ids"][0]
    eos = tokenizer.eos_token_id
    trajectories = []
    for seq in out:
        resp = seq[prompt_ids.numel() :].tolist()
        if eos in resp:  # keep the end-of-sequence token, as verl's rollout does; drop the padding after it
            resp = resp[: resp.index(eos) + 1]
        resp = [t for t in resp if t != tokenizer.pad_token_id] or [eos]
        trajectories.append(Trajectory(prompt_ids, torch.tensor(resp), vision))
    return trajectories


# --------------------------------------------------------------------------------------------------
# The actor (stand-in for the worker group and its FSDP engine)
# --------------------------------------------------------------------------------------------------
class LocalActor:
    """Holds the policy and the loss the trainer pushes; updates the way verl's engine runs a mini-batch."""

    def __init__(self, model: Any, lr: float, grad_clip: float = 1.0) -> None:
        self.model = model
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
        self.grad_clip = grad_clip
        self.loss_fn: Any = None

    def set_loss_fn(self, loss_fn: Any) -> None:
        """What ``actor_rollout_wg.set_loss_fn`` does on every rank: replace the loss of the next updates."""
        self.loss_fn = loss_fn

    def token_stats(self, t: Trajectory) -> tuple[torch.Tensor, torch.Tensor]:
        """Per position of the whole sequence: log-prob of the next token and the entropy, shifted left by one
        (the engine's no-padding output layout; the last position is padding)."""
        ids = torch.cat([t.prompt_ids, t.response_ids])[None]
        logits = self.model(input_ids=ids, attention_mask=torch.ones_like(ids), **t.vision).logits[0].float()
        logp_all = torch.log_softmax(logits, -1)
        logp = logp_all[:-1].gather(-1, ids[0, 1:, None])[:, 0]
        entropy = -(logp_all.exp() * logp_all).sum(-1)[:-1]
        pad = torch.zeros(1)
        return torch.cat([logp, pad]), torch.cat([entropy, pad])

    def response_log_probs(self, t: Trajectory) -> torch.Tensor:
        with torch.no_grad():
            logp, _ = self.token_stats(t)
        p, r = t.prompt_ids.numel(), t.response_ids.numel()
        return logp[p - 1 : p + r - 1]

    def update(self, batch: list[Trajectory], advantages: torch.Tensor, mini_batch: int) -> dict[str, float]:
        """One PPO epoch over mini-batches of ``batch`` with the pushed loss; returns mean metrics."""
        if self.loss_fn is None:
            raise RuntimeError("no loss pushed: the trainer sets it before every update")
        self.model.train()
        metrics: dict[str, list[float]] = {}
        for start in range(0, len(batch), mini_batch):
            rows = list(range(start, min(start + mini_batch, len(batch))))
            data = no_padding_batch([batch[i] for i in rows], advantages[rows])
            stats = [self.token_stats(batch[i]) for i in rows]
            model_output = {"log_probs": torch.cat([s[0] for s in stats]), "entropy": torch.cat([s[1] for s in stats])}
            loss, loss_metrics = self.loss_fn(model_output=model_output, data=data, dp_group=None)
            self.optimizer.zero_grad()
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
            self.optimizer.step()
            values = {"actor/grad_norm": float(grad_norm), **_plain(loss_metrics)}
            for key, value in values.items():
                metrics.setdefault(key, []).append(value)
        self.model.eval()
        return {k: sum(v) / len(v) for k, v in metrics.items() if v and all(map(math.isfinite, v))}


def no_padding_batch(batch: list[Trajectory], advantages: torch.Tensor) -> Any:
    """The mini-batch as verl's engine hands it to the loss: verl's own left/right-padded ``DataProto`` turned
    into its no-padding ``TensorDict`` by verl's ``left_right_2_no_padding``, with the engine's batch info."""
    from verl import DataProto
    from verl.utils import tensordict_utils as tu
    from verl.workers.utils.padding import left_right_2_no_padding

    p_max = max(t.prompt_ids.numel() for t in batch)
    r_max = max(t.response_ids.numel() for t in batch)
    bs = len(batch)
    prompts = torch.zeros(bs, p_max, dtype=torch.long)
    responses = torch.zeros(bs, r_max, dtype=torch.long)
    attention = torch.zeros(bs, p_max + r_max, dtype=torch.long)
    old = torch.zeros(bs, r_max)
    for i, t in enumerate(batch):
        p, r = t.prompt_ids.numel(), t.response_ids.numel()
        prompts[i, p_max - p :] = t.prompt_ids
        responses[i, :r] = t.response_ids
        attention[i, p_max - p : p_max + r] = 1
        old[i, :r] = t.old_log_probs
    response_mask = attention[:, p_max:]
    data = DataProto.from_dict(
        tensors={
            "input_ids": torch.cat([prompts, responses], dim=1),
            "prompts": prompts,
            "responses": responses,
            "attention_mask": attention,
            "position_ids": (attention.cumsum(-1) - 1).clamp(min=0),
            "response_mask": response_mask,
            "old_log_probs": old,
            "advantages": advantages[:, :r_max] * response_mask,
        },
        meta_info={},
    )
    td = left_right_2_no_padding(data.to_tensordict())
    tu.assign_non_tensor(td, batch_num_tokens=int(response_mask.sum()), dp_size=1, global_batch_size=bs)
    return td


def _plain(metrics: dict[str, Any]) -> dict[str, float]:
    """verl's loss metrics (``Metric`` objects, tensors or floats) as floats."""
    out = {}
    for key, value in metrics.items():
        if hasattr(value, "aggregate"):
            value = value.aggregate()
        if isinstance(value, list | tuple):
            value = sum(value) / len(value) if value else float("nan")
        out[key] = float(value.item() if hasattr(value, "item") else value)
    return out


# --------------------------------------------------------------------------------------------------
# GRPO steps
# --------------------------------------------------------------------------------------------------
class LocalTrainer(DynamicClipMixin):
    """The trainer state the dynamic-clip hook reads (config, step, total steps, the worker group), no more."""

    def __init__(self, config: Any, total_steps: int, actor: LocalActor) -> None:
        self.config = config
        self.total_training_steps = total_steps
        self.actor_rollout_wg = actor
        self.global_steps = 0


def grpo(
    model: Any,
    processor: Any,
    rows: list[dict[str, Any]],
    config: Any,
    *,
    steps: int,
    lr: float,
    seed: int,
    log: Any = print,
) -> list[dict[str, float]]:
    """``steps`` GRPO steps on RL parquet ``rows`` with the batch sizes, rollout settings and reward of
    ``config`` (the plugin's trainer config); one PPO epoch per step, as the method. Returns a record per step."""
    import numpy as np
    from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage
    from verl.trainer.ppo.reward import load_reward_manager

    from gr_vl_verl.generation.prompts import build_request

    prompts, n = int(config.data.train_batch_size), int(config.actor_rollout_ref.rollout.n)
    rollout_cfg = config.actor_rollout_ref.rollout
    reward = load_reward_manager(config, processor.tokenizer)  # as each of verl's RewardLoopWorkers builds it
    actor = LocalActor(model, lr, grad_clip=float(config.actor_rollout_ref.actor.optim.clip_grad))
    trainer = LocalTrainer(config, steps, actor)
    mini_batch = int(config.actor_rollout_ref.actor.ppo_mini_batch_size) * n  # verl counts prompts, then x n
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    history = []
    for step in range(1, steps + 1):
        trainer.global_steps = step
        chosen = rng.choice(len(rows), size=prompts, replace=len(rows) < prompts)
        batch, scores, infos, uids = [], [], [], []
        for uid, index in enumerate(chosen):
            row = rows[int(index)]
            request = build_request({"id": row["extra_info"]["id"], **row}, processor)
            for t in rollout(
                model, processor, request, n, float(rollout_cfg.temperature), int(rollout_cfg.response_length)
            ):
                t.old_log_probs = actor.response_log_probs(t)
                result = reward.loop.run_until_complete(reward.run_single(_reward_item(t, row)))
                batch.append(t)
                scores.append(result["reward_score"])
                infos.append(result["reward_extra_info"])
                uids.append(uid)
        width = max(t.response_ids.numel() for t in batch)
        mask = torch.zeros(len(batch), width)
        token_rewards = torch.zeros(len(batch), width)
        for i, t in enumerate(batch):
            length = t.response_ids.numel()
            mask[i, :length] = 1
            token_rewards[i, length - 1] = scores[i]  # verl's reward loop puts the score on the last token
        advantages, _ = compute_grpo_outcome_advantage(token_rewards, mask, np.array(uids))
        record: dict[str, float] = {"step": step, **trainer.push_clip_eps()}
        record.update(actor.update(batch, advantages, mini_batch))
        record["reward/score"] = float(np.mean(scores))
        for key in ("r_safety", "format", "length"):
            record[f"reward/{key}"] = float(np.mean([info[key] for info in infos]))
        history.append(record)
        log(record)
    return history


def _reward_item(t: Trajectory, row: dict[str, Any]) -> Any:
    """One trajectory as verl's agent loop hands it to ``run_single`` (unpadded, attention mask all ones)."""
    import numpy as np
    from verl import DataProto

    length = t.prompt_ids.numel() + t.response_ids.numel()
    return DataProto.from_dict(
        tensors={
            "prompts": t.prompt_ids[None],
            "responses": t.response_ids[None],
            "attention_mask": torch.ones(1, length, dtype=torch.long),
        },
        non_tensors={
            "data_source": np.array([row["data_source"]], dtype=object),
            "reward_model": np.array([row["reward_model"]], dtype=object),
            "extra_info": np.array([row["extra_info"]], dtype=object),
        },
    )
