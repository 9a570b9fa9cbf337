"""Score a predictions file as the paper does (F1, weighted averages, tokens) and write tables and charts.

    gr-vl score --predictions runs/7b/predictions.jsonl --out runs/7b/score --name GR-VL-7B
    gr-vl score --predictions runs/eco/predictions.jsonl --out runs/eco/score --compare runs/7b/score

Writes ``OUT/report.json``, ``report.md``, ``report.csv``, ``f1_per_benchmark.png`` and ``f1_vs_tokens.png``;
``--compare`` adds other score folders to the tables and charts. Protocol and modes: docs/evaluation.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gr_vl_verl.commands import UsageError, emit
from gr_vl_verl.commands._scoring import add_scoring_arguments, headline, score_into, score_target


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--predictions", type=Path, required=True, help="predictions.jsonl (one line per row and task)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (created if missing)")
    add_scoring_arguments(parser)


def run(args: argparse.Namespace) -> int:
    predictions, out = Path(args.predictions), Path(args.out)
    if not predictions.is_file():
        raise UsageError(f"--predictions {predictions}: no such file")
    report = score_into(predictions, score_target(args, out))
    emit(headline(report))
    emit(f"report: {out / 'report.md'}")
    return 0
