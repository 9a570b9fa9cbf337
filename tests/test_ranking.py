"""The probability figures against scikit-learn (average_precision_score, roc_auc_score,
precision_recall_curve) on random and hand-made data, ties and one-class benchmarks included."""

from __future__ import annotations

import random

import pytest
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from gr_vl_verl.evaluation.ranking import (
    average_precision,
    best_f1,
    ece,
    pr_curve,
    probability_scores,
    reliability,
    roc_auc,
)


def _random(seed: int, n: int, levels: int | None):
    rng = random.Random(seed)
    y = [rng.randint(0, 1) for _ in range(n)]
    if levels:  # few distinct scores: many ties
        p = [rng.randint(0, levels) / levels for _ in range(n)]
    else:
        p = [min(1.0, max(0.0, rng.gauss(0.35 + 0.3 * t, 0.2))) for t in y]
    return y, p


@pytest.mark.parametrize(("seed", "n", "levels"), [(0, 50, None), (1, 500, None), (2, 300, 4), (3, 40, 1), (4, 7, 2)])
def test_auprc_and_auroc_match_sklearn(seed, n, levels):
    y, p = _random(seed, n, levels)
    assert average_precision(y, p) == pytest.approx(average_precision_score(y, p), abs=1e-12)
    assert roc_auc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)


def test_hand_made():
    y, p = [1, 0, 1, 0], [0.9, 0.8, 0.4, 0.1]
    assert average_precision(y, p) == pytest.approx((1.0 + 2 / 3) / 2)
    assert roc_auc(y, p) == pytest.approx(0.75)
    assert best_f1(y, p) == pytest.approx((100 * 2 * 2 / (2 * 2 + 1), 0.4))
    # all scores tied: one threshold, precision = prevalence, AUROC one half
    assert average_precision([1, 0, 0], [0.5] * 3) == pytest.approx(1 / 3)
    assert roc_auc([1, 0, 0], [0.5] * 3) == 0.5


@pytest.mark.parametrize(("seed", "levels"), [(5, None), (6, 3)])
def test_pr_curve_points_are_sklearns(seed, levels):
    y, p = _random(seed, 120, levels)
    precision, recall, thresholds = precision_recall_curve(y, p)
    ref = {round(t, 6): (100 * pr, 100 * rc) for pr, rc, t in zip(precision, recall, thresholds, strict=False)}
    curve = pr_curve(y, p)
    assert curve["threshold"][0] == round(max(p), 6) and curve["threshold"][-1] == round(min(p), 6)
    for t, pr, rc in zip(curve["threshold"], curve["precision"], curve["recall"], strict=True):
        if t in ref:  # sklearn drops thresholds past full recall
            assert (pr, rc) == pytest.approx(ref[t], abs=1e-3)
    assert len(pr_curve(*_random(7, 5000, None))["recall"]) <= 201


def test_best_f1_is_the_best_over_thresholds():
    y, p = _random(8, 200, None)

    def f1_at(t):
        tp = sum(1 for a, b in zip(y, p, strict=True) if a and b >= t)
        fp = sum(1 for a, b in zip(y, p, strict=True) if not a and b >= t)
        return 100 * 2 * tp / (tp + fp + sum(y))

    f1, threshold = best_f1(y, p)
    assert f1 == pytest.approx(max(f1_at(t) for t in set(p)))
    assert f1_at(threshold) == pytest.approx(f1)


def test_ece_and_reliability():
    y, p = [1, 0, 1, 1], [0.05, 0.05, 0.95, 1.0]
    bins = reliability(y, p)
    assert [b["count"] for b in bins] == [2, 0, 0, 0, 0, 0, 0, 0, 0, 2]
    assert bins[0]["harmful"] == 0.5 and bins[9]["mean_p"] == pytest.approx(0.975)
    assert ece(y, p) == pytest.approx(100 * (0.5 * 0.45 + 0.5 * 0.025))
    assert ece([1, 0], [1.0, 0.0]) == 0.0


def test_one_class_benchmarks_give_null_with_a_reason():
    only_unharmful = probability_scores([0, 0, 0], [0.1, 0.6, 0.2])
    assert only_unharmful["auprc"] is None and only_unharmful["auroc"] is None and only_unharmful["best_f1"] is None
    assert only_unharmful["ece"] is not None and "no harmful gold label" in only_unharmful["prob_notes"][0]
    only_harmful = probability_scores([1, 1], [0.3, 0.9])
    assert only_harmful["auroc"] is None and only_harmful["auprc"] == 100.0
    assert "no unharmful gold label" in only_harmful["prob_notes"][0]
    empty = probability_scores([], [])
    assert empty["n_prob"] == 0 and empty["auprc"] is None and empty["prob_notes"]


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="length"):
        roc_auc([1], [0.1, 0.2])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        average_precision([1, 0], [0.1, float("nan")])
    with pytest.raises(ValueError, match="0 or 1"):
        ece([2], [0.5])
