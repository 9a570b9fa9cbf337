"""One normalised record for every source: :class:`GuardSample`, and :class:`Rejected` for rows that are not.

Readers turn each source format into ``GuardSample``s; writers turn them into parquet. Everything in between
(validation, image checks, de-duplication) sees one type, so a rule is written once. A row that cannot become
a valid sample is never dropped silently: it becomes a ``Rejected`` with its id and a reason code, and the
pipeline counts it.

Pure Python: no torch, no verl.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from gr_vl_verl.protocol import (
    IMAGE_PLACEHOLDER,
    format_user_content,
    gold_labels,
    normalize_label,
    parse_answer,
    parse_user_content,
)

Modality = Literal["text", "image", "text_image"]
MODALITIES: tuple[str, ...] = ("text", "image", "text_image")
TASKS: tuple[str, ...] = ("prompt", "response")

#: An image is either a file still to be read (a reader resolved it inside the data root) or encoded bytes.
ImageData = bytes | Path


class SampleError(ValueError):
    """A row that cannot be used; ``reason`` is a short stable code used for counting skips."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Rejected:
    """A source row that did not become a sample, with why. Readers yield these instead of raising."""

    id: str
    reason: str
    message: str


def infer_modality(request: str, n_images: int) -> Modality:
    if n_images == 0:
        return "text"
    return "text_image" if request else "image"


@dataclass(frozen=True)
class GuardSample:
    """A guard example: a request (text, images or both), an optional AI response and the gold labels.

    Texts are stored stripped and labels normalised to ``harmful``/``unharmful``, so a sample read from a
    source and the same sample read back from a written parquet compare equal. ``prompt_label`` may be None
    only for evaluation rows of response-only benchmarks; the training writers require it.

    ``answer`` is a training source's assistant turn exactly as written (the SFT target, kept byte for byte).
    When given, its labels must parse and agree with the sample's, and ``reasoning`` is its ``<think>`` block.

    ``user_turn`` is the user turn exactly as a benchmark file wrote it (from ``Human user:`` on), which the eval
    parquet prompts with, as the released evaluator did: the text benchmarks' ``input`` ends in a blank line
    that the template's rendering lacks. It must read back as this sample's request, response and image count;
    one equal to the template's rendering is dropped (None), so equal samples compare equal.
    """

    id: str
    source: str
    modality: str
    request: str
    response: str | None
    images: tuple[ImageData, ...]
    prompt_label: str | None
    response_label: str | None
    reasoning: str | None = None
    answer: str | None = None
    user_turn: str | None = None

    def __post_init__(self) -> None:
        def fail(reason: str, msg: str) -> None:
            raise SampleError(reason, f"sample {self.id!r}: {msg}")

        if not isinstance(self.id, str) or not self.id.strip():
            fail("missing_field", f"id must be a non-empty string, got {self.id!r}")
        if not isinstance(self.source, str) or not self.source:
            fail("missing_field", f"source must be a non-empty string, got {self.source!r}")
        if not isinstance(self.request, str):
            fail("missing_field", f"request must be a string, got {type(self.request).__name__}")
        if self.response is not None and not isinstance(self.response, str):
            fail("bad_field", f"response must be a string or None, got {type(self.response).__name__}")
        if self.reasoning is not None and not isinstance(self.reasoning, str):
            fail("bad_field", f"reasoning must be a string or None, got {type(self.reasoning).__name__}")
        images = tuple(self.images)
        for img in images:
            if not isinstance(img, bytes | Path):
                fail("bad_field", f"images must be bytes or paths, got {type(img).__name__}")
        request = self.request.strip()
        response = self.response.strip() if self.response is not None else None
        if response is not None and response in ("", "None"):
            response = None  # the user template writes a missing response as the literal "None"
        for name, text in (("request", request), ("response", response)):
            if text is not None and IMAGE_PLACEHOLDER in text:
                fail("bad_field", f"{name} contains a literal {IMAGE_PLACEHOLDER!r}; images go in `images`")
        if not request and not images:
            fail("missing_field", "a request needs text, an image, or both")
        expected = infer_modality(request, len(images))
        if self.modality not in MODALITIES:
            fail("bad_field", f"unknown modality {self.modality!r}; expected one of {MODALITIES}")
        if self.modality != expected:
            fail("modality_mismatch", f"modality {self.modality!r} but the content is {expected!r}")
        try:
            prompt_label = normalize_label(self.prompt_label, "prompt_label", allow_none=True)
            response_label = normalize_label(self.response_label, "response_label", allow_none=True)
        except ValueError as e:
            fail("bad_label", str(e))
        if prompt_label is None and response_label is None:
            fail("missing_label", "no prompt_label and no response_label")
        if response_label is not None and response is None:
            fail("bad_label", f"response_label is {response_label!r} but there is no response to judge")
        reasoning = self.reasoning.strip() if self.reasoning is not None else None
        if self.answer is not None:
            if not isinstance(self.answer, str):
                fail("bad_field", f"answer must be a string or None, got {type(self.answer).__name__}")
            try:
                said = gold_labels(self.answer)
            except ValueError as e:
                fail("bad_label", f"answer: {e}")
            if said != (prompt_label, response_label):
                fail(
                    "bad_label",
                    f"answer says Request: {said.prompt_label}, Response: {said.response_label} but the labels "
                    f"are {prompt_label}, {response_label}",
                )
            think = parse_answer(self.answer).think
            think = think.strip() if think is not None else None
            if reasoning is not None and reasoning != think:
                fail("bad_field", "reasoning differs from the answer's <think> block; give one of them")
            reasoning = think
        user_turn = self.user_turn
        if user_turn is not None:
            if not isinstance(user_turn, str):
                fail("bad_field", f"user_turn must be a string or None, got {type(user_turn).__name__}")
            try:
                said = parse_user_content(user_turn)
            except ValueError as e:
                fail("bad_format", f"user_turn: {e}")
            if (said.request, said.response, said.n_images) != (request, response, len(images)):
                fail("bad_field", "user_turn reads as another request, response or image count than the sample's")
            if user_turn == format_user_content(request, response, len(images)):
                user_turn = None
        object.__setattr__(self, "user_turn", user_turn)
        object.__setattr__(self, "id", self.id.strip())
        object.__setattr__(self, "request", request)
        object.__setattr__(self, "response", response)
        object.__setattr__(self, "images", images)
        object.__setattr__(self, "prompt_label", prompt_label)
        object.__setattr__(self, "response_label", response_label)
        object.__setattr__(self, "reasoning", reasoning or None)

    @property
    def tasks(self) -> tuple[str, ...]:
        """The tasks this sample has gold labels for (``prompt``, ``response``)."""
        labels = (self.prompt_label, self.response_label)
        return tuple(t for t, lab in zip(TASKS, labels, strict=True) if lab is not None)

    @property
    def ground_truth(self) -> dict[str, str | None]:
        """What the reward reads (``reward_model.ground_truth``): labels as data, not an answer string."""
        return {"prompt_label": self.prompt_label, "response_label": self.response_label}


def require_training_labels(sample: GuardSample) -> None:
    """Training targets need both labels decided: the prompt label, and the response label iff a response.

    Why: the reward compares ``Response: None`` against a missing response label, so a present response
    without a label would teach the guard to skip judging it.
    """
    if sample.prompt_label is None:
        raise SampleError("missing_label", f"sample {sample.id!r}: training rows need a prompt_label")
    if sample.response is not None and sample.response_label is None:
        raise SampleError("missing_label", f"sample {sample.id!r}: has a response but no response_label")
