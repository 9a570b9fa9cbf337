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
    # beta = 1/6 in token units caps the length gain at l_norm = 1/6
    (out("unharmful", "harmful"), GT, 30, {"max_length": 60, "beta": 1 / 6}, -36.0, 0.0),
    (out("harmful", "harmful"), GT, 5, {"max_length": 60, "beta": 1 / 6}, -0.5 * 144, 0.5),
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


# Letters Python's re.IGNORECASE matches beyond ASCII case (the released regexes use it): the dotted and
# dotless i, the Kelvin sign and the long s. A tag spelt "<reſult>" is a result tag to the released code.
_FOLDS = {"i": "iIİı", "k": "kK\u212a", "s": "sSſ"}
_SPACE = st.sampled_from(["", "", "", " ", "\n", "\t"])


@st.composite
def _spelt(draw, word: str) -> str:
    """``word`` with each letter in either case, or a Unicode letter that case-folds onto it."""
    return "".join(draw(st.sampled_from(_FOLDS.get(c.lower(), c.lower() + c.upper()))) for c in word)


@st.composite
def _tag(draw, name: str, closing: bool) -> str:
    """A tag as a model may write it: any case, Unicode folds, and sometimes spaces inside the brackets."""
    if draw(st.integers(0, 5)) == 0:
        return ""
    spaces = [draw(_SPACE) if draw(st.booleans()) else "" for _ in range(3)]
    slash = "/" if closing else ""
    return f"<{spaces[0]}{slash}{spaces[1]}{draw(_spelt(name))}{spaces[2]}>"


@st.composite
def _structured(draw):
    """Near-miss answers: tag and label spellings the original code did or did not accept."""
    parts = [
        draw(_variant(["<think>", "<Think>", "< think >", ""])),
        draw(st.text(max_size=20)),
        draw(_variant(["</think>", "</ think>", ""])),
        draw(_variant(["<result>", "<RESULT>", "< result >", "<reſult>", ""])),
        draw(_variant(["Request:", "request :", "REQUEST:", "Request: ", "Requeſt:", ""])),
        draw(_variant(["harmful", "unharmful", "harmless", "harmleſſ", "None", "safe"])),
        draw(_variant(["\n", " ", ""])),
        draw(_variant(["Response:", "response :", "Response:  ", ""])),
        draw(_variant(["harmful", "unharmful", "harmless", "none", "unsafe"])),
        draw(_variant(["</result>", "</Result>", "< /result>", ""])),
        draw(st.text(max_size=8)),
    ]
    return "".join(parts)


@st.composite
def _spellings(draw):
    """Answers in the spellings that decide compat mode: tags and keywords in any case (Unicode folds too),
    spaces inside tags, extra lines, a second block, and reasoning that crosses 3072 characters now and then."""
    label_words = ["harmful", "unharmful", "harmless", "none", "safe", "unsafe"]
    parts = [
        draw(_tag("think", False)),
        draw(st.text(max_size=20)),
        "reasoning " * draw(st.sampled_from([0, 0, 5, 60, 320, 700])),
        draw(_tag("think", True)),
        draw(_tag("result", False)),
        draw(_variant(["", "Answers:", "Answers: \n"])),
        draw(_spelt("request")) + draw(_SPACE) + ":" + draw(_SPACE),
        draw(st.one_of(_variant(label_words), _spelt(draw(_variant(label_words))))),
        draw(_variant(["\n", " ", "", "\nCompletion: None\n"])),
        draw(_spelt("response")) + draw(_SPACE) + ":" + draw(_SPACE),
        draw(st.one_of(_variant(label_words), _spelt(draw(_variant(label_words))))),
        draw(_tag("result", True)),
        draw(st.text(max_size=8)),
    ]
    if draw(st.booleans()):  # a second block: only the first one counts
        parts += [draw(_tag("result", False)), "Request: harmful Response: harmful", draw(_tag("result", True))]
    return "".join(parts)


_outputs = st.one_of(_soup, _structured())
_label = st.sampled_from(LABELS)


@st.composite
def _released_truth(draw):
    """A reference answer as the released data wrote it: its labels and its string, tags in any spelling the
    released regexes accept."""
    p, r = draw(_label), draw(st.one_of(st.none(), _label))
    body = f"\nAnswers: \nRequest: {p}\nCompletion: None\nResponse: {r or 'None'}\n"
    opening = draw(_variant(["<result>", "<Result>", "<RESULT>", "<reſult>"]))
    closing = draw(_variant(["</result>", "</Result>", "</RESULT>", "</reſult>"]))
    return {"prompt_label": p, "response_label": r}, f"<think>\nreasoning\n</think>\n{opening}{body}{closing}"


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(_soup, _structured(), _spellings()), _released_truth())
def test_compat_mode_is_exactly_the_original_code(solution, truth):
    """The `original` preset returns the released code's `overall`, float for float, for every non-empty
    output (the released code divides by zero on an empty one), whether the ground truth is the released
    answer string or its labels as data."""
    labels, answer = truth
    if not solution:
        return
    expected = original_overall(solution, answer)
    assert compute_score(None, solution, answer, preset="original")["score"] == expected
    assert compute_score(None, solution, labels, preset="original")["score"] == expected


def test_compat_mode_reads_case_folded_tags_as_the_released_code_did():
    answer = "<THINK>r</thınk>\n<reſult>\nAnswers:\nREQUEſT: Harmful\nResponse:none\n</RESULT>"
    truth = format_answer("r", "harmful", None)
    res = compute_score(None, answer, truth, preset="original")
    assert (res["result_ok"], res["think_ok"], res["r_safety"], res["score"]) == (1.0, 1.0, 1.0, 0.0)
    assert original_overall(answer, truth) == 0.0


def test_compat_mode_has_no_length_cap_past_3072_characters():
    """The released normaliser is characters / 3072 and is not clipped: a 6144-character wrong answer scores
    -1 / 2**2."""
    wrong = out("unharmful", "harmful").ljust(6144, ".")
    assert (
        compute_score(None, wrong, GT, preset="original")["score"]
        == -0.25
        == original_overall(wrong, format_answer("r", "harmful", "unharmful"))
    )


def test_compat_mode_refuses_a_ground_truth_the_released_code_would_misread():
    """Without a <result> block the released code compared predictions with None (a missing label counted
    as right); compat mode says so instead."""
    with pytest.raises(ValueError, match="no <result>"):
        compute_score(None, out("harmful", "harmful"), "Request: harmful\nResponse: None", preset="original")
    with pytest.raises(ValueError, match="lacks 'Request:' or 'Response:'"):
        compute_score(None, out("harmful", "harmful"), "<result>Request: harmful</result>", preset="original")


# --------------------------------------------------------------------------------------------------
# Eco: the length gain stops at 500 characters, where the released code's Eco line stopped it
# --------------------------------------------------------------------------------------------------
CHARS_PER_TOKEN = 4.8  # Qwen's tokenizer on GuardReasoner answers (docs/reward.md)


def answer_of(n_tokens: int, prompt: str, response: str) -> tuple[str, dict]:
    """A well-formed answer of about ``n_tokens`` tokens (characters at the measured rate) and its token count."""
    tail = f"\n</think>\n<result>\nAnswers:\nRequest: {prompt}\nResponse: {response}\n</result>"
    reasoning = ("## Reasoning Step: the request asks how to hurt someone, which is harmful. " * 200)[
        : round(n_tokens * CHARS_PER_TOKEN) - len("<think>\n") - len(tail)
    ]
    text = f"<think>\n{reasoning}{tail}"
    assert abs(len(text) - n_tokens * CHARS_PER_TOKEN) <= 1
    return text, tokens(n_tokens)


def score_of(preset: str, n_tokens: int, prompt: str = "unharmful", response: str = "harmful") -> float:
    text, extra = answer_of(n_tokens, prompt, response)
    return compute_score(None, text, GT, extra, preset=preset, **({"max_length": 3072} if preset == "gr-vl" else {}))[
        "score"
    ]


def test_eco_length_gain_stops_at_500_characters():
    cap = -1 / (500 / 3072) ** 2
    assert score_of("gr-vl-eco", 200) == score_of("gr-vl-eco", 400) == pytest.approx(cap)  # both past the cap
    assert score_of("gr-vl-eco", 60) < cap  # 288 characters: below the cap, a longer answer still gains
    assert score_of("gr-vl-eco", 60) == pytest.approx(-1 / (288 / 3072) ** 2)


def test_gr_vl_keeps_rewarding_length_where_eco_has_stopped():
    assert score_of("gr-vl", 400) > score_of("gr-vl", 200)
    assert score_of("gr-vl", 400) == pytest.approx(-1 / (400 / 3072) ** 2)
    # what beta = 1/6 in token units would do: no cap below 512 tokens, so Eco would equal gr-vl there
    for n in (200, 400):
        text, extra = answer_of(n, "unharmful", "harmful")
        as_tokens = compute_score(None, text, GT, extra, beta=1 / 6, max_length=3072)["score"]
        assert as_tokens == score_of("gr-vl", n)


def test_eco_keeps_the_paper_format_gate():
    no_think = out("harmful", "unharmful", think=False)
    assert compute_score(None, no_think, GT, preset="gr-vl-eco")["r_safety"] == 0.0
    assert compute_score(None, no_think, GT, preset="original-eco")["r_safety"] == 1.0


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("n_tokens", [60, 200, 400])
def test_a_correct_answer_scores_zero_under_every_preset(preset, n_tokens):
    text, extra = answer_of(n_tokens, "harmful", "unharmful")
    assert compute_score(None, text, GT, extra, preset=preset)["score"] == 0.0


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
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
        ({"beta": math.nan}, GT, tokens(1), "beta"),
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
    assert PRESETS["gr-vl-eco"] == RewardConfig(500 / 3072, "chars", 3072, "paper")
    assert PRESETS["original"] == RewardConfig(math.inf, "chars", 3072, "compat")
    assert PRESETS["original-eco"] == RewardConfig(500 / 3072, "chars", 3072, "compat")
    assert RewardConfig.from_kwargs(preset="gr-vl", beta=0.5, max_length=100) == RewardConfig(0.5, max_length=100)


def test_without_the_length_term_the_score_is_r_safety_minus_one():
    """The paper's "w/o Len. Reward" ablation: length no longer moves the score of a wrong answer."""
    half = out("harmful", "harmful")  # request right, response wrong: r_safety 0.5
    for n in (10, 300):
        result = compute_score(None, half, GT, tokens(n), length_term=False, max_length=512)
        assert result["score"] == -0.5 and result["length_scale"] == 1.0 and result["r_safety"] == 0.5
    with_length = [compute_score(None, half, GT, tokens(n), max_length=512)["score"] for n in (10, 300)]
    assert with_length[0] == pytest.approx(-0.5 / (10 / 512) ** 2) and with_length[1] > with_length[0]
    assert compute_score(None, out("harmful", "unharmful"), GT, tokens(10), length_term=False)["score"] == 0.0
    with pytest.raises(ValueError, match="length_term must be true or false"):
        compute_score(None, half, GT, tokens(10), length_term="no")
