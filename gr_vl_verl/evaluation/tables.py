"""The layout of the score folder's tables, which the report and the charts both read.

One place says which columns a task has (the paper's order, the two averages placed as there), what a cell
holds and how runs are named, so ``report.md``, ``report.csv`` and the charts cannot disagree. The report
module imports this and the charts; the charts import only this.

The harm-probability part (AUPRC, AUROC, ECE and best F1 in ``report.md`` and ``report.csv``) is present only
when a run's predictions carried ``p_harmful``; a report without them is unchanged. Figures are x100 like F1;
``best_threshold`` is a probability.
"""

from __future__ import annotations

from typing import Any

from gr_vl_verl.evaluation.metrics import benchmark_order
from gr_vl_verl.evaluation.predictions import TASKS

AVERAGE_TEXT, AVERAGE_ALL = "Average (Text)", "Average (All)"
TASK_TITLES = {"prompt": "Prompt harmfulness detection", "response": "Response harmfulness detection"}


def run_labels(runs: list[dict[str, Any]]) -> list[str]:
    """Each run's name; a name already taken gets ``#2``, ``#3``… so tables and legends stay unambiguous."""
    labels: list[str] = []
    for run in runs:
        label, k = run["name"], 1
        while label in labels:
            k += 1
            label = f"{run['name']} #{k}"
        labels.append(label)
    return labels


def table_columns(task: str, runs: list[dict[str, Any]]) -> list[str]:
    """Benchmarks of ``task`` over all runs in the paper's layout, with the two averages placed as there."""
    is_text: dict[str, bool] = {}
    for run in runs:
        for bench, s in run[task]["per_benchmark"].items():
            is_text[bench] = is_text.get(bench, False) or s.get("modality") == "text"
    names = benchmark_order(task, is_text, is_text)
    if not names:
        return []
    n_text = sum(is_text[b] for b in names)
    return [*names[:n_text], AVERAGE_TEXT, *names[n_text:], AVERAGE_ALL]


def cell(run: dict[str, Any], task: str, column: str) -> float | None:
    """A table cell: a benchmark's F1 or an average; None where the run has no such number."""
    block = run[task]
    if column == AVERAGE_TEXT:
        return block.get("average_text")
    if column == AVERAGE_ALL:
        return block.get("average_all")
    entry = block["per_benchmark"].get(column)
    return entry["f1"] if entry else None


# --------------------------------------------------------------------------------------------------
# Harm probability
# --------------------------------------------------------------------------------------------------
PROB_CSV_COLUMNS = ("n_prob", "auprc", "auroc", "ece", "best_f1", "best_threshold")
FIGURE_TITLES = {"auprc": "AUPRC", "auroc": "AUROC", "ece": "ECE", "best_f1": "Best F1"}


def has_probabilities(run: dict[str, Any]) -> bool:
    """Whether a report holds probability figures (its predictions had ``p_harmful``)."""
    return any("prob_averages" in (run.get(task) or {}) for task in TASKS)


def fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def md_table(header: list[str], rows: list[list[str]], align: str) -> list[str]:
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
                + [fmt(averages[f][k]) for f in FIGURE_TITLES for k in ("average_text", "average_all")]
            )
        if rows:
            header = ["Run", "n_prob"] + [f"{t} ({k})" for t in FIGURE_TITLES.values() for k in ("Text", "All")]
            out += ["", f"### {TASK_TITLES[task]}", "", *md_table(header, rows, "lr" + "r" * 8)]
    label, main = runs_with[0]
    rows = [
        [
            task,
            bench,
            str(s.get("n_prob", 0)),
            *(fmt(s.get(f)) for f in FIGURE_TITLES),
            fmt(s.get("best_threshold"), 3),
            "; ".join(s.get("prob_notes") or []),
        ]
        for task in TASKS
        for bench, s in main[task]["per_benchmark"].items()
    ]
    header = ["Task", "Benchmark", "n_prob", *FIGURE_TITLES.values(), "Best threshold", "Note"]
    out += ["", f"### Details: {label}", "", *md_table(header, rows, "llrrrrrrl")]
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
