"""Evaluate a checkpoint on an eval parquet as the paper does: greedy answers, predictions, F1 report and charts.

    gr-vl eval --data data/eval.parquet --model ckpt/gr_vl_7b --out runs/7b --name GR-VL-7B
    gr-vl eval --data data/eval.parquet --model ckpt/gr_vl_eco_7b --out runs/eco --compare runs/7b

Writes ``OUT/generations/`` (a `gr-vl generate` folder, so re-running the command resumes an interrupted
generation), ``OUT/predictions.jsonl`` (one line per row and labelled task) and, in ``OUT``, the files of
`gr-vl score`: ``report.json``, ``report.md``, ``report.csv`` and two charts. See docs/evaluation.md.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gr_vl_verl.commands import WorkError, emit, require_parquet
from gr_vl_verl.commands._generation import add_generation_arguments, generation_config, run_generation
from gr_vl_verl.commands._scoring import add_scoring_arguments, headline, score_into, score_target

GENERATIONS = "generations"
PREDICTIONS = "predictions.jsonl"
#: The eval parquet columns predictions are built from (the prompt and images stay on disk).
LABEL_COLUMNS = ["benchmark", "id", "modality", "tasks", "prompt_label", "response_label"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, help="eval parquet written by `gr-vl prep vltest`")
    parser.add_argument(
        "--out", type=Path, required=True, help="run folder: generations/, predictions.jsonl and the report"
    )
    # One answer per row is scored, so there is no --n; decoding defaults to the paper's greedy protocol.
    add_generation_arguments(parser, samples=False)
    add_scoring_arguments(parser)


def run(args: argparse.Namespace) -> int:
    data, out = Path(args.data), Path(args.out)
    require_parquet("--data", data, "eval")
    target = score_target(args, out)  # before generating: a bad --compare or --out should cost nothing
    config = generation_config(args, n=1)

    summary = run_generation(data, out / GENERATIONS, config)
    emit(summary.format())
    predictions = out / PREDICTIONS
    count = _write_predictions(data, out / GENERATIONS, predictions)
    emit(f"predictions: {count} line(s) in {predictions}")
    report = score_into(predictions, target)
    emit(headline(report))
    emit(f"report: {out / 'report.md'}")
    return 0


def _label_rows(data: Path) -> Iterator[dict[str, Any]]:
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(data).iter_batches(batch_size=1024, columns=LABEL_COLUMNS):
        yield from batch.to_pylist()


def _write_predictions(data: Path, generations: Path, path: Path) -> int:
    """One line per (row, labelled task), from the eval rows and their generation; written atomically."""
    from gr_vl_verl.data.schemas import read_generations
    from gr_vl_verl.evaluation.predictions import PredictionError, predictions_from_generations, write_predictions

    try:
        return write_predictions(path, predictions_from_generations(_label_rows(data), read_generations(generations)))
    except PredictionError as e:
        raise WorkError(f"{path}: {e}") from None
    except OSError as e:
        raise WorkError(f"{path}: {e.strerror or e}") from None
