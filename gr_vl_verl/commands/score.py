"""Score a predictions file as the paper does (F1, weighted averages, tokens) and write tables and charts.

    gr-vl score --predictions runs/7b/predictions.jsonl --out runs/7b/score --name GR-VL-7B
    gr-vl score --predictions runs/eco/predictions.jsonl --out runs/eco/score --compare runs/7b/score

Writes ``OUT/report.json``, ``report.md``, ``report.csv``, ``f1_per_benchmark.png`` and ``f1_vs_tokens.png``;
``--compare`` adds other score folders to the tables and charts. Protocol and modes: docs/evaluation.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gr_vl_verl.commands import UsageError, WorkError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--predictions", type=Path, required=True, help="predictions.jsonl (one line per row and task)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (created if missing)")
    parser.add_argument(
        "--mode",
        choices=("strict", "compat"),
        default="strict",
        help="strict: labels only from a well-formed answer's <result> (default); "
        "compat: the first label anywhere, as the released evaluators read",
    )
    parser.add_argument(
        "--compare",
        type=Path,
        nargs="+",
        action="extend",
        default=[],
        metavar="DIR",
        help="other `gr-vl score` output folders to put beside this run",
    )
    parser.add_argument("--name", default=None, help="the run's name in tables and charts (default: --out's name)")


def run(args: argparse.Namespace) -> int:
    from gr_vl_verl.evaluation.metrics import EvalConfig, score_predictions
    from gr_vl_verl.evaluation.predictions import PredictionError, read_predictions
    from gr_vl_verl.evaluation.report import ReportError, build_report, load_report, write_report

    predictions, out = Path(args.predictions), Path(args.out)
    if not predictions.is_file():
        raise UsageError(f"--predictions {predictions}: no such file")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a folder")
    compare = []
    for folder in args.compare:
        if folder.resolve() == out.resolve():
            raise UsageError(f"--compare {folder} is the --out folder; its report would be replaced")
        try:
            compare.append(load_report(folder))
        except FileNotFoundError as e:
            raise UsageError(f"--compare {e}") from None
        except ReportError as e:
            raise WorkError(f"--compare {e}") from None
    name = args.name or out.resolve().name
    if not name.strip():
        raise UsageError("--name must not be empty")

    try:
        summary = score_predictions(read_predictions(predictions), EvalConfig(mode=args.mode))
    except PredictionError as e:
        raise WorkError(str(e)) from None
    except OSError as e:
        raise WorkError(f"{predictions}: {e.strerror or e}") from None
    report = build_report(summary, name=name, predictions=str(predictions.resolve()))
    try:
        write_report(out, report, compare)
    except OSError as e:
        raise WorkError(f"--out {out}: {e.strerror or e}") from None

    print(_headline(report))
    print(f"report: {out / 'report.md'}")
    return 0


def _headline(report: dict) -> str:
    """One line per task with both averages, then tokens and unparsed outputs."""

    def f(x: float | None) -> str:
        return "–" if x is None else f"{x:.2f}"

    lines = []
    for task in ("prompt", "response"):
        block = report[task]
        if block["n"]:
            lines.append(
                f"{task:<8} F1 average (all) {f(block['average_all'])}  (text) {f(block['average_text'])}"
                f"  over {len(block['per_benchmark'])} benchmark(s), {block['n']} samples"
            )
    tokens, unparsed = report["tokens"], report["unparsed"]
    lines.append(
        f"mean output tokens {f(tokens['mean_output_tokens'])} over {tokens['generations']} generations; "
        f"unparsed outputs {unparsed['total']} ({unparsed['rate']:.2f}%), mode {report['mode']}"
    )
    return "\n".join(lines)
