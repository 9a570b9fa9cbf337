"""What a guard is asked and what it answers, shared by the in-process guard (:mod:`gr_vl_verl.guard`) and the
client of a served one (:mod:`gr_vl_verl.serving.client`), so both check items and read answers identically:
the item checks (text fields, images through ``gr-vl prep``'s checks and bounds), the guard's chat messages, and
the result dict built from an answer (labels in the parse mode, reasoning, harm probability, threshold).

No torch, transformers or vLLM here.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
