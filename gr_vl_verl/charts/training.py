"""Training curves of verl runs, several runs overlaid, from the metrics files verl's ``file`` logger writes.

One panel per family of metrics a person checks first when a guard's RL run goes wrong: the reward and each
reward term, accuracy and format rate, response length, the clip range (pushed by the driver and applied in the
workers' loss), the policy loss, entropy, validation F1 and, for SFT runs, the loss. A panel no run has data for
is left out, so one function draws SFT and GRPO runs alike.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from gr_vl_verl.charts import Figure, png

Metrics = Mapping[int, Mapping[str, Any]]

#: (title, exact metric names) per panel; ``*`` ends a prefix. Order is the figure's reading order.
PANELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Reward (mean score)", ("critic/score/mean", "critic/rewards/mean")),
    (
        "Accuracy and format rate",
        ("reward/acc/mean", "reward/prompt_acc/mean", "reward/response_acc/mean", "reward/format/mean"),
    ),  # fmt: skip
    (
        "Reward terms",
        (
            "reward/r_safety/mean",
            "reward/length_norm/mean",
            "reward/length_scale/mean",
            "reward/truncated/mean",
            "reward/think_ok/mean",
            "reward/result_ok/mean",
        ),
    ),  # fmt: skip
    ("Response length (tokens)", ("response_length/mean", "response_length/max")),
    ("Clip range ε", ("actor/clip_eps_low", "actor/clip_eps_high", "actor/loss_clip_low", "actor/loss_clip_high")),
    ("Policy loss", ("actor/pg_loss",)),
    ("Entropy", ("actor/entropy",)),
    ("Validation F1", ("val/f1_prompt", "val/f1_response")),
    ("SFT loss", ("train/loss", "val/loss")),
)
SHORT = {"critic/": "", "reward/": "", "actor/": "", "/mean": "", "response_length/": "", "train/": "train ",
         "val/": "val "}  # fmt: skip


def _short(key: str) -> str:
    for old, new in SHORT.items():
        key = key.replace(old, new)
    return key


def _series(metrics: Metrics, key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for step in sorted(metrics):
        value = metrics[step].get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            xs.append(int(step))
            ys.append(float(value))
    return xs, ys


def panels_with_data(runs: Sequence[Metrics]) -> list[tuple[str, list[str]]]:
    """The panels some run has a finite value for, each with the metric names that have data."""
    out = []
    for title, keys in PANELS:
        present = [k for k in keys if any(_series(m, k)[0] for m in runs)]
        if present:
            out.append((title, present))
    return out


def training_curves(runs: Sequence[Metrics], labels: Sequence[str], columns: int = 3) -> bytes:
    """A grid of panels, one colour per run and one line style per metric in a panel (PNG bytes)."""
    return png(curves_figure(runs, labels, columns))


#: A panel whose largest value is this many times its typical one (median of the non-zero magnitudes) is drawn on
#: a symmetric log scale: one run's outlier step (a reward of -36,864 beside -1) would flatten every other line.
SPREAD_FOR_LOG = 100.0


def curves_figure(runs: Sequence[Metrics], labels: Sequence[str], columns: int = 3) -> Figure:
    """The figure :func:`training_curves` draws. With several runs, one legend names the runs (their colours)
    above the panels, and each panel's legend only its metrics (their line styles), so that six runs of six
    metrics do not make a 36-line legend that hides the panel."""
    from matplotlib.lines import Line2D

    if len(runs) != len(labels):
        raise ValueError(f"{len(runs)} runs but {len(labels)} labels")
    panels = panels_with_data(runs)
    if not panels:
        raise ValueError("no run has any of the metrics the curves draw (is this a verl metrics file?)")
    columns = min(columns, len(panels))
    rows = math.ceil(len(panels) / columns)
    fig = Figure(figsize=(4.4 * columns, 3.1 * rows))
    axes = fig.subplots(rows, columns, squeeze=False)
    several = len(runs) > 1
    colours = [f"C{i % 10}" for i in range(len(runs))]
    styles = ("-", "--", ":", "-.", (0, (6, 1, 1, 1, 1, 1)), (0, (1, 4)))  # six: the reward terms' panel
    for i, (title, keys) in enumerate(panels):
        ax = axes[i // columns][i % columns]
        values: list[float] = []
        for run, colour in zip(runs, colours, strict=True):
            for j, key in enumerate(keys):
                xs, ys = _series(run, key)
                if not xs:
                    continue
                values += ys
                ax.plot(xs, ys, color=colour if several else f"C{j}", linestyle=styles[j % len(styles)],
                        marker="o" if len(xs) <= 30 else None, markersize=3, linewidth=1.3,
                        label=None if several else _short(key))  # fmt: skip
        if _spread(values) > SPREAD_FOR_LOG:
            ax.set_yscale("symlog", linthresh=_typical(values))
            title += " (symlog)"
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if several and len(keys) > 1:
            handles = [Line2D([], [], color="0.3", linestyle=styles[j % len(styles)], label=_short(key))
                       for j, key in enumerate(keys)]  # fmt: skip
            ax.legend(handles=handles, fontsize=6, loc="best")
        elif not several:
            ax.legend(fontsize=6, loc="best")
    for k in range(len(panels), rows * columns):
        axes[k // columns][k % columns].set_visible(False)
    top = 1.0
    if several:
        handles = [Line2D([], [], color=c, linewidth=2, label=label) for c, label in zip(colours, labels, strict=True)]
        ncol = min(len(runs), 6)
        fig.legend(handles=handles, loc="upper center", ncol=ncol, fontsize=8, frameon=False)
        top = 1.0 - (0.35 * math.ceil(len(runs) / ncol)) / (3.1 * rows)
    fig.tight_layout(rect=(0, 0, 1, top))
    return fig


def _typical(values: Sequence[float]) -> float:
    nonzero = sorted(abs(v) for v in values if v != 0)
    return nonzero[len(nonzero) // 2] if nonzero else 1.0


def _spread(values: Sequence[float]) -> float:
    return max((abs(v) for v in values), default=0.0) / _typical(values)
