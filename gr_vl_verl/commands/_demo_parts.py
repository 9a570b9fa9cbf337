"""Pieces of ``gr-vl demo`` that are not stages: the console's step counter, what the GRPO stage keeps of verl's
metrics and says of them, the closing line, the report's training-curves section, and running another ``gr-vl``
command in the demo's process."""

from __future__ import annotations

import argparse
import importlib
import sys
import threading
from pathlib import Path
from typing import Any

from gr_vl_verl.atomic import atomic_write


def headline(report: dict[str, Any]) -> dict[str, float]:
    """The figures the demo's closing line compares: the paper's weighted averages and mean output tokens."""
    return {
        "prompt_all": report["prompt"]["average_all"],
        "prompt_text": report["prompt"]["average_text"],
        "response_all": report["response"]["average_all"],
        "response_text": report["response"]["average_text"],
        "average_f1": report["average_f1"],
        "mean_output_tokens": report["tokens"]["mean_output_tokens"],
    }


def closing_line(sft: dict[str, float], grpo: dict[str, float]) -> str:
    """R-SFT against GRPO on the held-out benchmarks, from their :func:`headline` figures."""

    def pair(key: str, digits: int = 1) -> str:
        return f"{sft[key]:.{digits}f} -> {grpo[key]:.{digits}f}"

    delta = grpo["average_f1"] - sft["average_f1"]
    return (
        f"Held-out F1, R-SFT -> GRPO: prompt (All) {pair('prompt_all')}, response (All) {pair('response_all')}, "
        f"average {pair('average_f1')} ({delta:+.1f}); mean output tokens {pair('mean_output_tokens', 0)}."
    )


#: What the demo's summary keeps of each GRPO step's metrics, besides the reward terms and validation F1.
GRPO_KEYS = ("actor/clip_eps_low", "actor/clip_eps_high", "actor/loss_clip_low", "actor/pg_loss",
             "critic/score/mean", "critic/advantages/max", "response_length/mean", "timing_s/step")  # fmt: skip


def grpo_history(metrics: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per step of a GRPO run's metrics (step 0: the validation before training)."""
    history = []
    for step, m in sorted(metrics.items()):
        record = {"step": step, **{k: m[k] for k in GRPO_KEYS if k in m}}
        record.update({k: v for k, v in m.items() if k.startswith(("reward/", "val/f1_"))})
        history.append(record)
    return history


def validation_curve(history: list[dict[str, Any]]) -> dict[str, list]:
    """verl's validation F1 per task at each validated step (None where a task had no rows)."""
    validated = [h for h in history if "val/f1_prompt" in h]
    return {
        "steps": [h["step"] for h in validated],
        "f1_prompt": [h["val/f1_prompt"] for h in validated],
        "f1_response": [h.get("val/f1_response") for h in validated],
    }


def grpo_detail(history: list[dict[str, Any]], prompts: int, n: int) -> str:
    """The GRPO stage's console line: steps, the clip range's course, rollout accuracy (mean of the first and
    last three steps) and the held-out validation F1 from the first validation to the last."""
    trained = [h for h in history if "actor/clip_eps_low" in h]
    acc = [h["reward/acc/mean"] for h in trained if "reward/acc/mean" in h]
    first, last = (sum(acc[:3]) / len(acc[:3]), sum(acc[-3:]) / len(acc[-3:])) if acc else (float("nan"),) * 2
    curve = validation_curve(history)
    nan = float("nan")
    response = [nan if v is None else v for v in curve["f1_response"]]
    return (
        f"verl GRPO trainer, {len(trained)} steps x {prompts} prompts x {n} answers; clip eps "
        f"{trained[0]['actor/clip_eps_low']:.3f} -> {trained[-1]['actor/clip_eps_low']:.3f}; "
        f"rollout accuracy {first:.2f} -> {last:.2f}; held-out validation F1 (step {curve['steps'][0]} -> "
        f"{curve['steps'][-1]}): prompt {curve['f1_prompt'][0]:.1f} -> {curve['f1_prompt'][-1]:.1f}, response "
        f"{response[0]:.1f} -> {response[-1]:.1f}"
    )


def embed_curves(report_md: Path) -> None:
    """Add the training curves to the score folder's report (the PNGs sit beside it)."""
    text = report_md.read_text(encoding="utf-8")
    section = (
        "\n## Training curves\n\nReasoning SFT (verl `sft_trainer`) and GRPO (verl with the plugin), from each "
        "run's metrics file (`gr-vl curves`).\n\n![R-SFT](curves_sft.png)\n\n![GRPO](curves_grpo.png)\n"
    )
    atomic_write(report_md, [(text + section).encode("utf-8")])


class StepCounter:
    """A console progress bar of a child trainer's steps, read from its metrics file as they are logged."""

    def __init__(self, metrics: Path, total: int, name: str) -> None:
        self.metrics, self.total, self.name = metrics, total, name
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> StepCounter:
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
