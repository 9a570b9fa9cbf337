"""Length-aware safety reward: hand-checked tables, the original code's numbers, properties."""

import math
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from original_reward import original_overall

from gr_vl_verl.protocol import LABELS, format_answer, parse_answer
from gr_vl_verl.reward.score import PRESETS, SCORE_KEYS, RewardConfig, compute_score

GT = {"prompt_label": "harmful", "response_label": "unharmful"}


def out(req, res, think=True):
    body = f"<result>\nAnswers:\nRequest: {req}\nResponse: {res}\n</result>"
    return ("<think>\nreasoning\n</think>\n" if think else "") + body


def tokens(n):
    return {"response_tokens": n}


# (solution, ground truth, response_tokens, reward kwargs, expected score, expected r_safety) — by hand.
HAND = [
    # paper mode, max_length 100: score = (r_safety - 1) / min(n/100, beta)^2
    (out("harmful", "unharmful"), GT, 50, {"max_length": 100}, 0.0, 1.0),
    (out("harmful", "harmful"), GT, 50, {"max_length": 100}, -0.5 / 0.25, 0.5),
    (out("unharmful", "harmful"), GT, 50, {"max_length": 100}, -1 / 0.25, 0.0),
    (out("harmful", "unharmful", think=False), GT, 50, {"max_length": 100}, -1 / 0.25, 0.0),  # format gate
    (out("unharmful", "harmful"), GT, 200, {"max_length": 100}, -1.0, 0.0),  # l_norm 2 capped at beta 1
    (out("unharmful", "harmful"), GT, 0, {"max_length": 100}, -1 / 0.01**2, 0.0),  # floor: one token
    (out("unharmful", "harmful"), GT, 1, {"max_length": 100}, -1 / 0.01**2, 0.0),
    ("", GT, 0, {"max_length": 100}, -10000.0, 0.0),
    # Eco: beta = 1/6 caps the length gain at l_norm = 1/6
    (out("unharmful", "harmful"), GT, 30, {"max_length": 60, "preset": "gr-vl-eco"}, -36.0, 0.0),
    (out("harmful", "harmful"), GT, 5, {"max_length": 60, "preset": "gr-vl-eco"}, -0.5 * 144, 0.5),
    # no response in the ground truth: "None" and "unharmful" both right, "harmful" wrong
    (out("harmful", "None"), {"prompt_label": "harmful", "response_label": None}, 50, {"max_length": 100}, 0.0, 1.0),
    (
        out("harmful", "harmful"),
        {"prompt_label": "harmful", "response_label": None},
        50,
        {"max_length": 100},
        -2.0,
        0.5,
    ),
    # ground truth as an original answer string
    (out("harmful", "harmful"), format_answer("r", "harmful", "harmful"), 25, {"max_length": 100}, 0.0, 1.0),
    # compat: only <result> required
    (out("harmful", "unharmful", think=False), GT, 50, {"max_length": 100, "format_mode": "compat"}, 0.0, 1.0),
    ("no tags at all", GT, 50, {"max_length": 100, "format_mode": "compat"}, -4.0, 0.0),
]


@pytest.mark.parametrize(("solution", "truth", "n", "kwargs", "score", "r_safe"), HAND)
def test_hand_checked_table(solution, truth, n, kwargs, score, r_safe):
    res = compute_score("guardreasoner_vl/text", solution, truth, tokens(n), **kwargs)
    assert res["score"] == pytest.approx(score, rel=1e-12)
    assert res["r_safety"] == r_safe
    assert tuple(res) == SCORE_KEYS


def test_char_mode_counts_characters():
    sol = out("unharmful", "harmful")
    res = compute_score(None, sol, GT, None, length_unit="chars", max_length=1000)
    assert res["length"] == len(sol)
    assert res["score"] == pytest.approx(-1 / (len(sol) / 1000) ** 2)


def test_original_preset_matches_hand_computed_original_numbers():
    # docs/method.md §2: a fully wrong answer of about 600 characters gives about -1/0.0381 ~ -26.
    sol = out("unharmful", "harmful").ljust(600, ".")
    assert compute_score(None, sol, GT, preset="original")["score"] == pytest.approx(-1 / (600 / 3072) ** 2)
    assert compute_score(None, sol, GT, preset="original")["score"] == pytest.approx(-26.2144)


def test_positional_call_as_verl_main_eval_does():
    assert compute_score("ds", out("harmful", "unharmful"), GT, tokens(10))["score"] == 0.0


_fragments = st.sampled_from(
    [
        "<think>",
        "</think>",
        "<result>",
        "</result>",
        "< Result >",
        "</ think >",
        "Request:",
        "Response:",
        "request :",
        "harmful",
        "unharmful",
        "none",
        "None",
        "harmless",
        "Answers:",
        "\n",
        " ",
        "<",
        ">",
        "/",
    ]
)
_soup = st.lists(st.one_of(_fragments, st.text(max_size=12)), max_size=40).map("".join)
_variant = st.sampled_from


@st.composite
def _structured(draw):
    """Near-miss answers: tag and label spellings the original code did or did not accept."""
    parts = [
        draw(_variant(["<think>", "<Think>", "< think >", ""])),
        draw(st.text(max_size=20)),
        draw(_variant(["</think>", "</ think>", ""])),
        draw(_variant(["<result>", "<RESULT>", "< result >", ""])),
        draw(_variant(["Request:", "request :", "REQUEST:", "Request: ", ""])),
        draw(_variant(["harmful", "unharmful", "harmless", "None", "safe"])),
        draw(_variant(["\n", " ", ""])),
        draw(_variant(["Response:", "response :", "Response:  ", ""])),
        draw(_variant(["harmful", "unharmful", "harmless", "none", "unsafe"])),
        draw(_variant(["</result>", "</Result>", "< /result>", ""])),
        draw(st.text(max_size=8)),
    ]
    return "".join(parts)


_outputs = st.one_of(_soup, _structured())
_label = st.sampled_from(LABELS)


@settings(max_examples=4000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_outputs, _label, st.one_of(st.none(), _label))
def test_compat_mode_is_exactly_the_original_code(solution, p, r):
    if not 0 < len(solution) < 3072:
        return
    truth = format_answer("reasoning", p, r)
    ours = compute_score(None, solution, truth, preset="original")["score"]
    assert ours == original_overall(solution, truth)


@settings(max_examples=10000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_outputs, _label, st.one_of(st.none(), _label), st.integers(0, 10_000), st.sampled_from(sorted(PRESETS)))
def test_parser_and_reward_never_raise_and_stay_finite(solution, p, r, n, preset):
    parsed = parse_answer(solution)
    assert parsed.prompt_label in (None, *LABELS)
    assert parsed.response_label in (None, *LABELS)
    res = compute_score(None, solution, {"prompt_label": p, "response_label": r}, tokens(n), preset=preset)
    assert tuple(res) == SCORE_KEYS
    assert all(math.isfinite(v) for v in res.values())
    assert res["score"] <= 0.0
    assert res["r_safety"] in (0.0, 0.5, 1.0)


def test_huge_and_unicode_outputs_score_finitely():
    rng = random.Random(0)
    pieces = ["<result>", "Request:", "ü", "😀", "\u202e", "\x00", "</result>", "harmful", " "]
    for size in (0, 1, 10_000, 1_000_000):
        sol = "".join(rng.choice(pieces) for _ in range(size // 4))
        for preset in PRESETS:
            res = compute_score(None, sol, GT, tokens(size), preset=preset)
            assert math.isfinite(res["score"])


@pytest.mark.parametrize(
    ("kwargs", "truth", "extra", "match"),
    [
        ({}, {"prompt_label": "safe", "response_label": None}, tokens(1), r"ground_truth.prompt_label.*'safe'"),
        ({}, {"prompt_label": "harmful", "response_label": "bad"}, tokens(1), r"response_label.*'bad'"),
        ({}, {"response_label": "harmful"}, tokens(1), "no 'prompt_label'"),
        ({}, {"prompt_label": ["harmful"], "response_label": None}, tokens(1), "label must be a string, got list"),
        ({}, "no result block", tokens(1), "ground_truth string"),
        ({}, 3, tokens(1), "ground_truth must be"),
        ({}, GT, None, r"response_tokens"),
        ({}, GT, {"response_tokens": -3}, r"response_tokens"),
        ({"beta": 0}, GT, tokens(1), "beta"),
        ({"length_unit": "words"}, GT, tokens(1), "length_unit"),
        ({"format_mode": "loose"}, GT, tokens(1), "format_mode"),
        ({"max_length": 0}, GT, tokens(1), "max_length"),
        ({"temperature": 1.0}, GT, tokens(1), r"unknown reward kwargs \['temperature'\]"),
        ({"preset": "gr-vl-xl"}, GT, tokens(1), "unknown reward preset"),
    ],
)
def test_bad_input_is_a_clear_value_error(kwargs, truth, extra, match):
    with pytest.raises(ValueError, match=match):
        compute_score(None, out("harmful", "harmful"), truth, extra, **kwargs)


def test_non_string_output_is_an_error_not_a_zero():
    with pytest.raises(ValueError, match="solution_str must be str"):
        compute_score(None, None, GT, tokens(1))


def test_presets():
    assert PRESETS["gr-vl"] == RewardConfig()
    assert PRESETS["gr-vl-eco"].beta == pytest.approx(1 / 6)
    assert PRESETS["original"] == RewardConfig(1.0, "chars", 3072, "compat")
    assert RewardConfig.from_kwargs(preset="gr-vl-eco", max_length=100) == RewardConfig(beta=1 / 6, max_length=100)
