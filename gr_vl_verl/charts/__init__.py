"""Every figure the project draws, one module per family, with matplotlib's non-interactive Agg backend:

* :mod:`~gr_vl_verl.charts.scores`: F1 per benchmark, F1 against output tokens (the score folder);
* :mod:`~gr_vl_verl.charts.probability`: precision-recall curves and the reliability diagram (the score folder,
  when predictions carry p_harmful);
* :mod:`~gr_vl_verl.charts.training`: training curves of verl runs from their metrics files (``gr-vl curves``).

Each returns PNG bytes with the metadata emptied (matplotlib writes its version as ``Software``), so the same
numbers give the same bytes on the same installation. :func:`report_figures` is all a score folder needs.
"""

from __future__ import annotations

import io
from typing import Any

import matplotlib

matplotlib.use("Agg")

from matplotlib.figure import Figure  # noqa: E402  (after choosing the backend)

DPI = 100


def png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def report_figures(runs: list[dict[str, Any]], labels: list[str], *, probabilities: bool) -> dict[str, bytes]:
    """The score folder's charts by file name; the harm-probability pair only when ``probabilities``."""
    from gr_vl_verl.charts import probability, scores

    figures = {
        "f1_per_benchmark.png": scores.f1_per_benchmark(runs, labels),
        "f1_vs_tokens.png": scores.f1_vs_tokens(runs, labels),
    }
    if probabilities:
        figures["pr_curves.png"] = probability.pr_curves(runs, labels)
        figures["reliability.png"] = probability.reliability_diagram(runs, labels)
    return figures


__all__ = ["DPI", "Figure", "png", "report_figures"]
