"""What the dynamic clip costs per training step, against the loss it changes (CPU, verl 0.9.1).

Per step the driver computes eps(step), builds ``partial(ppo_loss, config=<ActorConfig with the new clip>)``
and sends it to the workers; Ray pickles it with cloudpickle and each worker unpickles it. That cost is
measured here against verl's own ``ppo_loss`` (vanilla policy loss, token-mean) called the way the engine
calls it, on one micro-batch of 512 sequences x 3072 response tokens, with verl's static configuration
(the loss the worker builds at start-up) as the baseline, measured in the same run.

A real step of the paper's recipe computes the loss over 512 x 16 = 8192 sequences, so the per-step share
printed here (one 512-sequence chunk) overstates the overhead about 16-fold. Not a timed test: run it with
``python bench/clip_overhead.py`` (``make bench``).
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

import cloudpickle
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from tensordict import TensorDict
from verl.utils import tensordict_utils as tu
from verl.utils.config import omega_conf_to_dataclass
from verl.workers.utils.losses import ppo_loss

from gr_vl_verl.trainer.dynamic_clip import base_actor_config, clip_schedule_from, make_loss_fn, with_clip

BATCH, PROMPT, RESPONSE = 512, 8, 3072
TOTAL_STEPS = 23


def config():
    with initialize_config_module("gr_vl_verl.trainer.config", version_base=None):
        cfg = compose(
            "gr_vl_trainer",
            overrides=[
                "algorithm.adv_estimator=grpo",
                "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4",
            ],
        )
    OmegaConf.resolve(cfg)
    return cfg


def micro_batch(batch: int = BATCH) -> tuple[TensorDict, dict]:
    """A padded micro-batch as the legacy trainer hands it to the engine, and the model's log-probs."""
    gen = torch.Generator().manual_seed(0)
    resp_len = torch.randint(RESPONSE // 2, RESPONSE + 1, (batch,), generator=gen)
    response_mask = (torch.arange(RESPONSE).unsqueeze(0) < resp_len.unsqueeze(1)).long()
    attention_mask = torch.cat([torch.ones(batch, PROMPT, dtype=torch.long), response_mask], dim=1)
    old = -torch.rand(batch, RESPONSE, generator=gen) * 2
    new_flat = -torch.rand(int(attention_mask.sum()), generator=gen) * 2  # all valid tokens, no padding
    td = TensorDict(
        {
            "prompts": torch.ones(batch, PROMPT, dtype=torch.long),
            "responses": torch.ones(batch, RESPONSE, dtype=torch.long),
            "attention_mask": attention_mask,
            "response_mask": response_mask,
            "loss_mask": response_mask,
            "old_log_probs": old,
            "advantages": torch.randn(batch, 1, generator=gen).expand(batch, RESPONSE) * response_mask,
        },
        batch_size=[batch],
    )
    tu.assign_non_tensor(td, dp_size=1, batch_num_tokens=int(response_mask.sum()), global_batch_size=batch)
    return td, {"log_probs": new_flat}


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run of a few seconds (CI runs it): tiny sizes, the numbers mean nothing",
    )
    args = parser.parse_args()
    pushes, rounds = (20, 2) if args.quick else (300, 7)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    cfg = config()
    td, model_output = micro_batch(32 if args.quick else BATCH)
    schedule = clip_schedule_from(cfg)

    # Baseline: the loss the worker builds at start-up (static clip range), called like the engine calls it.
    static_fn = partial(ppo_loss, config=omega_conf_to_dataclass(cfg.actor_rollout_ref.actor))

    # The dynamic clip's per-step work on the driver and the worker.
    base = base_actor_config(cfg)  # converted once per run, not per step
    step = iter(range(1, 10**9))

    def push() -> None:
        low, high = schedule.eps((next(step) - 1) % TOTAL_STEPS + 1, TOTAL_STEPS)
        fn = make_loss_fn(cfg, with_clip(base, low, high))
        cloudpickle.loads(cloudpickle.dumps(fn))  # what Ray does on the way to each worker

    overhead = median_seconds(push, pushes)
    low, high = schedule.eps(12, TOTAL_STEPS)
    dynamic_fn = cloudpickle.loads(cloudpickle.dumps(make_loss_fn(cfg, with_clip(base, low, high))))
    # Alternate the two losses (after a warm-up) so neither gets the cold caches.
    static_times, dynamic_times = [], []
    for fn in (static_fn, dynamic_fn):
        fn(model_output=model_output, data=td, dp_group=None)
    for _ in range(rounds):
        static_times.append(median_seconds(lambda: static_fn(model_output=model_output, data=td, dp_group=None), 1))
        dynamic_times.append(median_seconds(lambda: dynamic_fn(model_output=model_output, data=td, dp_group=None), 1))
    static_loss, dynamic_loss = statistics.median(static_times), statistics.median(dynamic_times)
    one_time = median_seconds(lambda: base_actor_config(cfg), 3)

    print(f"micro-batch: {td.batch_size[0]} sequences x {RESPONSE} response tokens, {int(td['loss_mask'].sum())} valid")
    print(f"static loss (verl, clip 0.2)         : {static_loss * 1e3:9.2f} ms")
    print(f"dynamic loss (pushed, eps(12/23))    : {dynamic_loss * 1e3:9.2f} ms")
    print(f"per-step push: eps + config + pickle : {overhead * 1e3:9.3f} ms")
    print(f"one-time ActorConfig conversion      : {one_time * 1e3:9.2f} ms (first step only)")
    print(f"push / static loss                   : {overhead / static_loss * 100:9.3f} % (target < 1 %)")
    print(f"(dynamic loss + push) / static loss  : {(dynamic_loss + overhead) / static_loss:9.3f}x")


if __name__ == "__main__":
    main()
