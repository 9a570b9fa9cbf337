"""Draw the training curves of verl runs (SFT or GRPO), several runs overlaid, as one PNG.

    gr-vl curves RUN [RUN ...] --out curves.png [--labels A B ...]

RUN is a metrics file of verl's ``file`` logger or a run folder holding them (``*metrics*.jsonl``; the plugin's
launchers and recipes write them beside the checkpoints). Panels: reward and each reward term, accuracy and
format rate, response length, the clip range (pushed and applied), policy loss, entropy, validation F1, SFT loss;
a panel without data in any run is left out.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from gr_vl_verl.commands import UsageError, WorkError, emit


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="metrics file or run folder")
    parser.add_argument("--out", type=Path, required=True, help="PNG file to write")
    parser.add_argument("--labels", nargs="+", help="one name per run (default: the file or folder name)")


def run(args: argparse.Namespace) -> int:
    from gr_vl_verl.atomic import atomic_write
    from gr_vl_verl.trainer.metrics_file import MetricsFileError, read_run

    if args.labels and len(args.labels) != len(args.runs):
        raise UsageError(f"--labels: {len(args.labels)} names for {len(args.runs)} runs")
    if args.out.suffix.lower() != ".png":
        raise UsageError(f"--out: expected a .png file name, got {args.out}")
    try:
        runs = [read_run(path) for path in args.runs]
    except MetricsFileError as e:
        raise UsageError(str(e)) from None
    for path, steps in zip(args.runs, runs, strict=True):
        if not steps:
            raise WorkError(f"{path}: the metrics file is empty (has the run logged a step?)")
    labels = args.labels or [p.stem if p.is_file() else p.name for p in args.runs]
    from gr_vl_verl.charts.training import panels_with_data, training_curves

    try:
        data = training_curves(runs, labels)
    except ValueError as e:
        raise WorkError(str(e)) from None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out, [data])
    panels = [title for title, _ in panels_with_data(runs)]
    emit(json.dumps({"out": str(args.out), "runs": dict(zip(labels, map(len, runs), strict=True)), "panels": panels}))
    return 0
