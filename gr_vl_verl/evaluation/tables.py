"""The layout of the score folder's tables, which the report and the charts both read.

One place says which columns a task has (the paper's order, the two averages placed as there), what a cell
holds and how runs are named, so ``report.md``, ``report.csv`` and the charts cannot disagree. The report
module imports this and the charts; the charts import only this.
"""

from __future__ import annotations

from typing import Any

from gr_vl_verl.evaluation.metrics import benchmark_order

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
