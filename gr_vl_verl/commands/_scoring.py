"""Scoring a predictions file into a report folder, as `gr-vl score` does and `gr-vl eval` does after generating.

A helper of the command modules (its name starts with ``_``, so ``gr-vl`` lists no command for it): the
``--mode``/``--compare``/``--name`` flags, their checks, the scoring and the printed headline, written once.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gr_vl_verl.commands import UsageError, WorkError, require_out_folder


def add_scoring_arguments(parser: argparse.ArgumentParser) -> None:
    from gr_vl_verl.protocol import PARSE_MODES

    parser.add_argument(
        "--mode",
        choices=PARSE_MODES,
        default="compat",
        help="compat: the first label anywhere, as the released evaluator read (default: the paper's protocol); "
        "strict: labels only from a well-formed answer's <result>",
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


@dataclass(frozen=True)
class ScoreTarget:
    """Where a report goes and what it is set beside, checked before any work."""

    out: Path
    name: str
    mode: str
    compare: list[dict[str, Any]] = field(default_factory=list)


def score_target(args: argparse.Namespace, out: Path) -> ScoreTarget:
    """Check ``out`` and the scoring flags, and load the ``--compare`` reports.

    Usage errors (exit 2): ``out`` is a file, a compared folder is ``out`` or has no ``report.json``, an empty
    name. A compared ``report.json`` that is malformed is a work error (exit 1).
    """
    from gr_vl_verl.evaluation.report import ReportError, load_report

    out = Path(out)
    require_out_folder("--out", out)
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
    return ScoreTarget(out=out, name=name, mode=args.mode, compare=compare)


def score_into(predictions: Path, target: ScoreTarget) -> dict[str, Any]:
    """Score ``predictions`` and write the report folder; returns the report. Failures are work errors."""
    from gr_vl_verl.evaluation.metrics import EvalConfig, score_predictions
    from gr_vl_verl.evaluation.predictions import PredictionError, read_predictions
    from gr_vl_verl.evaluation.report import build_report, write_report

    predictions = Path(predictions)
    try:
        summary = score_predictions(read_predictions(predictions), EvalConfig(mode=target.mode))
    except PredictionError as e:
        raise WorkError(str(e)) from None
    except OSError as e:
        raise WorkError(f"{predictions}: {e.strerror or e}") from None
    report = build_report(summary, name=target.name, predictions=str(predictions.resolve()))
    try:
        write_report(target.out, report, target.compare)
    except OSError as e:
        raise WorkError(f"--out {target.out}: {e.strerror or e}") from None
    return report


def headline(report: dict) -> str:
    """One line per task with both averages, then tokens and unparsed outputs, then the other mode's averages."""
    from gr_vl_verl.evaluation.report import other_mode_line

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
    other = other_mode_line(report)
    if other:
        lines.append(other.replace("`", ""))
    return "\n".join(lines)
