"""The paper's F1 during RL: the reward's confusion terms and the trainers' ``val/f1_*`` metrics.

Real: the reward's ``compute_score``, verl 0.9.1's ``_val_metrics_update`` (legacy ``RayPPOTrainer`` and the V1
``PPOTrainerSync``, through the plugin's trainer classes, built with ``__new__`` as verl's CPU tests build
trainers), verl's ``process_validation_metrics`` under it, and scikit-learn's ``f1_score`` as the reference.
The per-sample term lists are stacked the way verl stacks ``reward_extra_info`` (by the first sample's keys).
"""

from __future__ import annotations

import logging
import random

import numpy as np
import pytest
from sklearn.metrics import f1_score as sk_f1
from verl.trainer.ppo.ray_trainer import RayPPOTrainer

from gr_vl_verl.evaluation.metrics import Counts
from gr_vl_verl.protocol import LABELS, label_correct, label_outcome, predicted_labels
from gr_vl_verl.reward.score import F1_TERMS, SCORE_KEYS, compute_score
from gr_vl_verl.trainer.dynamic_clip import GRRayPPOTrainer, v1_trainer_cls
from gr_vl_verl.trainer.val_f1 import f1_metrics

H, U = "harmful", "unharmful"


def out(req: str, res: str, think: bool = True) -> str:
    body = f"<result>\nAnswers:\nRequest: {req}\nResponse: {res}\n</result>"
    return ("<think>\nreasoning\n</think>\n" if think else "") + body


def terms(solution: str, prompt: str, response: str | None, mode: str) -> tuple[tuple[float, ...], ...]:
    res = compute_score(
        "src", solution, {"prompt_label": prompt, "response_label": response}, format_mode=mode, length_unit="chars"
    )
    return tuple(tuple(res[k] for k in F1_TERMS[task]) for task in ("prompt", "response"))


TP, FP, FN, NONE = (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (0.0, 0.0, 0.0)

# (answer, gold prompt, gold response, paper-mode terms, compat-mode terms), each (prompt, response) — by hand.
CASES = [
    (out(H, U), H, U, (TP, NONE), (TP, NONE)),  # right on both; a true negative is in no term
    (out(U, H), H, U, (FN, FP), (FN, FP)),  # wrong on both
    (out(H, H), H, H, (TP, TP), (TP, TP)),
    # no <think>: the paper's gate credits no label (the wrong one); compat only needs <result>
    (out(H, U, think=False), H, U, (FN, FP), (TP, NONE)),
    (out(U, U, think=False), U, H, (FP, FN), (NONE, FN)),
    # <think> after the verdict does not count in the paper's reading; the released reading takes any order
    (out(H, H).split("\n</think>\n")[1] + "<think>late</think>", H, H, (FN, FN), (TP, TP)),
    # "Request : harmful": the tolerant parser reads it, the released pattern (`Request:\s*`) does not
    ("<think>r</think><result>Request : harmful\nResponse : harmful</result>", H, H, (TP, TP), (FN, FN)),
    # no response to judge: no response term, whatever the answer says (the reward still credits "None")
    (out(H, "None"), H, None, (TP, NONE), (TP, NONE)),
    (out(U, H), U, None, (NONE, NONE), (NONE, NONE)),
    # nothing to read
    ("I cannot help with that.", H, U, (FN, FP), (FN, FP)),
    ("", U, H, (FP, FN), (FP, FN)),
    ("<think>The request asks for", H, None, (FN, NONE), (FN, NONE)),
]


@pytest.mark.parametrize(("answer", "prompt", "response", "paper", "compat"), CASES)
def test_reward_terms_count_the_label_the_reward_credits(answer, prompt, response, paper, compat):
    assert terms(answer, prompt, response, "paper") == paper
    assert terms(answer, prompt, response, "compat") == compat


@pytest.mark.parametrize(("answer", "prompt", "response"), [c[:3] for c in CASES])
def test_paper_mode_terms_are_what_strict_evaluation_counts(answer, prompt, response):
    """The reward's paper reading and ``gr-vl eval``'s strict mode give the same cells, through the same rule."""
    labels = predicted_labels(answer, "strict")
    want = []
    for pred, gold in ((labels.prompt_label, prompt), (labels.response_label, response)):
        cell = label_outcome(pred, gold)
        want.append(tuple(float(cell == c) for c in ("tp", "fp", "fn")))
    assert terms(answer, prompt, response, "paper") == tuple(want)


def test_terms_are_in_every_result_in_a_fixed_order():
    res = compute_score(None, "x", {"prompt_label": H, "response_label": None}, length_unit="chars")
    assert tuple(res) == SCORE_KEYS
    assert [k for k in SCORE_KEYS if k in F1_TERMS["prompt"] + F1_TERMS["response"]] == [
        "prompt_tp",
        "prompt_fp",
        "prompt_fn",
        "response_tp",
        "response_fp",
        "response_fn",
    ]


@pytest.mark.parametrize("gold", [H, U, None])
@pytest.mark.parametrize("pred", [H, U, None])
def test_outcome_rule_agrees_with_the_correctness_rule(pred, gold):
    cell = label_outcome(pred, gold)
    if gold is None:
        assert cell is None
    else:
        assert (cell in ("tp", "tn")) == label_correct(pred, gold)
        assert (cell in ("tp", "fn")) == (gold == H)


def test_evaluation_counts_refuse_a_missing_gold_label():
    with pytest.raises(ValueError, match="gold label"):
        Counts().add(None, H)


# --------------------------------------------------------------------------------------------------
# A validation set as verl hands it to _val_metrics_update
# --------------------------------------------------------------------------------------------------
SOURCES = ("guardreasoner_vl/text", "guardreasoner_vl/image", "guardreasoner_vl/text_image", "all_clean")


def validation_set(seed: int, n_prompts: int = 80, n: int = 1) -> dict:
    """``n`` answers per prompt (``val_kwargs.n``, interleaved) with the labels each answer gives (None: an
    answer the format gate refuses or without labels), and verl's stacked reward terms."""
    rng = random.Random(seed)
    sources, uids, infos, gold, said = [], [], [], [], []
    for i in range(n_prompts):
        source = SOURCES[i % len(SOURCES)]
        prompt = U if source == "all_clean" else rng.choice(LABELS)
        response = None if source in ("guardreasoner_vl/image", "all_clean") else rng.choice(LABELS)
        for _ in range(n):
            kind = "right" if source == "all_clean" else rng.choice(["right", "random", "random", "no_think", "junk"])
            if kind == "right":
                labels = (prompt, response or U)
            else:
                labels = (rng.choice(LABELS), rng.choice(LABELS))
            text = {
                "right": out(labels[0], labels[1] if response else "None"),
                "random": out(*labels),
                "no_think": out(*labels, think=False),
                "junk": f"Request: {labels[0]}",
            }[kind]
            sources.append(source)
            uids.append(f"uid-{i}")
            truth = {"prompt_label": prompt, "response_label": response}
            info = compute_score(source, text, truth, {"response_tokens": rng.randint(1, 300)})
            infos.append(info | {"acc": info["r_safety"], "truncated": 0.0})  # what the manager adds
            gold.append((prompt, response))
            said.append(labels if kind in ("right", "random") else (None, None))
    stacked = {"reward": [info["score"] for info in infos]} | {k: [info[k] for info in infos] for k in infos[0]}
    return {"sources": sources, "uids": uids, "infos": stacked, "gold": gold, "said": said}


def sklearn_f1(gold: list, said: list, task: int) -> float | None:
    """F1 x100 by scikit-learn, a missing label scored as the opposite of gold; None where it is 0/0."""
    pairs = [(g[task], s[task]) for g, s in zip(gold, said, strict=True) if g[task] is not None]
    y_true = [g for g, _ in pairs]
    y_pred = [s if s is not None else (U if g == H else H) for g, s in pairs]
    if H not in y_true and H not in y_pred:
        return None
    return 100 * sk_f1(y_true, y_pred, pos_label=H, labels=[H, U], zero_division=0)


def expected_f1(data: dict) -> dict[str, float]:
    want = {}
    for t, task in enumerate(("prompt", "response")):
        for source in SOURCES:
            rows = [i for i, s in enumerate(data["sources"]) if s == source]
            value = sklearn_f1([data["gold"][i] for i in rows], [data["said"][i] for i in rows], t)
            if value is not None:
                want[f"val/f1_{task}/{source}"] = value
        value = sklearn_f1(data["gold"], data["said"], t)
        if value is not None:
            want[f"val/f1_{task}"] = value
    return want


def legacy_update(data: dict, trainer_cls=GRRayPPOTrainer) -> dict:
    trainer = trainer_cls.__new__(trainer_cls)
    return trainer._val_metrics_update(np.array(data["sources"], dtype=object), data["uids"], data["infos"], [])


def v1_update(data: dict, plugin: bool = True, **kwargs) -> dict:
    from verl.trainer.ppo.v1 import get_trainer_cls

    cls = v1_trainer_cls("sync") if plugin else get_trainer_cls("sync")
    trainer = cls.__new__(cls)
    return trainer._val_metrics_update(list(data["sources"]), list(data["uids"]), data["infos"], [], **kwargs)


def f1_part(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k.startswith("val/f1_")}


def verl_part(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not k.startswith("val/f1_")}


# verl bootstraps every term of every prompt with several answers (1000 draws each): keep those sets small.
@pytest.mark.parametrize(("seed", "n_prompts", "n"), [(0, 80, 1), (1, 80, 1), (2, 12, 2)])
def test_legacy_trainer_logs_f1_per_source_and_overall_as_sklearn(seed, n_prompts, n):
    data = validation_set(seed, n_prompts, n)
    metrics = legacy_update(data)
    want = expected_f1(data)
    assert f1_part(metrics) == pytest.approx(want, abs=1e-9)
    # 0/0 is left out: the clean source's prompt task, and the response task where no row has a response
    assert "val/f1_prompt/all_clean" not in metrics and "val/f1_response/guardreasoner_vl/image" not in metrics
    assert {f"val/f1_prompt/{s}" for s in SOURCES[:3]} | {"val/f1_prompt", "val/f1_response"} <= set(metrics)
    # verl's own entries are untouched
    assert verl_part(metrics) == pytest.approx(legacy_update(data, RayPPOTrainer))
    for source in SOURCES:
        rows = [i for i, s in enumerate(data["sources"]) if s == source]
        acc = np.mean([data["infos"]["acc"][i] for i in rows])
        assert metrics[f"val-core/{source}/acc/mean@{n}"] == pytest.approx(acc)


def test_v1_trainer_logs_the_same_f1_and_passes_verl_s_arguments_through():
    data = validation_set(7)
    metrics = v1_update(data)
    assert f1_part(metrics) == pytest.approx(expected_f1(data), abs=1e-9)
    assert f1_part(metrics) == pytest.approx(f1_part(legacy_update(data)))
    assert verl_part(metrics) == pytest.approx(v1_update(data, plugin=False))
    # expected_acc_counts reaches verl: a session that never came back counts as acc = 0 there
    expected = {(s, u): 1 for s, u in zip(data["sources"], data["uids"], strict=True)}
    expected[("all_clean", "uid-3")] = 2
    with_missing = v1_update(data, expected_acc_counts=expected)
    assert with_missing == pytest.approx(v1_update(data, plugin=False, expected_acc_counts=expected) | f1_part(metrics))
    assert with_missing["val-core/all_clean/acc/mean@2"] < 1.0 == metrics["val-core/all_clean/acc/mean@1"]


def test_pooled_overall_is_not_a_mean_of_the_sources():
    # text: 1 tp; image: 1 tp, 2 fp. Pooled 2 * 2 / (2 * 2 + 2) = 66.7; the mean of 100 and 50 would be 75.
    sources = ["text", "image", "image", "image"]
    infos = {"prompt_tp": [1.0, 1.0, 0.0, 0.0], "prompt_fp": [0.0, 0.0, 1.0, 1.0], "prompt_fn": [0.0] * 4}
    assert f1_metrics(sources, infos) == pytest.approx(
        {"val/f1_prompt/text": 100.0, "val/f1_prompt/image": 50.0, "val/f1_prompt": 400 / 6}
    )


def test_a_reward_without_the_terms_logs_no_f1_and_does_not_fail():
    data = validation_set(1)
    own = {k: data["infos"][k] for k in ("reward", "acc", "score")}  # a user's own compute_score
    plain = dict(data, infos=own)
    assert legacy_update(plain) == legacy_update(plain, RayPPOTrainer)
    assert v1_update(plain) == v1_update(plain, plugin=False)
    assert not f1_part(legacy_update(plain))
    # only one task's terms: only that task
    prompt_only = dict(data, infos=own | {k: data["infos"][k] for k in F1_TERMS["prompt"]})
    logged = f1_part(legacy_update(prompt_only))
    assert logged and all(k.startswith("val/f1_prompt") for k in logged)


def test_samples_without_terms_are_skipped_and_bad_lengths_log_nothing(caplog):
    # verl's V1 trainer pads a key with None for a sample whose reward did not return it
    sources = ["a", "a", "a"]
    infos = {"prompt_tp": [1.0, None, 0.0], "prompt_fp": [0.0, 1.0, 1.0], "prompt_fn": [0.0, 0.0, np.float32(0)]}
    assert f1_metrics(sources, infos) == pytest.approx({"val/f1_prompt/a": 200 / 3, "val/f1_prompt": 200 / 3})
    with caplog.at_level(logging.WARNING, logger="gr_vl_verl.trainer.val_f1"):
        assert f1_metrics(sources, {k: v[:2] for k, v in infos.items()}) == {}
    assert "not logging" in caplog.text


def test_metric_module_is_pure():
    from purity import heavy_modules_loaded

    modules = ["gr_vl_verl.trainer.val_f1", "gr_vl_verl.reward.score"]
    assert heavy_modules_loaded(modules, ("torch", "verl", "sklearn", "numpy")) == []
