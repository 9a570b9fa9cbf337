"""Run the whole method on the bundled sample data and a tiny model, through verl and vLLM, on this machine.

Every stage of GuardReasoner-VL, in order, each through the same code a cluster run uses, at toy size:

1. a tiny Qwen2.5-VL built offline (tokenizer, processor, random weights);
2. ``gr-vl prep``: the bundled GuardReasoner-VLTrain / VLTest samples into SFT, RL and eval parquets;
3. reasoning SFT: verl's ``sft_trainer`` (torchrun, FSDP2) with ``gr_vl_sft.yaml``;
4. ``gr-vl mine --model``: k answers per RL row through the Ray Data pipeline and vLLM, hard rows kept;
5. ``gr-vl augment``: safety-aware concatenation up to 20 % of the RL training rows;
6. GRPO: ``python -m gr_vl_verl.trainer.main_ppo trainer.device=cpu`` — verl's trainer with FSDP2 workers, a
   vLLM rollout server, the plugin's reward manager and the dynamic clip pushed every step;
7. ``gr-vl eval`` of the SFT and the GRPO model through vLLM: greedy answers, predictions, F1 report;
8. ``gr-vl score``: both models side by side (report.md, report.json, report.csv, two charts).

On a CPU, verl runs on the plugin's ``cpu`` platform and vLLM is its CPU build (docs/cpu.md). The numbers mean
nothing (a random 2-layer model trained for a minute); the demo shows every component working together. The
console shows one line per stage; Ray, vLLM and verl write to ``<out>/logs/``. ``demo_summary.json`` lists every
artifact, the time of each stage and each stage's figures.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gr_vl_verl.atomic import atomic_write
from gr_vl_verl.commands import emit

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data"
# The tiny processor's pixel bounds (gr_vl_verl.tiny): images of a few tokens. The demo's RL data, mining and
# GRPO use them in place of the RL bounds; evaluation keeps the released evaluator's (the sample images lie
# inside them).
TINY_PIXELS = (28 * 28, 112 * 112)
SMALL_IMAGES = ["--min-pixels", str(TINY_PIXELS[0]), "--max-pixels", str(TINY_PIXELS[1])]
# vLLM engines of the generation stages: no compilation (seconds, not minutes, to start on a CPU).
ENGINE_KWARGS = json.dumps({"enforce_eager": True, "max_model_len": 4096})

DONE = (
    "Everything above ran through verl and vLLM: verl's sft_trainer and its GRPO trainer (FSDP2 workers, a vLLM "
    "rollout server, the plugin's reward manager and dynamic clip), vLLM for mining and evaluation, at toy size "
    "on this machine's CPUs."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("outputs/demo"), help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sft-steps", type=int, default=200, help="reasoning-SFT steps (default %(default)s)")
    parser.add_argument("--sft-lr", type=float, default=3e-3, help="SFT learning rate (tiny model)")
    parser.add_argument("--k", type=int, default=4, help="answers per row when mining (default %(default)s)")
    parser.add_argument("--steps", type=int, default=3, help="GRPO steps (default %(default)s)")
    parser.add_argument("--prompts", type=int, default=2, help="prompts per GRPO step (default %(default)s)")
    parser.add_argument("--n", type=int, default=4, help="answers per prompt, the GRPO group (default %(default)s)")
    parser.add_argument("--lr", type=float, default=1e-4, help="GRPO learning rate (tiny model; the paper: 1e-6)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="GRPO answer length (default 64)")
    parser.add_argument(
        "--gen-max-tokens", type=int, default=256, help="answer length in mining and evaluation (default 256)"
    )
    parser.add_argument("--timeout", type=float, default=1200, help="seconds each stage may take (default %(default)s)")


class Demo:
    """The stages, their timings and their artifacts."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Path(args.out)
        self.models = self.out / "models"
        self.data = self.out / "data"
        self.mined = self.out / "mined"
        self.logs = self.out / "logs"
        self.summary: dict[str, Any] = {"stages": {}, "artifacts": {}}

    # -- stages -------------------------------------------------------------------------------------
    def build_model(self) -> str:
        from transformers.utils import logging as hf_logging

        from gr_vl_verl.tiny import build_tiny_qwen2_5_vl

        hf_logging.disable_progress_bar()  # the console keeps one line per stage

        base = build_tiny_qwen2_5_vl(self.models / "base", seed=self.args.seed)
        self.artifact("base model", base)
        return "random weights, 2 layers, hidden 64"

    def prep(self) -> str:
        train = SAMPLE / "GuardReasoner-VLTrain"
        bench = SAMPLE / "GuardReasoner-VLTest"
        sft_images = ["--sft-min-pixels", str(28 * 28), "--sft-max-pixels", str(112 * 112)]
        self.command("prep", ["vltrain", "--data-root", str(train), "--out", str(self.data), "--no-progress",
                         *sft_images, *SMALL_IMAGES])  # fmt: skip
        self.command("prep", ["vltest", "--benchmark-dir", str(bench / "benchmark"), "--image-dataset",
                         str(bench / "images"), "--out", str(self.data), "--no-progress", *SMALL_IMAGES])  # fmt: skip
        for name in ("sft_train.parquet", "rl_train.parquet", "eval.parquet"):
            self.artifact(name, self.data / name)
        return f"SFT {rows(self.data / 'sft_train.parquet')}, RL {rows(self.data / 'rl_train.parquet')}, " + (
            f"eval {rows(self.data / 'eval.parquet')} rows"
        )

    def sft(self) -> str:
        from gr_vl_verl.trainer import launch

        a = self.args
        out = self.models / "sft_checkpoints"
        argv = launch.sft_command(self.models / "base", self.data / "sft_train.parquet", out, a.sft_steps, lr=a.sft_lr)
        result = self.trainer_run(argv, "sft", a.sft_steps)
        losses = [m["train/loss"] for _, m in sorted(result.metrics().items()) if "train/loss" in m]
        window = max(1, min(10, len(losses) // 4))
        self.summary["sft"] = {
            "steps": len(losses),
            "loss_first": sum(losses[:window]) / window,
            "loss_last": sum(losses[-window:]) / window,
        }
        self.artifact("R-SFT model", self.sft_model)
        sft = self.summary["sft"]
        return f"verl sft_trainer, {sft['steps']} steps, loss {sft['loss_first']:.2f} -> {sft['loss_last']:.2f}"

    def mine(self) -> str:
        a = self.args
        self.gr_vl("mine", ["--data", str(self.data / "rl_train.parquet"), "--model", str(self.sft_model),
                            "--out", str(self.mined), "--k", str(a.k), "--sample-num", "all", "--val-fraction", "0.25",
                            "--seed", str(a.seed), "--backend", "vllm", "--max-tokens", str(a.gen_max_tokens),
                            "--engine-kwargs", ENGINE_KWARGS, "--no-progress", *SMALL_IMAGES])  # fmt: skip
        stats = json.loads((self.mined / "mining_stats.json").read_text())
        self.summary["mining"] = stats["totals"]
        self.artifact("generations (mining)", self.mined / "generations")
        self.artifact("mined RL data", self.mined / "rl_train.parquet")
        return (
            f"vLLM, right answers per row {stats['totals']['histogram']}; kept {stats['totals']['kept']} of "
            f"{stats['totals']['rows']}"
        )

    def augment(self) -> str:
        argv = ["--data", str(self.mined / "rl_train.parquet"), "--out", str(self.rl_train), "--ratio", "0.2"]
        self.command("augment", [*argv, "--seed", str(self.args.seed), "--no-progress", *SMALL_IMAGES])
        self.artifact("augmented RL data", self.rl_train)
        return f"{rows(self.mined / 'rl_train.parquet')} rows -> {rows(self.rl_train)} rows"

    def grpo(self) -> str:
        from gr_vl_verl.trainer import launch

        a = self.args
        out = self.models / "grpo_run"
        argv = launch.grpo_command(
            self.sft_model, self.rl_train, self.data / "rl_train.parquet", out, a.steps, prompts=a.prompts, n=a.n,
            response_length=a.max_new_tokens, lr=a.lr, image_pixels=TINY_PIXELS,
        )  # fmt: skip
        result = self.trainer_run(argv, "grpo", a.steps)
        keep = ("actor/clip_eps_low", "actor/clip_eps_high", "actor/pg_loss", "critic/advantages/max",
                "timing_s/step")  # fmt: skip
        history = []
        for step, m in sorted(result.metrics().items()):
            record = {"step": step, **{k: m[k] for k in keep if k in m}}
            record.update({k: v for k, v in m.items() if k.startswith(("reward/", "val/f1_"))})
            history.append(record)
        self.summary["grpo"] = history
        self.artifact("GRPO checkpoints", out / "checkpoints")
        self.artifact("GRPO model", self.grpo_model)
        return f"verl GRPO trainer, {a.steps} steps x {a.prompts} prompts x {a.n} answers; clip eps " + " -> ".join(
            f"{h.get('actor/clip_eps_low', float('nan')):.3f}" for h in history
        )

    def eval(self) -> str:
        for name, model, path in (("sft", "R-SFT", self.sft_model), ("grpo", "GRPO", self.grpo_model)):
            self.gr_vl("eval", ["--data", str(self.data / "eval.parquet"), "--model", str(path),
                                "--out", str(self.out / "eval" / name), "--name", model, "--backend", "vllm",
                                "--max-tokens", str(self.args.gen_max_tokens), "--engine-kwargs", ENGINE_KWARGS,
                                "--no-progress"], log=f"eval_{name}")  # fmt: skip
            self.artifact(f"predictions ({model})", self.out / "eval" / name / "predictions.jsonl")
        return "vLLM, greedy answers of both models on every benchmark row"

    def score(self) -> str:
        report = self.out / "report"
        self.command("score", ["--predictions", str(self.out / "eval" / "grpo" / "predictions.jsonl"), "--out",
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

    @property
    def sft_model(self) -> Path:
        from gr_vl_verl.trainer.launch import hf_folder

        return hf_folder(self.models / "sft_checkpoints", self.args.sft_steps, actor=False)

    @property
    def grpo_model(self) -> Path:
        from gr_vl_verl.trainer.launch import hf_folder

        return hf_folder(self.models / "grpo_run" / "checkpoints", self.args.steps, actor=True)

    def trainer_run(self, argv: list[str], name: str, steps: int) -> Any:
        """A verl trainer in a child process, its log in ``logs/``; the console counts its steps."""
        from gr_vl_verl.trainer import launch

        metrics = self.logs / f"{name}_metrics.jsonl"
        with _StepCounter(metrics, steps, name):
            result = launch.run(argv, self.logs, name, timeout=self.args.timeout)
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
        command(name, argv, log)
        if self.summary.get("logs", {}).get(name) != str(log):
            self.log_file(name, log)

    def log_file(self, name: str, path: Path) -> None:
        self.summary.setdefault("logs", {})[name] = str(path)
        emit(f"      log: {path}", flush=True)

    def artifact(self, name: str, path: Path) -> None:
        self.summary["artifacts"][name] = str(path)

    def stages(self) -> list[tuple[str, Callable[[], str]]]:
        return [
            ("tiny Qwen2.5-VL", self.build_model),
            ("gr-vl prep", self.prep),
            ("reasoning SFT (verl)", self.sft),
            ("gr-vl mine", self.mine),
            ("gr-vl augment", self.augment),
            ("GRPO (verl + vLLM)", self.grpo),
            ("gr-vl eval", self.eval),
            ("gr-vl score", self.score),
        ]


class _StepCounter:
    """A console progress bar of a child trainer's steps, read from its metrics file as they are logged."""

    def __init__(self, metrics: Path, total: int, name: str) -> None:
        self.metrics, self.total, self.name = metrics, total, name
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> _StepCounter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        from tqdm import tqdm

        from gr_vl_verl.trainer.launch import read_metrics

        quiet = not sys.stdout.isatty()  # a log file gets the stage lines, not a bar redrawn every second
        desc = f"      {self.name} steps"
        with tqdm(total=self.total, desc=desc, leave=False, file=sys.stdout, disable=quiet) as bar:
            while not self._stop.wait(1.0):
                try:
                    done = len(read_metrics(self.metrics))
                except (OSError, ValueError):  # a line being written
                    continue
                bar.update(min(done, self.total) - bar.n)


def command(name: str, argv: list[str], log: Path) -> None:
    """Run another ``gr-vl`` command in this process, its output appended to ``log``; its errors reach ``gr-vl``
    as this command's."""
    import contextlib

    module = importlib.import_module(f"gr_vl_verl.commands.{name}")
    parser = argparse.ArgumentParser(prog=f"gr-vl {name}")
    module.add_arguments(parser)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as fh, contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
        module.run(parser.parse_args(argv))


def rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return pq.read_metadata(path).num_rows


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # verl lists the training engines it cannot import (the demo's trainers run in child processes).
    warnings.filterwarnings("ignore", message=r".* engine is not available")
    demo = Demo(args)
    demo.out.mkdir(parents=True, exist_ok=True)
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
    demo.artifact("this summary", demo.out / "demo_summary.json")
    text = json.dumps(demo.summary, indent=2, default=str) + "\n"  # stages in run order, not sorted
    atomic_write(demo.out / "demo_summary.json", [text.encode("utf-8")])
    emit(f"done in {demo.summary['seconds']} s. Artifacts:")
    for name, path in demo.summary["artifacts"].items():
        emit(f"  {name:24} {path}")
    emit(DONE)
    return 0
