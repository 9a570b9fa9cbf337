"""Run the pipeline end to end on the bundled sample corpus and a tiny model, on a CPU.

verl's distributed trainer needs GPUs (vLLM rollout, FSDP), so this runs the same pieces in one process:

1. builds a tiny Qwen2.5-VL offline (tokenizer, processor, random weights);
2. ``gr-vl prep`` turns the bundled GuardReasoner-VLTrain sample into SFT and RL parquets;
3. verl's ``RLHFDataset`` loads the RL parquet with the tiny processor (images included);
4. reasoning SFT: a few hundred teacher-forcing steps on verl's ``MultiTurnSFTDataset`` view of the SFT
   parquet, so the tiny model learns the answer format;
5. GRPO steps: sample ``k`` answers per prompt, score them with :class:`GuardRewardManager` (loaded by verl's
   ``load_reward_manager`` from the plugin's trainer config), turn scores into advantages with verl's GRPO
   estimator, and update the model with verl's policy loss, using the loss configuration that the
   dynamic-clip hook pushes to the actor each step (here a local stand-in for the GPU worker group).

The numbers are not meaningful (a random 2-layer model); the demo shows every component working together.
Outputs: ``OUT/model``, ``OUT/data/*.parquet``, ``OUT/demo_summary.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from importlib.resources import files
from pathlib import Path
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("outputs/demo"), help="output folder")
    parser.add_argument("--steps", type=int, default=3, help="GRPO steps")
    parser.add_argument("--prompts", type=int, default=4, help="prompts per step")
    parser.add_argument("--n", type=int, default=4, help="answers sampled per prompt (GRPO group size)")
    parser.add_argument("--max-new-tokens", type=int, default=384, help="also the rollout max response length")
    parser.add_argument("--sft-steps", type=int, default=200, help="reasoning-SFT steps before GRPO")
    parser.add_argument("--sft-lr", type=float, default=3e-3)
    parser.add_argument("--lr", type=float, default=1e-4, help="GRPO learning rate")
    parser.add_argument("--seed", type=int, default=0)


class LocalActor:
    """Single-process stand-in for verl's actor worker group: holds the model and the pushed loss."""

    def __init__(self, model: Any, lr: float) -> None:
        import torch

        self.model = model
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
        self.loss_fn: Any = None

    def set_loss_fn(self, loss_fn: Any) -> None:  # the call the dynamic-clip hook makes on the workers
        self.loss_fn = loss_fn

    def log_probs(self, sample: dict) -> Any:
        import torch

        ids = torch.cat([sample["prompt_ids"], sample["response_ids"]])[None]
        out = self.model(input_ids=ids, attention_mask=torch.ones_like(ids), **sample["vision"])
        logits = out.logits[0, sample["prompt_ids"].numel() - 1 : -1].float()
        return torch.log_softmax(logits, -1).gather(-1, sample["response_ids"][:, None])[:, 0]

    def update(self, samples: list[dict], advantages: Any, mini_batch: int) -> dict[str, float]:
        """One PPO epoch over mini-batches with verl's policy loss at the pushed clip range."""
        import torch
        from verl.trainer.ppo.core_algos import get_policy_loss_fn

        config = self.loss_fn.keywords["config"]  # the ActorConfig the workers would use this step
        policy_loss = get_policy_loss_fn(config.policy_loss.get("loss_mode", "vanilla"))
        width = max(s["response_ids"].numel() for s in samples)
        metrics: dict[str, list[float]] = {}
        for start in range(0, len(samples), mini_batch):
            chunk = list(range(start, min(start + mini_batch, len(samples))))
            logp = torch.zeros(len(chunk), width)
            old = torch.zeros(len(chunk), width)
            mask = torch.zeros(len(chunk), width, dtype=torch.bool)
            for row, i in enumerate(chunk):
                n = samples[i]["response_ids"].numel()
                logp[row, :n] = self.log_probs(samples[i])
                old[row, :n] = samples[i]["old_log_probs"]
                mask[row, :n] = True
            loss, m = policy_loss(
                old_log_prob=old,
                log_prob=logp,
                advantages=advantages[chunk, :width],
                response_mask=mask,
                loss_agg_mode=config.loss_agg_mode,
                config=config,
            )
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            for k, v in {"actor/pg_loss": loss.item(), **m}.items():
                metrics.setdefault(k, []).append(float(v.item() if hasattr(v, "item") else v))
        return {k: sum(v) / len(v) for k, v in metrics.items()}


def reasoning_sft(model: Any, sft_path: Path, tokenizer: Any, processor: Any, steps: int, lr: float, seed: int):
    """Teacher forcing on verl's ``MultiTurnSFTDataset`` view of the SFT parquet (loss on the answer only)."""
    import torch
    from omegaconf import OmegaConf
    from verl.utils.dataset.multiturn_sft_dataset import MultiTurnSFTDataset

    cfg = OmegaConf.create(
        {"messages_key": "messages", "image_key": "images", "max_length": 4096, "truncation": "error",
         "pad_mode": "no_padding"}
    )  # fmt: skip
    dataset = MultiTurnSFTDataset(str(sft_path), tokenizer, cfg, processor)
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
    return {
        "sft/rows": len(dataset),
        "sft/loss_first10": sum(losses[:10]) / 10,
        "sft/loss_last10": sum(losses[-10:]) / 10,
    }


def _prep_data(out: Path) -> dict[str, Path]:
    from gr_vl_verl.commands import prep

    root = Path(str(files("gr_vl_verl") / "sample_data" / "GuardReasoner-VLTrain"))
    args = ["vltrain", "--data-root", str(root), "--out", str(out), "--val-fraction", "0.25", "--no-progress"]
    # small images: the tiny processor caps pixels anyway
    args += ["--min-pixels", str(28 * 28), "--max-pixels", str(112 * 112)]
    parser = argparse.ArgumentParser(prog="gr-vl prep")
    prep.add_arguments(parser)
    prep.run(parser.parse_args(args))  # a failure raises, and `gr-vl` reports it
    return {"rl": out / "rl_train.parquet", "sft": out / "sft_train.parquet"}


def _trainer_config(steps: int, mini_batch: int, batch: int, n: int, max_new_tokens: int) -> Any:
    from hydra import compose, initialize_config_module

    overrides = [
        "algorithm.adv_estimator=grpo",
        f"data.train_batch_size={batch}",
        f"data.max_response_length={max_new_tokens}",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={mini_batch}",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=1",
        f"actor_rollout_ref.rollout.n={n}",
        "actor_rollout_ref.actor.use_kl_loss=False",
        f"gr_vl.clip.total_steps={steps}",
    ]
    with initialize_config_module("gr_vl_verl.trainer.config", version_base=None):
        return compose("gr_vl_trainer", overrides=overrides)


def _messages_and_images(raw_prompt: list[dict]) -> tuple[list[dict], list[Any]]:
    from io import BytesIO

    from PIL import Image

    images = []
    for message in raw_prompt:
        content = message["content"]
        if isinstance(content, str):
            continue
        for part in content:
            if part.get("type") == "image":
                img = part.get("image")
                images.append(img if img is not None else Image.open(BytesIO(part["bytes"])).convert("RGB"))
    return raw_prompt, images


def run(args: argparse.Namespace) -> int:
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import numpy as np
    import torch
    from omegaconf import OmegaConf
    from verl import DataProto
    from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage
    from verl.trainer.ppo.reward import load_reward_manager
    from verl.utils import hf_processor, hf_tokenizer
    from verl.utils.dataset.rl_dataset import RLHFDataset

    from gr_vl_verl.protocol import parse_answer
    from gr_vl_verl.tiny import build_tiny_qwen2_5_vl
    from gr_vl_verl.trainer.dynamic_clip import DynamicClipMixin

    t0 = time.perf_counter()
    out: Path = args.out
    torch.manual_seed(args.seed)
    print(f"[1/5] tiny Qwen2.5-VL -> {out / 'model'}")
    model_dir = build_tiny_qwen2_5_vl(out / "model", seed=args.seed)
    tokenizer, processor = hf_tokenizer(str(model_dir)), hf_processor(str(model_dir))

    print(f"[2/5] gr-vl prep on the bundled sample corpus -> {out / 'data'}")
    paths = _prep_data(out / "data")

    print("[3/5] verl RLHFDataset on the RL parquet")
    data_cfg = OmegaConf.create(
        {
            "prompt_key": "prompt",
            "image_key": "images",
            "max_prompt_length": 4096,
            "filter_overlong_prompts": True,
            "cache_dir": str(out / "cache"),
            "filter_overlong_prompts_workers": None,
        }
    )
    dataset = RLHFDataset([str(paths["rl"])], tokenizer, data_cfg, processor)
    print(f"      {len(dataset)} rows")

    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(model_dir)
    print(f"[4/5] reasoning SFT: {args.sft_steps} steps on verl's MultiTurnSFTDataset view of the SFT parquet")
    sft = reasoning_sft(model, paths["sft"], tokenizer, processor, args.sft_steps, args.sft_lr, args.seed)
    print(f"      loss {sft['sft/loss_first10']:.2f} -> {sft['sft/loss_last10']:.2f} over {sft['sft/rows']} rows")
    batch = args.prompts
    mini_batch = max(1, batch // 2)  # two updates per step, so the clip range has something to clip
    config = _trainer_config(args.steps, mini_batch, batch, args.n, args.max_new_tokens)
    reward = load_reward_manager(config, tokenizer)
    actor = LocalActor(model, args.lr)

    class DemoTrainer(DynamicClipMixin):  # verl's trainer state the hook reads, nothing else
        pass

    trainer = DemoTrainer()
    trainer.config, trainer.total_training_steps, trainer.actor_rollout_wg = config, args.steps, actor

    print(f"[5/5] {args.steps} GRPO steps: {batch} prompts x {args.n} answers, mini-batch {mini_batch} prompts")
    history = []
    rng = np.random.default_rng(args.seed)
    for step in range(1, args.steps + 1):
        trainer.global_steps = step
        rows = [dataset[int(i)] for i in rng.choice(len(dataset), size=batch, replace=len(dataset) < batch)]
        samples, scores, uids, infos = [], [], [], []
        for uid, row in enumerate(rows):
            messages, images = _messages_and_images(row["raw_prompt"])
            text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            enc = processor(text=[text], images=images or None, return_tensors="pt")
            vision = {k: enc[k] for k in ("pixel_values", "image_grid_thw") if k in enc}
            with torch.no_grad():
                gen = model.generate(
                    **enc,
                    do_sample=True,
                    temperature=1.2,
                    top_p=1.0,
                    max_new_tokens=args.max_new_tokens,
                    num_return_sequences=args.n,
                    pad_token_id=tokenizer.pad_token_id,
                )
            prompt_ids = enc["input_ids"][0]
            for seq in gen:
                resp = seq[prompt_ids.numel() :]
                resp = resp[resp != tokenizer.pad_token_id] if (resp == tokenizer.pad_token_id).any() else resp
                if resp.numel() == 0:
                    resp = torch.tensor([tokenizer.eos_token_id])
                item = DataProto.from_dict(
                    tensors={
                        "prompts": prompt_ids[None],
                        "responses": resp[None],
                        "attention_mask": torch.ones(1, prompt_ids.numel() + resp.numel(), dtype=torch.long),
                    },
                    non_tensors={
                        "data_source": np.array([row["data_source"]], dtype=object),
                        "reward_model": np.array([row["reward_model"]], dtype=object),
                        "extra_info": np.array([row["extra_info"]], dtype=object),
                    },
                )
                result = reward.loop.run_until_complete(reward.run_single(item))
                sample = {"prompt_ids": prompt_ids, "response_ids": resp, "vision": vision}
                with torch.no_grad():
                    sample["old_log_probs"] = actor.log_probs(sample)
                samples.append(sample)
                scores.append(result["reward_score"])
                infos.append(result["reward_extra_info"])
                uids.append(uid)
        width = max(s["response_ids"].numel() for s in samples)
        mask = torch.zeros(len(samples), width)
        token_rewards = torch.zeros(len(samples), width)
        for i, s in enumerate(samples):
            n = s["response_ids"].numel()
            mask[i, :n] = 1
            token_rewards[i, n - 1] = scores[i]  # the reward loop puts the score on the last valid token
        advantages, _ = compute_grpo_outcome_advantage(token_rewards, mask, np.array(uids))
        clip_metrics = trainer.push_clip_eps()  # exactly what the trainer sends the workers each step
        actor_metrics = actor.update(samples, advantages, mini_batch * args.n)
        record = {
            "step": step,
            **clip_metrics,
            **actor_metrics,
            "reward/score_mean": float(np.mean(scores)),
            **{f"reward/{k}": float(np.mean([i[k] for i in infos])) for k in ("r_safety", "format", "length")},
        }
        history.append(record)
        print(
            f"      step {step}: eps {clip_metrics['actor/clip_eps_low']:.3f}  "
            f"score {record['reward/score_mean']:.1f}  r_safety {record['reward/r_safety']:.2f}  "
            f"format {record['reward/format']:.2f}  clipfrac {actor_metrics.get('actor/pg_clipfrac', 0.0):.3f}  "
            f"pg_loss {actor_metrics['actor/pg_loss']:.4f}"
        )

    example = tokenizer.decode(samples[0]["response_ids"], skip_special_tokens=True)
    summary = {
        "model": str(model_dir),
        "data": {k: str(v) for k, v in paths.items()},
        "rows": len(dataset),
        "sft": sft,
        "history": history,
        "example_output": example[:300],
        "example_parsed": parse_answer(example)._asdict(),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    (out / "demo_summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(f"done in {summary['seconds']} s; summary: {out / 'demo_summary.json'}")
    return 0
