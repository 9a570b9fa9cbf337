"""The harm-probability part of the score folder's tables: AUPRC, AUROC, ECE and best F1 in ``report.md`` and
``report.csv``, present only when a run's predictions carried ``p_harmful`` (a report without them is
unchanged). Figures are x100 like F1; ``best_threshold`` is a probability.
"""

from __future__ import annotations

from typing import Any

from gr_vl_verl.evaluation.predictions import TASKS
from gr_vl_verl.evaluation.tables import TASK_TITLES

PROB_CSV_COLUMNS = ("n_prob", "auprc", "auroc", "ece", "best_f1", "best_threshold")
FIGURE_TITLES = {"auprc": "AUPRC", "auroc": "AUROC", "ece": "ECE", "best_f1": "Best F1"}


def has_probabilities(run: dict[str, Any]) -> bool:
    """Whether a report holds probability figures (its predictions had ``p_harmful``)."""
    return any("prob_averages" in (run.get(task) or {}) for task in TASKS)


def _fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _table(header: list[str], rows: list[list[str]], align: str) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(":--" if a == "l" else "--:" for a in align) + "|"]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def markdown_section(runs: list[dict[str, Any]], labels: list[str]) -> list[str]:
    """Lines of ``report.md``'s probability section; none when no run has probabilities."""
    runs_with = [(label, run) for label, run in zip(labels, runs, strict=True) if has_probabilities(run)]
    if not runs_with:
        return []
    out = [
        "",
        "## Harm probability",
        "",
        "From p(harmful) at each answer's verdict token (lines without one are left out: n_prob counts the rest). "
        "AUPRC (average precision), AUROC, ECE (10 equal-width bins) and the best F1 over thresholds, all x100; "
        "averages weighted by n_prob. Charts: `pr_curves.png`, `reliability.png`.",
    ]
    for task in TASKS:
        rows = []
        for label, run in runs_with:
            block = run[task]
            if "prob_averages" not in block:
                continue
            averages = block["prob_averages"]
            rows.append(
                [label, str(block.get("n_prob", 0))]
                + [_fmt(averages[f][k]) for f in FIGURE_TITLES for k in ("average_text", "average_all")]
            )
        if rows:
            header = ["Run", "n_prob"] + [f"{t} ({k})" for t in FIGURE_TITLES.values() for k in ("Text", "All")]
            out += ["", f"### {TASK_TITLES[task]}", "", *_table(header, rows, "lr" + "r" * 8)]
    label, main = runs_with[0]
    rows = [
        [
            task,
            bench,
            str(s.get("n_prob", 0)),
            *(_fmt(s.get(f)) for f in FIGURE_TITLES),
            _fmt(s.get("best_threshold"), 3),
            "; ".join(s.get("prob_notes") or []),
        ]
        for task in TASKS
        for bench, s in main[task]["per_benchmark"].items()
    ]
    header = ["Task", "Benchmark", "n_prob", *FIGURE_TITLES.values(), "Best threshold", "Note"]
    out += ["", f"### Details: {label}", "", *_table(header, rows, "llrrrrrrl")]
    return out


def csv_values(s: dict[str, Any], num: Any) -> list[str]:
    """The probability columns of one benchmark row of ``report.csv``."""
    return [num(s.get(k)) for k in PROB_CSV_COLUMNS]


def csv_average_values(block: dict[str, Any], key: str, num: Any) -> list[str]:
    """The probability columns of an average row (``key``: ``average_text`` or ``average_all``)."""
    averages = block.get("prob_averages")
    if not averages:
        return [""] * len(PROB_CSV_COLUMNS)
    return ["", *(num(averages[f][key]) for f in ("auprc", "auroc", "ece", "best_f1")), ""]
