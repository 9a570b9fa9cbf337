"""The paper's metric during RL: F1 (x100, ``harmful`` positive) per validation data source and overall.

verl's validation reports the mean of each reward term per data source; F1 is not such a mean. The reward
returns each sample's confusion terms (:data:`gr_vl_verl.reward.score.F1_TERMS`), and F1 comes from their
sums per data source: ``val/f1_<task>/<data_source>``, plus ``val/f1_<task>`` from the sums over every
source (pooled, not a mean of the per-source values).

A source whose counts have no true positive, false positive or false negative (no harmful gold and no
harmful prediction, e.g. the response task of image-only rows) has no F1 (0/0): it is left out rather than
logged as 0, which would read as a collapse on a curve. Pure: no torch, no verl.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from numbers import Real
from typing import Any

from gr_vl_verl.evaluation.metrics import Counts
from gr_vl_verl.reward.score import F1_TERMS

logger = logging.getLogger(__name__)

PREFIX = "val/f1_"


def _term(value: Any) -> int | None:
    """A confusion term as a count; None for a missing or non-numeric one (that sample is left out)."""
    if not isinstance(value, Real):
        return None
    value = float(value)
    return round(value) if math.isfinite(value) else None


def task_counts(
    data_sources: Sequence[Any], infos: Mapping[str, Sequence[Any]], keys: tuple[str, str, str]
) -> dict[str, Counts] | None:
    """Summed ``(tp, fp, fn)`` per data source; None when the terms are not all there (a user's own reward).

    Samples whose terms are missing (verl's V1 trainer pads with None for a sample whose reward returned
    other keys) are skipped.
    """
    columns = [infos.get(key) for key in keys]
    if any(column is None for column in columns):
        return None
    if any(len(column) != len(data_sources) for column in columns):
        lengths = {key: len(column) for key, column in zip(keys, columns, strict=True)}
        logger.warning("not logging %s: %d data sources but term lengths %s", keys, len(data_sources), lengths)
        return None
    per_source: dict[str, Counts] = {}
    for source, *values in zip(data_sources, *columns, strict=True):
        tp, fp, fn = (_term(v) for v in values)
        if tp is None or fp is None or fn is None:
            continue
        counts = per_source.setdefault(str(source), Counts())
        counts.tp += tp
        counts.fp += fp
        counts.fn += fn
    return per_source


def f1_metrics(data_sources: Sequence[Any], infos: Mapping[str, Sequence[Any]]) -> dict[str, float]:
    """``val/f1_<task>/<data_source>`` and ``val/f1_<task>`` for each task whose terms ``infos`` has.

    ``data_sources`` and ``infos`` are what verl's ``_val_metrics_update`` receives: one data source per
    validation sample and, per reward key, one value per sample.
    """
    metrics: dict[str, float] = {}
    for task, keys in F1_TERMS.items():
        per_source = task_counts(data_sources, infos, keys)
        if not per_source:
            continue
        total = Counts()
        for source in sorted(per_source):
            counts = per_source[source]
            total.tp, total.fp, total.fn = total.tp + counts.tp, total.fp + counts.fp, total.fn + counts.fn
            if counts.f1_defined:
                metrics[f"{PREFIX}{task}/{source}"] = counts.f1
        if total.f1_defined:
            metrics[f"{PREFIX}{task}"] = total.f1
    return metrics
