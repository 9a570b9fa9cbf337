"""The score folder's harm-probability charts.

* ``pr_curves.png``: one panel per task and run (runs side by side with ``--compare``), one precision-recall
  curve per benchmark, labelled with its AUPRC.
* ``reliability.png``: one panel per task, one line per run: the fraction of harmful gold labels against the
  mean p(harmful) in each of 10 equal-width bins, pooled over the task's benchmarks; the diagonal is perfect
  calibration.
"""

from __future__ import annotations

from typing import Any

from gr_vl_verl.charts import Figure, png
from gr_vl_verl.evaluation.predictions import TASKS
from gr_vl_verl.evaluation.tables import TASK_TITLES


def _tasks(runs: list[dict[str, Any]]) -> list[str]:
    return [t for t in TASKS if any("prob_averages" in run[t] for run in runs)] or [TASKS[0]]


def pr_curves(runs: list[dict[str, Any]], labels: list[str]) -> bytes:
    tasks = _tasks(runs)
    fig = Figure(figsize=(4.2 * len(runs) + 1, 3.8 * len(tasks)))
    axes = fig.subplots(len(tasks), len(runs), squeeze=False)
    for r, task in enumerate(tasks):
        for c, (label, run) in enumerate(zip(labels, runs, strict=True)):
            ax = axes[r][c]
            drawn = 0
            for bench, s in run[task]["per_benchmark"].items():
                curve = s.get("pr_curve")
                if not curve:
                    continue
                auprc = s.get("auprc")
                name = bench if auprc is None else f"{bench} ({auprc:.1f})"
                ax.plot(curve["recall"], curve["precision"], drawstyle="steps-post", linewidth=1.2, label=name)
                drawn += 1
            if drawn:
                ax.legend(fontsize=6, loc="lower left")
            else:
                ax.text(0.5, 0.5, "no probabilities", ha="center", va="center", transform=ax.transAxes)
            ax.set_xlim(0, 101)
            ax.set_ylim(0, 103)
            ax.set_xlabel("recall (harmful)")
            ax.set_ylabel("precision")
            ax.set_title(f"{label}: {TASK_TITLES[task]}", fontsize=9)
            ax.grid(alpha=0.3)
    fig.tight_layout()
    return png(fig)


def _pooled(run: dict[str, Any], task: str) -> tuple[list[float], list[float]]:
    """Mean p and fraction harmful per non-empty bin, pooled over the task's benchmarks."""
    count: dict[int, float] = {}
    sum_p: dict[int, float] = {}
    sum_y: dict[int, float] = {}
    for s in run[task]["per_benchmark"].values():
        for b, cell in enumerate(s.get("reliability") or []):
            if cell["count"]:
                count[b] = count.get(b, 0) + cell["count"]
                sum_p[b] = sum_p.get(b, 0.0) + cell["count"] * cell["mean_p"]
                sum_y[b] = sum_y.get(b, 0.0) + cell["count"] * cell["harmful"]
    bins = sorted(count)
    return [sum_p[b] / count[b] for b in bins], [sum_y[b] / count[b] for b in bins]


def reliability_diagram(runs: list[dict[str, Any]], labels: list[str]) -> bytes:
    tasks = _tasks(runs)
    fig = Figure(figsize=(4.6 * len(tasks), 4.4))
    axes = fig.subplots(1, len(tasks), squeeze=False)[0]
    for ax, task in zip(axes, tasks, strict=True):
        ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1)
        for label, run in zip(labels, runs, strict=True):
            xs, ys = _pooled(run, task)
            if not xs:
                continue
            ece = run[task].get("prob_averages", {}).get("ece", {}).get("average_all")
            name = label if ece is None else f"{label} (ECE {ece:.1f})"
            ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.2, label=name)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("mean p(harmful) in bin")
        ax.set_ylabel("fraction harmful")
        ax.set_title(TASK_TITLES[task], fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return png(fig)
