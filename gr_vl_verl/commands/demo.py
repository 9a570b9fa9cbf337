"""Run the whole method on a toy guard world and a tiny model, through verl and vLLM: R-SFT beside GRPO.

Every stage of GuardReasoner-VL, in order, each through the same code a cluster run uses, at toy size:

1. ``gr-vl toy-world``: a seeded guard world in GuardReasoner-VLTrain / VLTest's file shapes whose harm follows
   simple rules, with held-out benchmarks (docs/toy_world.md);
2. a tiny Qwen2.5-VL built offline (its tokenizer learned on the world's training text, random weights);
3. ``gr-vl prep``: the world's files into SFT, RL and eval parquets, and the benchmarks as RL rows (GRPO's
   validation set: verl's validation F1 is then held-out F1);
4. reasoning SFT: verl's ``sft_trainer`` (torchrun, FSDP2) with ``gr_vl_sft.yaml``, deliberately short: a warm
   start that still makes mistakes;
5. with ``--mining hard`` only, ``gr-vl mine --model``: k answers per RL row through the Ray Data pipeline and
   vLLM, hard rows kept (the paper's mining; at this size it hurts, so by default GRPO trains on every RL row:
   docs/toy_world.md);
6. ``gr-vl augment``: safety-aware concatenation up to 20 % of the RL training rows;
7. GRPO: ``python -m gr_vl_verl.trainer.main_ppo trainer.device=cpu`` — verl's trainer with FSDP2 workers, a
   vLLM rollout server, the plugin's reward manager and the dynamic clip pushed every step, validating (greedy)
   on the held-out rows before training and every quarter of the run;
8. ``gr-vl eval`` of the R-SFT and the GRPO model through vLLM on the held-out benchmarks;
9. ``gr-vl score``: both models side by side (report.md, report.json, report.csv, charts) and ``gr-vl curves``
   of both training runs, embedded in the report.

On a CPU, verl runs on the plugin's ``cpu`` platform and vLLM is its CPU build (docs/cpu.md). The last console
line compares R-SFT and GRPO on the held-out benchmarks (the paper's weighted averages, mean output tokens). The
console shows one line per stage; Ray, vLLM and verl write to ``<out>/logs/``. ``demo_summary.json`` lists every
artifact, the time of each stage and each stage's figures. ``--seed`` seeds every stage: the world, the model,
both trainers, mining, concatenation and sampling.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gr_vl_verl.atomic import atomic_write
from gr_vl_verl.commands import _demo_parts as parts
from gr_vl_verl.commands import emit

# The tiny processor's pixel bounds (gr_vl_verl.tiny): images of a few tokens. The demo's data, mining, GRPO
# and evaluation use them (the world's pictures are 56 x 56, inside them).
TINY_PIXELS = (28 * 28, 112 * 112)
SMALL_IMAGES = ["--min-pixels", str(TINY_PIXELS[0]), "--max-pixels", str(TINY_PIXELS[1])]
# vLLM engines of the generation stages: no compilation (seconds, not minutes, to start on a CPU).
ENGINE_KWARGS = json.dumps({"enforce_eager": True, "max_model_len": 4096})

DONE = (
    "Everything above ran through verl and vLLM: verl's sft_trainer and its GRPO trainer (FSDP2 workers, a vLLM "
    "rollout server, the plugin's reward manager and dynamic clip), vLLM for evaluation (and mining, with "
    "--mining hard), at toy size on this machine's CPUs."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("outputs/demo"), help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="seeds every stage (default %(default)s)")
    parser.add_argument(
        "--world-scale", type=float, default=1.0, help="rows of the toy world as a fraction of its defaults (default 1)"
    )
    parser.add_argument("--hidden", type=int, default=128, help="tiny model width, a multiple of 32 (default 128)")
    parser.add_argument("--layers", type=int, default=2, help="tiny model depth (default %(default)s)")
    parser.add_argument("--sft-steps", type=int, default=100, help="reasoning-SFT steps (default %(default)s)")
    parser.add_argument("--sft-batch", type=int, default=8, help="rows per SFT step (default %(default)s)")
    parser.add_argument("--sft-lr", type=float, default=3e-3, help="SFT learning rate (tiny model)")
    parser.add_argument(
        "--mining",
        choices=("none", "hard"),
        default="none",
        help="none: GRPO on every RL row (default; at this size it learns and the paper's mining does not, "
        "docs/toy_world.md); hard: the paper's hard-sample mining with --k and --max-correct",
    )
    parser.add_argument("--k", type=int, default=4, help="answers per row when mining (default %(default)s)")
    parser.add_argument(
        "--max-correct", type=int, default=0, help="mining keeps rows with at most this many right answers (default 0)"
    )
    parser.add_argument("--steps", type=int, default=16, help="GRPO steps (default %(default)s)")
    parser.add_argument("--prompts", type=int, default=8, help="prompts per GRPO step (default %(default)s)")
    parser.add_argument("--n", type=int, default=4, help="answers per prompt, the GRPO group (default %(default)s)")
    parser.add_argument("--epochs", type=int, default=4, help="GRPO epochs over the mined data at most (default 4)")
    parser.add_argument("--lr", type=float, default=1e-4, help="GRPO learning rate (tiny model; the paper: 1e-6)")
    parser.add_argument(
        "--temperature", type=float, default=1.0, help="GRPO rollout temperature (the paper: 1.2; default 1.0)"
    )
    # Just above the world's longest answer (101 tokens): a wrong answer gains little from growing to the limit
    # (eq. 10 rewards length), so the tiny policy does not learn to ramble past </result> (docs/toy_world.md).
    parser.add_argument("--max-new-tokens", type=int, default=104, help="GRPO answer length (default 104)")
    parser.add_argument(
        "--gen-max-tokens", type=int, default=160, help="answer length in mining and evaluation (default 160)"
    )
    parser.add_argument("--timeout", type=float, default=1200, help="seconds each stage may take (default %(default)s)")


class Demo:
    """The stages, their timings and their artifacts."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Path(args.out)
        self.world = self.out / "world"
        self.models = self.out / "models"
        self.data = self.out / "data"
        self.mined = self.out / "mined"
        self.logs = self.out / "logs"
        self.summary: dict[str, Any] = {"seed": args.seed, "stages": {}, "artifacts": {}}

    # -- stages -------------------------------------------------------------------------------------
    def toy_world(self) -> str:
        from gr_vl_verl.data.toy_world import WorldConfig, generate

        counts = generate(self.world, WorldConfig.scaled(self.args.world_scale, seed=self.args.seed))
        self.summary["world"] = counts
        self.artifact("toy world", self.world)
        n_train = sum(counts["train"].values())
        n_bench = sum(counts["benchmarks"].values())
        return f"seed {self.args.seed}: {n_train} training rows, {n_bench} held-out benchmark rows"

    def build_model(self) -> str:
        from transformers.utils import logging as hf_logging

        from gr_vl_verl.data.toy_world_files import training_texts
        from gr_vl_verl.tiny import build_tiny_qwen2_5_vl

        hf_logging.disable_progress_bar()  # the console keeps one line per stage
        a = self.args
        corpus = training_texts(self.world / "GuardReasoner-VLTrain")  # the tokenizer's corpus
        base = build_tiny_qwen2_5_vl(
            self.models / "base", seed=a.seed, hidden_size=a.hidden, layers=a.layers, corpus=corpus
        )
        self.artifact("base model", base)
        return f"random weights, {a.layers} layers, hidden {a.hidden}; tokenizer learned on the training text"

    def prep(self) -> str:
        train = self.world / "GuardReasoner-VLTrain"
        bench = self.world / "GuardReasoner-VLTest"
        sft_images = ["--sft-min-pixels", str(TINY_PIXELS[0]), "--sft-max-pixels", str(TINY_PIXELS[1])]
        self.command("prep", ["vltrain", "--data-root", str(train), "--out", str(self.data), "--no-progress",
                         "--seed", str(self.args.seed), *sft_images, *SMALL_IMAGES])  # fmt: skip
        # the benchmarks also as RL rows: GRPO validates on them (the rows with a request label; verl's F1 per
        # task against the held-out labels, the curves' "validation F1")
        self.command("prep", ["vltest", "--benchmark-dir", str(bench / "benchmark"), "--image-dataset",
                         str(bench / "images"), "--out", str(self.data), "--formats", "eval,rl", "--no-progress",
                         *SMALL_IMAGES])  # fmt: skip
        for name in ("sft_train.parquet", "rl_train.parquet", "eval.parquet", "rl_test.parquet"):
            self.artifact(name, self.data / name)
        n = {name: parts.rows(self.data / name) for name in ("sft_train.parquet", "rl_train.parquet", "eval.parquet")}
        return (
            f"SFT {n['sft_train.parquet']}, RL {n['rl_train.parquet']}, eval {n['eval.parquet']} rows "
            f"(validation {parts.rows(self.val_data)} of them)"
        )

    def sft(self) -> str:
        from gr_vl_verl.trainer import launch

        a = self.args
        out = self.models / "sft_checkpoints"
        argv = launch.sft_command(self.models / "base", self.data / "sft_train.parquet", out, a.sft_steps,
                                  lr=a.sft_lr, batch_size=a.sft_batch, extra=[f"trainer.seed={a.seed}"])  # fmt: skip
        result = self.trainer_run(argv, "sft", a.sft_steps, metrics=out / "metrics.jsonl")
        losses = [m["train/loss"] for _, m in sorted(result.metrics().items()) if "train/loss" in m]
        window = max(1, min(10, len(losses) // 4))
        self.summary["sft"] = {
            "steps": len(losses),
            "loss_first": sum(losses[:window]) / window,
            "loss_last": sum(losses[-window:]) / window,
        }
        self.artifact("R-SFT model", self.sft_model)
        self.artifact("R-SFT metrics", out / "metrics.jsonl")
        sft = self.summary["sft"]
        return (
            f"verl sft_trainer, {sft['steps']} steps x {a.sft_batch} rows, loss {sft['loss_first']:.2f} -> "
            f"{sft['loss_last']:.2f} (a short warm start)"
        )

    def mine(self) -> str:
        a = self.args
        self.gr_vl("mine", ["--data", str(self.data / "rl_train.parquet"), "--model", str(self.sft_model),
                            "--out", str(self.mined), "--k", str(a.k), "--max-correct", str(a.max_correct),
                            "--sample-num", "all", "--val-fraction", "0", "--seed", str(a.seed), "--backend", "vllm",
                            "--max-tokens", str(a.gen_max_tokens), "--engine-kwargs", ENGINE_KWARGS, "--no-progress",
                            *SMALL_IMAGES])  # fmt: skip
        stats = json.loads((self.mined / "mining_stats.json").read_text())
        self.summary["mining"] = stats["totals"]
        self.artifact("generations (mining)", self.mined / "generations")
        self.artifact("mined RL data", self.mined / "rl_train.parquet")
        return (
            f"vLLM, right answers per row {stats['totals']['histogram']}; kept {stats['totals']['kept']} of "
            f"{stats['totals']['rows']}"
        )

    def augment(self) -> str:
        mined = self.args.mining == "hard"
        source = (self.mined if mined else self.data) / "rl_train.parquet"
        argv = ["--data", str(source), "--out", str(self.rl_train), "--ratio", "0.2"]
        self.command("augment", [*argv, "--seed", str(self.args.seed), "--no-progress", *SMALL_IMAGES])
        self.artifact("augmented RL data", self.rl_train)
        what = "mined" if mined else "every RL row, no mining:"
        return f"{what} {parts.rows(source)} rows -> {parts.rows(self.rl_train)} rows"

    def grpo(self) -> str:
        a = self.args
        history, self.grpo_step = self.grpo_run("grpo", self.rl_train)
        self.summary["grpo"] = history
        out = self.models / "grpo_run" / "checkpoints"
        self.artifact("GRPO checkpoints", out)
        self.artifact("GRPO metrics", out / "metrics.jsonl")
        self.artifact("GRPO model", self.grpo_model)
        self.summary["grpo_validation"] = parts.validation_curve(history)
        return parts.grpo_detail(history, a.prompts, a.n)

    def grpo_run(self, name: str, train: Path, extra: Sequence[str] = ()) -> tuple[list[dict[str, Any]], int]:
        """A GRPO run from the R-SFT model on ``train`` into ``models/<name>_run``: (metrics per step, the step of
        its last checkpoint). ``extra``: hydra overrides (the ablations' variants)."""
        from gr_vl_verl.trainer import launch

        a = self.args
        out = self.models / f"{name}_run"
        seeds = [f"data.seed={a.seed}", f"actor_rollout_ref.rollout.seed={a.seed}",
                 f"actor_rollout_ref.actor.fsdp_config.seed={a.seed}",
                 f"actor_rollout_ref.actor.data_loader_seed={a.seed}"]  # fmt: skip
        # validation: greedy answers (temperature 0, as `gr-vl eval`) on every held-out row, before training and
        # four times in the run; a group's n answers go through the model together (micro_batch)
        greedy = ["actor_rollout_ref.rollout.val_kwargs.do_sample=false",
                  "actor_rollout_ref.rollout.val_kwargs.temperature=0"]  # fmt: skip
        argv = launch.grpo_command(
            self.sft_model, train, self.val_data, out, a.steps, prompts=a.prompts, n=a.n,
            response_length=a.max_new_tokens, lr=a.lr, image_pixels=TINY_PIXELS, val_samples=-1, micro_batch=a.n,
            extra=[f"trainer.total_epochs={a.epochs}", f"trainer.test_freq={max(1, a.steps // 4)}",
                   "trainer.val_before_train=true", f"actor_rollout_ref.rollout.temperature={a.temperature}", *greedy,
                   *seeds, *extra],
        )  # fmt: skip
        result = self.trainer_run(argv, name, a.steps, metrics=out / "checkpoints" / "metrics.jsonl")
        return parts.grpo_history(result.metrics()), launch.last_step(out / "checkpoints")

    def eval(self) -> str:
        self.eval_model("sft", "R-SFT", self.sft_model)
        self.eval_model("grpo", "GRPO", self.grpo_model)
        return "vLLM, greedy answers of both models on the held-out benchmarks"

    def eval_model(self, name: str, label: str, model: Path) -> dict[str, Any]:
        """``gr-vl eval`` of ``model`` into ``eval/<name>``; its ``report.json``."""
        a = self.args
        self.gr_vl("eval", ["--data", str(self.data / "eval.parquet"), "--model", str(model),
                            "--out", str(self.out / "eval" / name), "--name", label, "--backend", "vllm",
                            "--max-tokens", str(a.gen_max_tokens), "--engine-kwargs", ENGINE_KWARGS,
                            "--seed", str(a.seed), "--no-progress", *SMALL_IMAGES], log=f"eval_{name}")  # fmt: skip
        self.artifact(f"predictions ({label})", self.out / "eval" / name / "predictions.jsonl")
        return json.loads((self.out / "eval" / name / "report.json").read_text())

    def score(self) -> str:
        report = self.out / "report"
        self.command("score", ["--predictions", str(self.out / "eval" / "grpo" / "predictions.jsonl"), "--out",
                          str(report), "--name", "GRPO", "--compare", str(self.out / "eval" / "sft")])  # fmt: skip
        for run, metrics in (
            ("sft", self.models / "sft_checkpoints"),
            ("grpo", self.models / "grpo_run" / "checkpoints"),
        ):
            self.command("curves", [str(metrics), "--out", str(report / f"curves_{run}.png"), "--labels",
                                    "R-SFT" if run == "sft" else "GRPO"])  # fmt: skip
        parts.embed_curves(report / "report.md")
        for name in sorted(p.name for p in report.iterdir()):
            self.artifact(name, report / name)
        grpo = json.loads((report / "report.json").read_text())
        sft = json.loads((self.out / "eval" / "sft" / "report.json").read_text())
        self.summary["report"] = {name: parts.headline(r) for name, r in (("R-SFT", sft), ("GRPO", grpo))}
        return f"GRPO beside R-SFT in {report / 'report.md'}, training curves in curves_{{sft,grpo}}.png"

    def comparison(self) -> str:
        """The closing line: R-SFT against GRPO on the held-out benchmarks."""
        return parts.closing_line(self.summary["report"]["R-SFT"], self.summary["report"]["GRPO"])

    # -- bookkeeping --------------------------------------------------------------------------------
    def fresh(self) -> None:
        """Start from an empty run: the folders of an earlier demo in ``--out`` go (mining would resume from its
        shards, verl from its checkpoints); anything else there is left alone."""
        import shutil

        for folder in (
            self.world,
            self.models,
            self.data,
            self.mined,
            self.logs,
            self.out / "eval",
            self.out / "report",
        ):
            shutil.rmtree(folder, ignore_errors=True)
        self.out.mkdir(parents=True, exist_ok=True)

    @property
    def rl_train(self) -> Path:
        return self.data / "rl_train_aug.parquet"

    @property
    def val_data(self) -> Path:
        """GRPO's validation rows: the held-out benchmarks' rows that have a request label."""
        return self.data / "rl_test.parquet"

    @property
    def sft_model(self) -> Path:
        from gr_vl_verl.trainer.launch import hf_folder, last_step

        checkpoints = self.models / "sft_checkpoints"
        return hf_folder(checkpoints, last_step(checkpoints), actor=False)

    @property
    def grpo_model(self) -> Path:
        from gr_vl_verl.trainer.launch import hf_folder

        return hf_folder(self.models / "grpo_run" / "checkpoints", self.grpo_step, actor=True)

    def trainer_run(self, argv: list[str], name: str, steps: int, metrics: Path) -> Any:
        """A verl trainer in a child process, its log in ``logs/``, its metrics beside its checkpoints; the
        console counts its steps."""
        from gr_vl_verl.trainer import launch

        with parts.StepCounter(metrics, steps, name):
            result = launch.run(argv, self.logs, name, timeout=self.args.timeout, metrics=metrics)
        self.log_file(name, result.log)
        return result

    def gr_vl(self, name: str, argv: list[str], log: str | None = None) -> None:
        """A ``gr-vl`` command that starts Ray and vLLM, in a child process whose output goes to ``logs/``."""
        from gr_vl_verl.trainer.launch import log_tail

        log_path = self.logs / f"{log or name}.log"
        self.logs.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, RAY_AUTH_MODE=os.environ.get("RAY_AUTH_MODE", "disabled"))
        with log_path.open("wb") as fh:
            done = subprocess.run([sys.executable, "-m", "gr_vl_verl", name, *argv], stdout=fh,
                                  stderr=subprocess.STDOUT, env=env, timeout=self.args.timeout)  # fmt: skip
        self.log_file(log or name, log_path)
        if done.returncode != 0:
            from gr_vl_verl.commands import WorkError

            raise WorkError(f"gr-vl {name} exited {done.returncode}; log {log_path}:\n{log_tail(log_path, 30)}")

    def command(self, name: str, argv: list[str]) -> None:
        """A light ``gr-vl`` command (no Ray, no vLLM) in this process, its output in ``logs/<name>.log``."""
        log = self.logs / f"{name}.log"
        parts.command(name, argv, log)
        if self.summary.get("logs", {}).get(name) != str(log):
            self.log_file(name, log)

    def log_file(self, name: str, path: Path) -> None:
        self.summary.setdefault("logs", {})[name] = str(path)
        emit(f"      log: {path}", flush=True)

    def artifact(self, name: str, path: Path) -> None:
        self.summary["artifacts"][name] = str(path)

    def stages(self) -> list[tuple[str, Callable[[], str]]]:
        return [
            ("toy world", self.toy_world),
            ("tiny Qwen2.5-VL", self.build_model),
            ("gr-vl prep", self.prep),
            ("reasoning SFT (verl)", self.sft),
            *([("gr-vl mine", self.mine)] if self.args.mining == "hard" else []),
            ("gr-vl augment", self.augment),
            ("GRPO (verl + vLLM)", self.grpo),
            ("gr-vl eval", self.eval),
            ("gr-vl score", self.score),
        ]


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # verl lists the training engines it cannot import (the demo's trainers run in child processes).
    warnings.filterwarnings("ignore", message=r".* engine is not available")
    demo = Demo(args)
    demo.fresh()
    start = time.perf_counter()
    stages = demo.stages()
    for i, (name, stage) in enumerate(stages, 1):
        emit(f"[{i}/{len(stages)}] {name}", flush=True)
        t0 = time.perf_counter()
        detail = stage()
        seconds = round(time.perf_counter() - t0, 1)
        demo.summary["stages"][name] = {"seconds": seconds, "detail": detail}
        emit(f"      {detail} ({seconds} s)", flush=True)
    demo.summary["seconds"] = round(time.perf_counter() - start, 1)
    demo.summary["comparison"] = demo.comparison()
    demo.artifact("this summary", demo.out / "demo_summary.json")
    text = json.dumps(demo.summary, indent=2, default=str) + "\n"  # stages in run order, not sorted
    atomic_write(demo.out / "demo_summary.json", [text.encode("utf-8")])
    emit(f"done in {demo.summary['seconds']} s. Artifacts:")
    for name, path in demo.summary["artifacts"].items():
        emit(f"  {name:24} {path}")
    emit(DONE)
    emit(demo.summary["comparison"])
    return 0
