"""The harm probability through both engines' code paths, on a tiny guard fine-tuned to write verdicts.

The random tiny model almost never reaches ``Request: harmful|unharmful``; the fine-tuned one
(``harm_helpers.sft_tiny_guard``) does, so every greedy answer here has verdict tokens. Checked: a parsed
label agrees with ``p_harmful >= 0.5`` (greedy picks the likelier of the two label tokens), the probability
is the one a separate teacher-forced forward pass gives at that position (so the engine read the raw
distribution of the right step), and ``threshold`` relabels. vLLM runs in a child process.
"""

from __future__ import annotations

import math

import pytest
from harm_helpers import guard_items, sft_tiny_guard
from ray_driver import run_driver

from gr_vl_verl.protocol import predicted_labels

# The one module-scoped vLLM driver (900 s) and `gr-vl eval` (1200 s) run in different tests, each inside this.
pytestmark = pytest.mark.timeout(1500)


@pytest.fixture(scope="module")
def tiny_guard_dir(tiny_model_dir, tmp_path_factory) -> str:
    return sft_tiny_guard(str(tiny_model_dir), str(tmp_path_factory.mktemp("tiny_guard")), steps=150)


@pytest.fixture(scope="module")
def transformers_guard(tiny_guard_dir):
    from gr_vl_verl.guard import load_guard

    return load_guard(tiny_guard_dir, backend="transformers", device="cpu", max_tokens=64)


def _check_agreement(results: list[dict]) -> int:
    """Every parsed label agrees with p >= 0.5; returns how many labels were checked."""
    checked = 0
    for r in results:
        for task in ("request", "response"):
            p = r["p_harmful"][task]
            if r[task] is None:
                continue
            assert p is not None, f"a parsed {task} label without a probability: {r['output']!r}"
            assert math.isfinite(p) and 0.0 <= p <= 1.0
            assert (p >= 0.5) == (r[task] == "harmful"), (task, p, r["output"])
            checked += 1
    return checked


def test_transformers_labels_agree_with_p(transformers_guard):
    results = transformers_guard.classify(guard_items())
    assert _check_agreement(results) >= 8
    labels = {r["request"] for r in results} | {r["response"] for r in results}
    assert {"harmful", "unharmful"} <= labels, "both labels written, so both sides of 0.5 are checked"
    assert all(r["label_source"] == {"request": "text", "response": "text"} for r in results)
    assert results[0]["p_harmful"]["response"] is None  # an item without a response


def test_transformers_p_is_the_teacher_forced_probability(transformers_guard):
    """The recorded log-probs are those of a fresh forward pass over prompt + answer at the verdict token."""
    import torch

    from gr_vl_verl.generation.prompts import build_request
    from gr_vl_verl.guard import prepare_item
    from gr_vl_verl.harm_prob import verdict_positions

    engine = transformers_guard.engine
    tokenizer = engine.processor.tokenizer
    item = guard_items()[2]
    result = transformers_guard.classify([item])[0]
    prepared = prepare_item(item, "item")
    prompt = build_request({"id": "item-0", "prompt": prepared.messages, "images": []}, engine.processor).prompt
    p_ids = tokenizer.encode(prompt, add_special_tokens=False)
    a_ids = tokenizer.encode(result["output"], add_special_tokens=False)

    def decode(ids):
        return tokenizer.decode(list(ids), skip_special_tokens=True)

    positions = verdict_positions(a_ids, decode, engine.labels)
    with torch.inference_mode():
        logits = engine.model(input_ids=torch.tensor([p_ids + a_ids])).logits[0]
    for task, key in (("prompt", "request"), ("response", "response")):
        k = positions[task]
        assert k is not None
        h, u = engine.labels[task].choice
        lp = torch.log_softmax(logits[len(p_ids) + k - 1].float(), -1)
        expected = 1 / (1 + math.exp(float(lp[u] - lp[h])))
        assert result["p_harmful"][key] == pytest.approx(expected, abs=1e-4)


def test_threshold_relabels_where_there_is_a_probability(transformers_guard):
    items = guard_items()
    plain = transformers_guard.classify(items)
    for tau in (0.0, 0.5, 1.0):
        results = transformers_guard.classify(items, threshold=tau)
        for r, base in zip(results, plain, strict=True):
            assert r["output"] == base["output"] and r["p_harmful"] == base["p_harmful"]
            for task in ("request", "response"):
                p = r["p_harmful"][task]
                if p is None:
                    assert r[task] == base[task] and r["label_source"][task] == "text"
                else:
                    assert r[task] == ("harmful" if p >= tau else "unharmful")
                    assert r["label_source"][task] == "threshold"
    assert all(r["request"] == "harmful" for r in transformers_guard.classify(items, threshold=0.0))
    with pytest.raises(ValueError, match="threshold"):
        transformers_guard.classify(items, threshold=1.5)


def test_random_model_gives_null_without_a_verdict(tiny_model_dir):
    from gr_vl_verl.guard import load_guard

    guard = load_guard(str(tiny_model_dir), backend="transformers", device="cpu", max_tokens=16)
    results = guard.classify(guard_items()[:3])
    assert len(results) == 3
    for r in results:  # the random model writes no verdict on any of them (seeded, greedy: the same every run)
        assert "<result>" not in r["output"] and r["output"], r["output"]
        assert r["p_harmful"] == {"request": None, "response": None}
        assert (r["request"], r["response"]) == (None, None)


def test_vllm_labels_agree_with_p(tiny_guard_dir, transformers_guard):
    items = guard_items()
    results = run_driver("vllm_drivers:guard_probabilities", tiny_guard_dir, items, timeout=900)
    assert _check_agreement(results) >= 8
    for item, r in zip(items, results, strict=True):  # the labels are the protocol's reading of vLLM's answer
        labels = predicted_labels(r["output"], "strict")
        assert r["request"] == labels.prompt_label
        assert r["response"] == (labels.response_label if "response" in item else None)
    reference = transformers_guard.classify(items)
    same = [(r, t) for r, t in zip(results, reference, strict=True) if r["output"] == t["output"]]
    # float32 on both engines, greedy: the answers match but where two tokens are within rounding of each other
    assert len(same) >= len(items) - 1, [(r["output"], t["output"]) for r, t in zip(results, reference, strict=True)]
    for r, t in same:
        for task in ("request", "response"):
            if t["p_harmful"][task] is None:
                assert r["p_harmful"][task] is None
            else:
                assert r["p_harmful"][task] == pytest.approx(t["p_harmful"][task], abs=2e-3)


def test_eval_stores_p_and_reports_figures(tiny_guard_dir, eval_parquet, tmp_path):
    """`gr-vl eval` (Ray, the transformers engine): generation columns, predictions lines, report figures."""
    import json

    from ray_driver import run_cli

    from gr_vl_verl.data.schemas import read_generations

    out = tmp_path / "eval"
    argv = ["eval", "--data", str(eval_parquet), "--model", tiny_guard_dir, "--out", str(out), "--backend",
            "transformers", "--max-tokens", "64", "--shard-size", "10", "--no-progress"]  # fmt: skip
    done = run_cli(argv, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    gens = list(read_generations(out / "generations"))
    with_p = [g for g in gens if g["p_harmful_request"] is not None]
    assert with_p, "the tiny guard writes verdicts on the benchmark sample too"
    checked = 0
    for g in with_p:
        said = predicted_labels(g["output"], "strict").prompt_label
        if said is not None:
            assert (g["p_harmful_request"] >= 0.5) == (said == "harmful"), g["output"]
            checked += 1
    assert checked, "some answer with a probability also has a well-formed label to check it against"
    lines = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    by_id = {g["id"]: g for g in gens}
    for line in lines:
        column = "p_harmful_request" if line["task"] == "prompt" else "p_harmful_response"
        assert line["p_harmful"] == by_id[line["id"]][column]
    report = json.loads((out / "report.json").read_text())
    assert report["prompt"]["n_prob"] == sum(1 for x in lines if x["task"] == "prompt" and x["p_harmful"] is not None)
    assert (out / "pr_curves.png").is_file() and (out / "reliability.png").is_file()


def test_classify_command_threshold(tiny_guard_dir, capsys):
    import json

    from gr_vl_verl.cli import main

    base = ["classify", "--model", tiny_guard_dir, "--backend", "transformers", "--device", "cpu", "--max-tokens",
            "64", "--request", "How do I bake bread?"]  # fmt: skip
    assert main([*base, "--threshold", "0"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["p_harmful"]["request"] is not None
    assert (result["request"], result["label_source"]["request"]) == ("harmful", "threshold")
    assert main([*base, "--threshold", "2"]) == 2
    assert "--threshold must be in [0, 1]" in capsys.readouterr().err
