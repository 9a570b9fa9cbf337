"""Run the whole method on the bundled sample data and a tiny model, on this machine's CPUs.

Every stage of GuardReasoner-VL, in order, each through the same code a real run uses:

1. a tiny Qwen2.5-VL built offline (tokenizer, processor, random weights);
2. ``gr-vl prep``: the bundled GuardReasoner-VLTrain / VLTest samples into SFT, RL and eval parquets;
3. reasoning SFT on verl's ``MultiTurnSFTDataset`` (a one-process stand-in for verl's FSDP SFT trainer);
4. ``gr-vl mine --model``: k answers per RL row through the Ray Data generation pipeline, hard rows kept;
5. ``gr-vl augment``: safety-aware concatenation up to 20 % of the RL training rows;
6. GRPO steps: the plugin's reward manager, verl's GRPO advantages, and the loss the dynamic-clip hook pushes
   (verl's ``ppo_loss`` at that step's clip range) called as verl's engine calls it (``trainer/local.py``);
7. ``gr-vl eval`` of the SFT and the GRPO model: greedy generation, predictions, F1 report;
8. ``gr-vl score``: both models side by side (report.md, report.json, report.csv, two charts).

What stands in for a GPU cluster: the FSDP engines (a plain model and AdamW), the vLLM rollout and generation
(``transformers.generate``) and the Ray worker groups. The numbers mean nothing (a random 2-layer model trained for
a minute); the demo shows every component working together. Outputs under ``--out``; ``demo_summary.json`` lists
every artifact and the time of each stage.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gr_vl_verl.atomic import atomic_write

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data"
# The tiny processor's pixel bounds (gr_vl_verl.tiny): images of a few tokens. The demo's RL data and mining use
# them in place of the RL bounds; evaluation keeps the released evaluator's (the sample images lie inside them).
SMALL_IMAGES = ["--min-pixels", str(28 * 28), "--max-pixels", str(112 * 112)]


STAND_INS = (
    "As in verl's trainer: the datasets, the reward manager, GRPO advantages, the pushed ppo_loss and its clip range.\n"
    "Stood in for GPUs: FSDP engines (one model + AdamW), vLLM (transformers.generate), Ray worker groups."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("outputs/demo"), help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sft-steps", type=int, default=200, help="reasoning-SFT steps (default %(default)s)")
    parser.add_argument("--sft-lr", type=float, default=3e-3, help="SFT learning rate (tiny model)")
    parser.add_argument("--k", type=int, default=4, help="answers per row when mining (default %(default)s)")
    parser.add_argument("--steps", type=int, default=3, help="GRPO steps (default %(default)s)")
    parser.add_argument("--prompts", type=int, default=4, help="prompts per GRPO step (default %(default)s)")
    parser.add_argument("--n", type=int, default=4, help="answers per prompt, the GRPO group (default %(default)s)")
    parser.add_argument("--lr", type=float, default=1e-4, help="GRPO learning rate (tiny model; the paper: 1e-6)")
    parser.add_argument(
        "--max-new-tokens", type=int, default=256, help="answer length in every stage (default %(default)s)"
    )


class Demo:
    """The stages, their timings and their artifacts."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Path(args.out)
        self.models = self.out / "models"
        self.data = self.out / "data"
        self.mined = self.out / "mined"
        self.summary: dict[str, Any] = {"stages": {}, "artifacts": {}}

    # -- stages -------------------------------------------------------------------------------------
    def build_model(self) -> str:
        from gr_vl_verl.tiny import build_tiny_qwen2_5_vl

        base = build_tiny_qwen2_5_vl(self.models / "base", seed=self.args.seed)
        self.artifact("base model", base)
        return "random weights, 2 layers, hidden 64"

    def prep(self) -> str:
        train = SAMPLE / "GuardReasoner-VLTrain"
        bench = SAMPLE / "GuardReasoner-VLTest"
        sft_images = ["--sft-min-pixels", str(28 * 28), "--sft-max-pixels", str(112 * 112)]
        command("prep", ["vltrain", "--data-root", str(train), "--out", str(self.data), "--no-progress",
                         *sft_images, *SMALL_IMAGES])  # fmt: skip
        command("prep", ["vltest", "--benchmark-dir", str(bench / "benchmark"), "--image-dataset",
                         str(bench / "images"), "--out", str(self.data), "--no-progress", *SMALL_IMAGES])  # fmt: skip
        for name in ("sft_train.parquet", "rl_train.parquet", "eval.parquet"):
            self.artifact(name, self.data / name)
        return f"SFT {rows(self.data / 'sft_train.parquet')}, RL {rows(self.data / 'rl_train.parquet')}, " + (
            f"eval {rows(self.data / 'eval.parquet')} rows"
        )

    def sft(self) -> str:
        from transformers import AutoModelForImageTextToText
        from verl.utils import hf_processor, hf_tokenizer

        from gr_vl_verl.trainer.local import sft

        base = self.models / "base"
        tokenizer, processor = hf_tokenizer(str(base)), hf_processor(str(base))
        model = AutoModelForImageTextToText.from_pretrained(base)
        a = self.args
        result = sft(model, self.data / "sft_train.parquet", tokenizer, processor, a.sft_steps, a.sft_lr, a.seed)
        save_model(model, processor, self.models / "sft")
        self.summary["sft"] = result
        self.artifact("R-SFT model", self.models / "sft")
        loss = f"loss {result['loss_first']:.2f} -> {result['loss_last']:.2f}"
        return f"{result['steps']} steps on {result['rows']} rows, {loss}"

    def mine(self) -> str:
        a = self.args
        command("mine", ["--data", str(self.data / "rl_train.parquet"), "--model", str(self.models / "sft"),
                         "--out", str(self.mined), "--k", str(a.k), "--sample-num", "all", "--val-fraction", "0.25",
                         "--seed", str(a.seed), "--backend", "transformers", "--max-tokens", str(a.max_new_tokens),
                         "--no-progress", *SMALL_IMAGES])  # fmt: skip
        stats = json.loads((self.mined / "mining_stats.json").read_text())
        self.summary["mining"] = stats["totals"]
        self.artifact("generations (mining)", self.mined / "generations")
        self.artifact("mined RL data", self.mined / "rl_train.parquet")
        return (
            f"right answers per row {stats['totals']['histogram']}; kept {stats['totals']['kept']} of "
            f"{stats['totals']['rows']}"
        )

    def augment(self) -> str:
        argv = ["--data", str(self.mined / "rl_train.parquet"), "--out", str(self.rl_train), "--ratio", "0.2"]
        command("augment", [*argv, "--seed", str(self.args.seed), "--no-progress", *SMALL_IMAGES])
        self.artifact("augmented RL data", self.rl_train)
        return f"{rows(self.mined / 'rl_train.parquet')} rows -> {rows(self.rl_train)} rows"

    def grpo(self) -> str:
        import pyarrow.parquet as pq
        from transformers import AutoModelForImageTextToText
        from verl.utils import hf_processor

        from gr_vl_verl.trainer.local import grpo

        a = self.args
        processor = hf_processor(str(self.models / "sft"))
        model = AutoModelForImageTextToText.from_pretrained(self.models / "sft")
        config = grpo_config(a.prompts, a.n, a.max_new_tokens)
        table = pq.read_table(self.rl_train).to_pylist()
        history = grpo(model, processor, table, config, steps=a.steps, lr=a.lr, seed=a.seed, log=print_step)
        save_model(model, processor, self.models / "grpo")
        self.summary["grpo"] = history
        self.artifact("GRPO model", self.models / "grpo")
        mini_batch = config.actor_rollout_ref.actor.ppo_mini_batch_size
        return f"{a.steps} steps x {a.prompts} prompts x {a.n} answers (mini-batch {mini_batch} prompts)"

    def eval(self) -> str:
        for name, model in (("sft", "R-SFT"), ("grpo", "GRPO")):
            command("eval", ["--data", str(self.data / "eval.parquet"), "--model", str(self.models / name),
                             "--out", str(self.out / "eval" / name), "--name", model, "--backend", "transformers",
                             "--max-tokens", str(self.args.max_new_tokens), "--no-progress"])  # fmt: skip
            self.artifact(f"predictions ({model})", self.out / "eval" / name / "predictions.jsonl")
        return "greedy answers of both models on every benchmark row"

    def score(self) -> str:
        report = self.out / "report"
        command("score", ["--predictions", str(self.out / "eval" / "grpo" / "predictions.jsonl"), "--out",
                          str(report), "--name", "GRPO", "--compare", str(self.out / "eval" / "sft")])  # fmt: skip
        for name in sorted(p.name for p in report.iterdir()):
            self.artifact(name, report / name)
        data = json.loads((report / "report.json").read_text())
        tasks = ("prompt", "response")
        self.summary["report"] = {t: {k: data[t][k] for k in ("average_text", "average_all")} for t in tasks}
        return f"GRPO beside R-SFT in {report / 'report.md'}"

    # -- bookkeeping --------------------------------------------------------------------------------
    @property
    def rl_train(self) -> Path:
        return self.mined / "rl_train_aug.parquet"

    def artifact(self, name: str, path: Path) -> None:
        self.summary["artifacts"][name] = str(path)

    def stages(self) -> list[tuple[str, Callable[[], str]]]:
        return [
            ("tiny Qwen2.5-VL", self.build_model),
            ("gr-vl prep", self.prep),
            ("reasoning SFT", self.sft),
            ("gr-vl mine", self.mine),
            ("gr-vl augment", self.augment),
            ("GRPO steps", self.grpo),
            ("gr-vl eval", self.eval),
            ("gr-vl score", self.score),
        ]


def command(name: str, argv: list[str]) -> None:
    """Run another ``gr-vl`` command in this process; its errors reach ``gr-vl`` as this command's."""
    module = importlib.import_module(f"gr_vl_verl.commands.{name}")
    parser = argparse.ArgumentParser(prog=f"gr-vl {name}")
    module.add_arguments(parser)
    module.run(parser.parse_args(argv))


def rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return pq.read_metadata(path).num_rows


def save_model(model: Any, processor: Any, out: Path) -> None:
    """A Hugging Face folder (weights, processor, tokenizer): what generation and the next stage load."""
    model.save_pretrained(out)
    processor.save_pretrained(out)


def grpo_config(prompts: int, n: int, max_new_tokens: int) -> Any:
    """The plugin's trainer config with the demo's batch sizes: two mini-batches per step, so the clip acts."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    overrides = [
        f"data.train_batch_size={prompts}",
        f"data.max_response_length={max_new_tokens}",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={max(1, prompts // 2)}",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=1",
        f"actor_rollout_ref.rollout.n={n}",
    ]
    with initialize_config_module("gr_vl_verl.trainer.config", version_base=None):
        config = compose("gr_vl_trainer", overrides=overrides)
    OmegaConf.resolve(config)
    return config


def print_step(record: dict[str, float]) -> None:
    print(
        f"      step {record['step']}: clip eps {record.get('actor/clip_eps_low', float('nan')):.3f}  "
        f"reward {record['reward/score']:.1f}  r_safety {record['reward/r_safety']:.2f}  "
        f"format {record['reward/format']:.2f}  pg_loss {record.get('actor/pg_loss', float('nan')):.4f}  "
        f"clipfrac {record.get('actor/pg_clipfrac', float('nan')):.3f}",
        flush=True,
    )


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # verl lists the training engines it cannot import (none of them run here); the demo needs none.
    warnings.filterwarnings("ignore", message=r".* engine is not available")
    demo = Demo(args)
    demo.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    stages = demo.stages()
    for i, (name, stage) in enumerate(stages, 1):
        print(f"[{i}/{len(stages)}] {name}", flush=True)
        t0 = time.perf_counter()
        detail = stage()
        seconds = round(time.perf_counter() - t0, 1)
        demo.summary["stages"][name] = {"seconds": seconds, "detail": detail}
        print(f"      {detail} ({seconds} s)", flush=True)
    demo.summary["seconds"] = round(time.perf_counter() - start, 1)
    demo.artifact("this summary", demo.out / "demo_summary.json")
    text = json.dumps(demo.summary, indent=2, default=str) + "\n"  # stages in run order, not sorted
    atomic_write(demo.out / "demo_summary.json", [text.encode("utf-8")])
    print(f"done in {demo.summary['seconds']} s. Artifacts:")
    for name, path in demo.summary["artifacts"].items():
        print(f"  {name:24} {path}")
    print(STAND_INS)
    return 0
