"""Pieces of ``gr-vl demo`` that are not stages: the console's step counter, the closing line's figures, the
report's training-curves section, and running another ``gr-vl`` command in the demo's process."""

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
