"""Each reward term's batch mean as a training metric, ``reward/<term>/mean``.

verl 0.9.1 logs a reward manager's extra terms only at validation (``val-aux/...``); during training it logs
only the score (``critic/score/*``). The guard's reward is a product of terms (format gate, r_safety, length
factor, truncation), and a run that collapses shows it first in one of them, so the plugin's trainers add the
per-step mean of every numeric term. Samples without a term (a user's reward that returns other keys, V1's
padding) are left out of that term's mean. Pure: no torch, no verl.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from numbers import Real
from typing import Any

PREFIX = "reward/"


def term_means(infos: Iterable[Mapping[str, Any] | None]) -> dict[str, float]:
    """``reward/<term>/mean`` over the samples' reward extra infos (one mapping per sample)."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for info in infos:
        for key, value in (info or {}).items():
            if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(float(value)):
                continue
            sums[key] = sums.get(key, 0.0) + float(value)
            counts[key] = counts.get(key, 0) + 1
    return {f"{PREFIX}{key}/mean": sums[key] / counts[key] for key in sorted(sums)}


def columns_to_rows(columns: Mapping[str, Iterable[Any]]) -> list[dict[str, Any]]:
    """verl's legacy batch keeps each term as a column; the same terms as one mapping per sample."""
    names = list(columns)
    values = [list(columns[name]) for name in names]
    return [dict(zip(names, row, strict=True)) for row in zip(*values, strict=True)] if names else []
