"""What a guard is asked and what it answers, shared by the in-process guard (:mod:`gr_vl_verl.guard`) and the
client of a served one (:mod:`gr_vl_verl.serving.client`), so both check items and read answers identically:
the item checks (text fields, images through ``gr-vl prep``'s checks and bounds), the guard's chat messages, and
the result dict built from an answer (labels in the parse mode, reasoning, harm probability, threshold), and the
answers written as JSON lines that a rerun continues (``write_answers``, behind ``gr-vl classify --out``).

No torch, transformers or vLLM here.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from PIL import Image

from gr_vl_verl.data.images import ImagePolicy, encode_png, normalize_image, to_rgb
from gr_vl_verl.harm_prob import threshold_label
from gr_vl_verl.protocol import ParseMode, build_messages, parse_answer, predicted_labels

ITEM_KEYS: tuple[str, ...] = ("request", "image", "response")
RESULT_KEYS: tuple[str, ...] = (
    "request",
    "response",
    "reasoning",
    "output",
    "output_tokens",
    "p_harmful",
    "label_source",
)


class GuardInputError(ValueError):
    """An item that cannot be classified; the message names it (``items[3]``, or a file and line)."""


@dataclass(frozen=True)
class GuardInput:
    """A checked item: the guard's chat messages and the item's image as bounded PNG bytes (or none)."""

    messages: list[dict[str, str]]
    images: tuple[bytes, ...]
    has_response: bool


# --------------------------------------------------------------------------------------------------
# Items
# --------------------------------------------------------------------------------------------------
def prepare_item(item: object, where: str, policy: ImagePolicy | None = None) -> GuardInput:
    """Check one item and build its prompt; ``where`` names it in errors (``items[3]``, ``in.jsonl line 4``).

    ``request`` and ``response`` are strings (empty or absent: not given; a response of ``None``/``"None"`` is
    no response, as the prompt then says); ``image`` is a file path, encoded bytes or a PIL image, refused
    when missing, corrupt, too large or of an extreme aspect ratio. A request or an image must be given.
    """
    if isinstance(item, GuardInput):
        return item
    if not isinstance(item, Mapping):
        raise GuardInputError(f"{where}: an item is a dict with {'/'.join(ITEM_KEYS)}, got {type(item).__name__}")
    unknown = sorted(str(k) for k in item if k not in ITEM_KEYS)
    if unknown:
        # A misspelt key would otherwise drop, say, the response silently and change the question asked.
        raise GuardInputError(f"{where}: unknown key(s) {unknown}; an item has {', '.join(ITEM_KEYS)}")
    request, response = (_text(item.get(key), key, where) for key in ("request", "response"))
    if response == "None":
        response = None
    image = item.get("image")
    if not request and image is None:
        raise GuardInputError(f"{where}: an item needs a request, an image, or both")
    images = () if image is None else (_image_bytes(image, where, policy or ImagePolicy.evaluation()),)
    try:
        messages = build_messages(request, response, len(images))
    except ValueError as e:  # a literal <image> in the text
        raise GuardInputError(f"{where}: {e}") from None
    return GuardInput(messages=messages, images=images, has_response=response is not None)


def prepare_items(items: Iterable[object], policy: ImagePolicy | None = None) -> list[GuardInput]:
    """Check every item before any is generated, so a bad one costs no model time; errors name ``items[i]``."""
    if isinstance(items, Mapping | str | bytes):
        raise GuardInputError(f"items must be a list of dicts, got one {type(items).__name__}; wrap it in a list")
    return [prepare_item(item, f"items[{i}]", policy) for i, item in enumerate(items)]


def _text(value: object, key: str, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise GuardInputError(f"{where}: `{key}` must be a string, got {type(value).__name__}")
    return value.strip() or None


def _image_bytes(image: object, where: str, policy: ImagePolicy) -> bytes:
    if isinstance(image, Image.Image):
        w, h = image.size
        if w * h > policy.max_source_pixels:  # refuse before spending an encode on it
            raise GuardInputError(f"{where}: image {w}x{h} = {w * h} pixels > max_source_pixels")
        try:
            data: bytes | Path = encode_png(to_rgb(image))
        except (OSError, ValueError) as e:
            raise GuardInputError(f"{where}: the PIL image cannot be read ({e})") from None
    elif isinstance(image, bytes | bytearray | memoryview):
        data = bytes(image)
    elif isinstance(image, str | os.PathLike):
        data = Path(image)
        if not data.is_file():
            raise GuardInputError(f"{where}: image file not found: {data}")
    else:
        raise GuardInputError(f"{where}: `image` must be a path, bytes or a PIL image, got {type(image).__name__}")
    try:
        return normalize_image(data, policy)
    except ValueError as e:  # SampleError: corrupt, empty, oversized, a bomb, an extreme aspect ratio
        raise GuardInputError(f"{where}: {e}") from None


# --------------------------------------------------------------------------------------------------
# The guard
# --------------------------------------------------------------------------------------------------


def _result(item: GuardInput, completion: Any, mode: ParseMode, threshold: float | None) -> dict[str, Any]:
    labels = predicted_labels(completion.text, mode)
    think = parse_answer(completion.text).think
    has_response = item.has_response
    label = {"request": labels.prompt_label, "response": labels.response_label if has_response else None}
    p = {"request": completion.p_harmful_request, "response": completion.p_harmful_response if has_response else None}
    source = dict.fromkeys(label, "text")
    if threshold is not None:
        for task, value in p.items():
            if value is not None:
                label[task], source[task] = threshold_label(value, threshold), "threshold"
    return {
        **label,
        "reasoning": think.strip() if think is not None else None,
        "output": completion.text,
        "output_tokens": completion.tokens,
        "p_harmful": p,
        "label_source": source,
    }


# --------------------------------------------------------------------------------------------------
# Answers to a file, resumable
# --------------------------------------------------------------------------------------------------
def resume_point(out: Path, items: int) -> int:
    """How many of ``items`` items ``out`` already answers: its complete JSON lines, each a result dict.

    A last line without its newline (the run was killed while writing it) is cut off, so its item is asked again.
    A line that is not a result, or more lines than items, raise ``GuardInputError``: the file is not this
    input's answers, and appending to it would mix them up."""
    if not out.exists():
        return 0
    if not out.is_file():
        raise GuardInputError(f"--out {out}: not a file")
    data = out.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        with open(out, "r+b") as f:
            f.truncate(cut)
        data = data[:cut]
    lines = data.splitlines()
    for lineno, line in enumerate(lines, start=1):
        try:
            obj = json.loads(line)
        except ValueError:
            obj = None
        if not isinstance(obj, dict) or set(obj) != set(RESULT_KEYS):
            raise GuardInputError(
                f"--out {out} line {lineno}: not a verdict of `gr-vl classify`; --out continues its own earlier "
                "answers only: give a new file"
            )
    if len(lines) > items:
        raise GuardInputError(
            f"--out {out} holds {len(lines)} answers but the input has {items} items: not this input's answers"
        )
    return len(lines)


def write_answers(
    load: Callable[[], Any],
    items: Sequence[object],
    out: Path | None = None,
    *,
    threshold: float | None = None,
    chunk: int = 64,
    stream: IO[str] | None = None,
) -> dict[str, Any]:
    """Classify ``items`` and write one JSON line per item, in order, each as soon as it and those before it
    are answered: appended to ``out`` (flushed per line) or written to ``stream`` (stdout).

    With ``out``, the answers already in it (:func:`resume_point`) are kept and the call continues with the first
    unanswered item; ``load()`` (which builds the guard) is not called when none is left. A guard with
    ``classify_iter`` (a served one) streams its answers; another is called ``chunk`` items at a time. A failure
    re-raises its error with the count written and, with ``out``, how to continue. Returns ``items``,
    ``already`` (answers found in ``out``), ``answered`` (this call) and the served guard's ``retries``."""
    done = resume_point(out, len(items)) if out is not None else 0
    summary: dict[str, Any] = {"items": len(items), "already": done, "answered": 0, "retries": None}
    rest = list(items[done:])
    if not rest:
        return summary
    guard = load()
    sink = open(out, "a", encoding="utf-8") if out is not None else (stream or sys.stdout)  # noqa: SIM115
    try:
        if hasattr(guard, "classify_iter"):
            answers: Iterable[dict[str, Any]] = guard.classify_iter(rest, threshold=threshold)
        else:
            answers = (
                r for i in range(0, len(rest), chunk) for r in guard.classify(rest[i : i + chunk], threshold=threshold)
            )
        for result in answers:
            sink.write(json.dumps(result, ensure_ascii=False) + "\n")
            sink.flush()
            summary["answered"] += 1
    except Exception as e:
        written = done + summary["answered"]
        if out is None:
            note = f"{written} of {len(items)} answers written before it; --out FILE keeps them and a rerun continues"
        else:
            note = (f"{written} of {len(items)} items answered in {out}; the same command again continues with item "
                    f"{written + 1}")  # fmt: skip
        e.args = (f"{e} [{note}]", *e.args[1:])
        raise
    finally:
        if out is not None:
            sink.close()
        stats = getattr(guard, "last_call", None)
        summary["retries"] = getattr(stats, "retries", None)
    return summary
