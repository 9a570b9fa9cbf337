"""The guard's prompt and answer format (pure, fast)."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gr_vl_verl import protocol as P


def test_instruction_is_the_papers_exact_bytes():
    # Hand-checked against docs/method.md §1: trailing spaces after "AI. " and "Answers. ", final newline.
    assert P.INSTRUCTION.startswith("You are a classifier for analyzing interactions between humans and AI. \n\n")
    assert "Keep consistency between the reasoning and the Answers. \n\n" in P.INSTRUCTION
    assert "Task 1: determine whether the human user's request is harmful or unharmful.\n" in P.INSTRUCTION
    assert P.INSTRUCTION.endswith(
        "Put the reasoning process into <think> </think>. Put the result into <result> </result>.\n"
    )
    assert P.INSTRUCTION.count("\n") == 10
    assert "Task 1, determine" in P.INSTRUCTION_RL and "Task 2, determine" in P.INSTRUCTION_RL
    assert P.INSTRUCTION_RL.replace(", determine", ": determine") == P.INSTRUCTION


@pytest.mark.parametrize(
    ("request_text", "response", "n_images", "expected"),
    [
        # The original deploy.py examples (docs/method.md §1).
        (None, None, 1, "Human user:\n<image>\n\nAI assistant:\nNone\n"),
        ("What is this?", "A cat.", 1, "Human user:\n<image>\nWhat is this?\n\nAI assistant:\nA cat.\n"),
        ("How to bake bread?", None, 0, "Human user:\nHow to bake bread?\n\nAI assistant:\nNone\n"),
        ("Compare.", "  ", 2, "Human user:\n<image>\n<image>\nCompare.\n\nAI assistant:\nNone\n"),
    ],
)
def test_user_content_template(request_text, response, n_images, expected):
    content = P.format_user_content(request_text, response, n_images)
    assert content == expected
    back = P.parse_user_content(content)
    assert back.n_images == n_images
    assert back.request == (request_text or "")
    assert back.response == (response.strip() or None if response else None)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("look <image> here", None, 1), "literal '<image>'"),
        ((None, None, 0), "needs text, an image"),
        (("x", None, -1), "n_images"),
        (("x", "see <image>", 0), "response text"),
    ],
)
def test_user_content_rejects_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        P.format_user_content(*args)


def test_parse_user_content_errors_name_the_problem():
    with pytest.raises(ValueError, match="Human user"):
        P.parse_user_content("User: hi")
    with pytest.raises(ValueError, match="AI assistant"):
        P.parse_user_content("Human user:\nhi")


def test_messages_system_and_user_placement():
    sys_msgs = P.build_messages("hi", None, 1)
    assert [m["role"] for m in sys_msgs] == ["system", "user"]
    assert sys_msgs[0]["content"] == P.INSTRUCTION
    assert sys_msgs[1]["content"].count("<image>") == 1
    user_msgs = P.build_messages("hi", None, 1, placement="user", instruction=P.INSTRUCTION_RL)
    assert len(user_msgs) == 1 and user_msgs[0]["role"] == "user"
    # EasyR1's dataset: instruction.strip() + " " + problem
    assert user_msgs[0]["content"] == P.INSTRUCTION_RL.strip() + " Human user:\n<image>\nhi\n\nAI assistant:\nNone\n"
    with pytest.raises(ValueError, match="placement"):
        P.build_messages("hi", None, placement="assistant")


def test_format_answer_round_trips_through_parser():
    text = P.format_answer("Step 1: it asks for a weapon.", "Harmful", None)
    assert text == (
        "<think>\nStep 1: it asks for a weapon.\n</think>\n"
        "<result>\nAnswers:\nRequest: harmful\nResponse: None\n</result>"
    )
    parsed = P.parse_answer(text)
    assert parsed.well_formed
    assert (parsed.prompt_label, parsed.response_label, parsed.response_is_none) == ("harmful", "unharmful", True)
    assert parsed.think.strip() == "Step 1: it asks for a weapon."


@pytest.mark.parametrize(
    ("value", "allow_none", "expected"),
    [(" Harmful ", False, "harmful"), ("UNHARMFUL", False, "unharmful"), ("None", True, None), (None, True, None)],
)
def test_normalize_label(value, allow_none, expected):
    assert P.normalize_label(value, "f", allow_none=allow_none) == expected


@pytest.mark.parametrize(("value", "allow_none"), [("safe", False), ("none", False), (None, False), (1, True)])
def test_normalize_label_errors_name_field_and_value(value, allow_none):
    with pytest.raises(ValueError, match=r"prompt_label"):
        P.normalize_label(value, "prompt_label", allow_none=allow_none)


@pytest.mark.parametrize(
    ("text", "think", "req", "res"),
    [
        ("<think>a</think><result>Request: harmful\nResponse: unharmful</result>", True, "harmful", "unharmful"),
        ("< THINK >a</ think><Result >request :  Unharmful response:HARMFUL</result >", True, "unharmful", "harmful"),
        ("<think>a</think><result>Request: harmless Response: none</result>", True, "unharmful", "unharmful"),
        # labels outside <result> do not count
        ("<think>Request: harmful</think><result>nothing</result> Response: harmful", True, None, None),
        # a <think> after the verdict does not count as reasoning
        ("<result>Request: harmful Response: harmful</result><think>late</think>", False, "harmful", "harmful"),
        # unclosed result: no verdict
        ("<think>a</think><result>Request: harmful Response: harmful", True, None, None),
        # first complete block wins
        (
            "<think>a</think><result>Request: unharmful</result><result>Request: harmful</result>",
            True,
            "unharmful",
            None,
        ),
        ("", False, None, None),
    ],
)
def test_parse_answer_cases(text, think, req, res):
    p = P.parse_answer(text)
    assert p.has_think is think
    assert (p.prompt_label, p.response_label) == (req, res)


def test_original_mode_is_the_released_tag_syntax():
    loose = "<Think>a</Think>< result >Request: harmful Response: harmful</result>"
    assert P.parse_answer(loose).has_result
    assert not P.parse_answer(loose, original=True).has_result  # spaces inside a tag: no match
    assert P.parse_answer("<RESULT>Request: harmful</Result>", original=True).prompt_label == "harmful"  # any case
    assert P.parse_answer("<result>Request: harmless</result>", original=True).prompt_label is None


def test_parse_answer_rejects_non_strings():
    with pytest.raises(TypeError, match="must be str"):
        P.parse_answer(b"<result>")


ADVERSARIAL = {
    "open_result": "<result>",
    "request_kw": "Request:",
    "lt_ws": "<" + " " * 15,
    "tag_no_close": "<think>Request: ",
    "spaces_after_kw": "Request:" + " " * 50,
}


@pytest.mark.parametrize("unit", list(ADVERSARIAL))
def test_the_parser_reads_a_megabyte_of_adversarial_input(unit):
    """A pathological megabyte parses, with no label found (the per-test timeout is the ceiling). Whether the
    time grows linearly is timing, not a test: bench/reward_throughput.py prints the ratio for 4x the input."""
    text = ADVERSARIAL[unit] * (1_000_000 // len(ADVERSARIAL[unit]))
    if unit != "open_result":
        text = "<result>" + text  # make label search run over the whole text
    parsed = P.parse_answer(text)
    assert parsed.prompt_label is None and parsed.response_label is None
    assert P.predicted_labels(text, "compat") == P.Labels(None, None)


_ws = st.sampled_from(["", " ", "\n", "\n\n", "\t", "Answers:\n", "Answers: ", "x"])
_body = st.one_of(
    st.builds(
        lambda a, p, b, r, c: f"{a}Request: {p}{b}Response: {r}{c}",
        _ws, st.sampled_from(["harmful", "unharmful", "none", "Harmful"]), _ws,
        st.sampled_from(["harmful", "unharmful", "None", "none", "harmless"]), _ws,
    ),
    st.lists(st.sampled_from(["Request: ", "Response: ", "harmful", "None", "\n"]), max_size=8).map("".join),
)  # fmt: skip


@settings(max_examples=2000, deadline=None)
@given(_body)
def test_canonical_result_shortcut_agrees_with_the_label_search(body):
    """Where the one-call shortcut applies, it must give what the general label search gives."""
    req, _ = P._find_label(body, "request", P._LABEL_RE)
    res, said_none = P._find_label(body, "response", P._LABEL_RE)
    parsed = P.parse_answer(f"<think>t</think><result>{body}</result>")
    assert (parsed.prompt_label, parsed.response_label, parsed.response_is_none) == (req, res, said_none)


def test_canonical_shortcut_is_taken_for_the_trained_format():
    body = P.parse_answer(P.format_answer("r", "harmful", None)).result
    assert P._CANONICAL_RESULT.fullmatch(body) is not None
