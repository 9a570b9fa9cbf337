"""The harm probability's pure part: label tokens, the verdict position, and p from log-probabilities.

Two tokenizers: a character-level one written here, whose `` harmful`` and `` unharmful`` share their first
token (the space), and the tiny model's byte-level BPE, which writes each as one token.
"""

from __future__ import annotations

import math

import pytest

from gr_vl_verl.harm_prob import (
    HarmProbError,
    LabelTokens,
    check_threshold,
    harm_probabilities,
    label_tokens,
    p_harmful,
    threshold_label,
    token_at,
    verdict_offsets,
    wanted_ids,
)


def char_encode(text: str) -> list[int]:
    return [ord(c) for c in text]


def char_decode(ids) -> str:
    return "".join(chr(i) for i in ids)


ANSWER = "<think>\nwhy\n</think>\n<result>\nAnswers:\nRequest: {p}\nResponse: {r}\n</result>"


def test_labels_that_share_a_first_token_are_compared_where_they_differ():
    labels = label_tokens(char_encode)
    lt = labels["prompt"]
    assert lt.harmful[:1] == lt.unharmful[:1] == (ord(" "),) and lt.shared == 1
    assert lt.choice == (ord("h"), ord("u"))
    assert wanted_ids(labels) == sorted(set(char_encode(" harmful unharmful")))


def test_labels_of_the_tiny_tokenizer_are_single_tokens(tiny_tokenizer):
    labels = label_tokens(lambda t: tiny_tokenizer.encode(t, add_special_tokens=False))
    for lt in labels.values():
        assert lt.shared == 0 and len(lt.harmful) == len(lt.unharmful) == 1
        assert tiny_tokenizer.decode(list(lt.harmful)) == " harmful"


def test_a_tokenizer_that_cannot_tell_the_labels_apart_is_refused():
    with pytest.raises(HarmProbError, match="never differ"):
        LabelTokens((1, 2), (1, 2))
    with pytest.raises(HarmProbError, match="never differ"):
        LabelTokens((1, 2), (1, 2, 3))


def _logprobs(ids, at: dict[int, dict[int, float]], fill: dict[int, float]):
    return [at.get(k, fill) for k in range(len(ids))]


def test_p_is_read_at_the_divergence_position_with_char_tokens():
    text = ANSWER.format(p="harmful", r="unharmful")
    ids = char_encode(text)
    labels = label_tokens(char_encode)
    h, u = ord("h"), ord("u")
    req_pos = text.index("Request: ") + len("Request: ")
    resp_pos = text.index("Response: ") + len("Response: ")
    fill = {h: -50.0, u: -50.0, ord(" "): 0.0}
    logprobs = _logprobs(ids, {req_pos: {h: math.log(0.6), u: math.log(0.2)}, resp_pos: {h: -3.0, u: -1.0}}, fill)
    p = harm_probabilities(ids, logprobs, char_decode, labels)
    assert p["prompt"] == pytest.approx(0.75)
    assert p["response"] == pytest.approx(1 / (1 + math.exp(2.0)))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("no answer at all", {"prompt": None, "response": None}),
        (ANSWER.format(p="harmful", r="None"), {"prompt": True, "response": None}),
        (ANSWER.format(p="Harmful", r="harmless"), {"prompt": None, "response": None}),  # not the label tokens
        ("<result>Request:harmful Response: unharmful</result>", {"prompt": None, "response": True}),
        ("Request: harmful <result>Response: harmful</result>", {"prompt": None, "response": True}),
    ],
)
def test_no_verdict_token_gives_none(text, expected):
    ids = char_encode(text)
    logprobs = [{ord("h"): -1.0, ord("u"): -2.0, ord(" "): 0.0}] * len(ids)
    p = harm_probabilities(ids, logprobs, char_decode, label_tokens(char_encode))
    assert {k: (v if v is None else True) for k, v in p.items()} == expected


def test_verdict_offsets_are_inside_the_first_result_block():
    text = "Request: unharmful <think>t</think><RESULT >Request:  harmful\nResponse: unharmful</result>"
    offsets = verdict_offsets(text)
    assert text[offsets["prompt"] :].startswith("harmful\n")
    assert text[offsets["response"] :].startswith("unharmful</")


def test_positions_are_found_after_multibyte_characters(tiny_tokenizer):
    def encode(t):
        return tiny_tokenizer.encode(t, add_special_tokens=False)

    def decode(ids):
        return tiny_tokenizer.decode(list(ids), skip_special_tokens=True)

    labels = label_tokens(encode)
    text = "<think>\nnaïve 🙂 café — ok\n</think>\n<result>\nAnswers:\nRequest: unharmful\nResponse: harmful\n</result>"
    ids = encode(text)
    assert decode(ids) == text
    h, u = labels["prompt"].choice
    at_u, at_h = ids.index(u), ids.index(h)
    logprobs = [{h: -5.0, u: -5.0}] * len(ids)
    logprobs[at_u] = {h: -2.0, u: -0.5}
    logprobs[at_h] = {h: -0.1, u: -4.0}
    p = harm_probabilities(ids, logprobs, decode, labels)
    assert p["prompt"] == pytest.approx(1 / (1 + math.exp(1.5)))
    assert p["response"] == pytest.approx(1 / (1 + math.exp(-3.9)))
    assert token_at(ids, decode, text.index("unharmful")) == at_u


def test_p_is_exact_finite_and_never_a_silent_zero():
    assert p_harmful({1: 0.0, 2: -1000.0}, (1, 2)) == 1.0
    assert 0.0 <= p_harmful({1: -1000.0, 2: 0.0}, (1, 2)) < 1e-300
    assert p_harmful({1: -700.0, 2: -700.0}, (1, 2)) == 0.5  # both tiny: the ratio, not 0/0
    with pytest.raises(HarmProbError, match=r"label token\(s\) \[2\]"):
        p_harmful({1: -0.1}, (1, 2))
    with pytest.raises(HarmProbError, match="no probability"):
        p_harmful({1: -math.inf, 2: -math.inf}, (1, 2))
    with pytest.raises(HarmProbError, match="positions"):
        harm_probabilities([1, 2], [{}], char_decode, label_tokens(char_encode))


def test_threshold():
    assert threshold_label(0.5, 0.5) == "harmful" and threshold_label(0.49, 0.5) == "unharmful"
    assert threshold_label(None, 0.5) is None
    assert check_threshold(1) == 1.0
    for bad in (-0.1, 1.5, True, "0.5", math.nan):
        with pytest.raises(ValueError, match="threshold"):
            check_threshold(bad)
