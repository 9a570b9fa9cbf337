"""The score folder's F1 charts.

* F1 per benchmark: one panel per task, one bar group per benchmark (and per average), one bar per run.
* Average F1 against mean output tokens: one point per run, the paper's efficiency comparison of
  GuardReasoner-VL with its Eco variant.
"""

from __future__ import annotations

import math
from typing import Any

from gr_vl_verl.charts import Figure, png
from gr_vl_verl.evaluation.predictions import TASKS
from gr_vl_verl.evaluation.tables import AVERAGE_ALL, AVERAGE_TEXT, TASK_TITLES, cell, table_columns


def f1_per_benchmark(runs: list[dict[str, Any]], labels: list[str]) -> bytes:
    """Grouped bars of F1 per benchmark and average, one panel per task that has scores."""
    tasks = [t for t in TASKS if table_columns(t, runs)] or [TASKS[0]]
    widest = max(len(table_columns(t, runs)) for t in tasks)
    fig = Figure(figsize=(max(6.0, 1.1 * widest * max(1, len(runs)) ** 0.5 + 2), 3.6 * len(tasks)))
    axes = fig.subplots(len(tasks), 1, squeeze=False)[:, 0]
    width = 0.8 / max(1, len(runs))
    for ax, task in zip(axes, tasks, strict=True):
        columns = table_columns(task, runs)
        for j, column in enumerate(columns):
            if column in (AVERAGE_TEXT, AVERAGE_ALL):
                ax.axvspan(j - 0.5, j + 0.5, color="0.92", zorder=0)
        for i, (label, run) in enumerate(zip(labels, runs, strict=True)):
            values = [cell(run, task, c) for c in columns]
            xs = [j + (i - (len(runs) - 1) / 2) * width for j in range(len(columns))]
            bars = ax.bar(xs, [math.nan if v is None else v for v in values], width=width, label=label, zorder=2)
            if len(runs) <= 3:
                ax.bar_label(bars, fmt="%.1f", fontsize=6, padding=1)
        ax.set_xticks(range(len(columns)))
        ax.set_xticklabels(columns, rotation=30, ha="right", fontsize=8)
        ax.set_xlim(-0.5, max(len(columns), 1) - 0.5)
        ax.set_ylim(0, 112)
        ax.set_yticks(range(0, 101, 20))
        ax.set_ylabel("F1 (harmful positive)")
        ax.set_title(TASK_TITLES[task], fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        if not columns:
            ax.text(0.5, 0.5, "no scores", ha="center", va="center", transform=ax.transAxes)
    axes[0].legend(fontsize=8, loc="upper right", ncols=min(len(runs), 4))
    fig.tight_layout()
    return png(fig)


def f1_vs_tokens(runs: list[dict[str, Any]], labels: list[str]) -> bytes:
    """One point per run: mean output tokens (x) against average F1 over both tasks (y)."""
    fig = Figure(figsize=(6.0, 4.5))
    ax = fig.subplots()
    plotted = 0
    for label, run in zip(labels, runs, strict=True):
        x, y = run["tokens"].get("mean_output_tokens"), run.get("average_f1")
        if x is None or y is None:
            continue
        ax.scatter([x], [y], s=40, label=label)
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
        plotted += 1
    if not plotted:
        ax.text(0.5, 0.5, "no run has both tokens and F1", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("mean output tokens")
    ax.set_ylabel("average F1 (prompt and response, All)")
    ax.set_title("F1 against output length", fontsize=10)
    ax.grid(alpha=0.3)
    ax.margins(x=0.2, y=0.2)
    fig.tight_layout()
    return png(fig)
