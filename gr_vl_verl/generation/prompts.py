"""A parquet row into model input, built the way verl builds a rollout prompt during training.

verl 0.9.1 (``RLHFDataset._build_messages`` and the agent loop's ``process_multi_modal_info``):

1. when the row has images, every string message content is split on ``<image>`` and each placeholder, in
   order, becomes an image content part (text segments become text parts); the number of placeholders must
   equal the number of images;
2. the images go through ``qwen_vl_utils.process_vision_info`` with the processor's patch size, which
   converts them to RGB and resizes them onto the model's grid (28 pixels on Qwen2.5-VL, 32 on Qwen3-VL);
3. the prompt text is the processor's chat template with ``add_generation_prompt=True``.

A row that cannot be built (an image that does not decode, placeholders that do not match the images)
raises :class:`RowError` naming the row; the pipeline stops on it (docs/generation.md says why).
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from typing import Any

from PIL import Image

from gr_vl_verl.protocol import IMAGE_PLACEHOLDER

_SPLIT = re.compile(f"({re.escape(IMAGE_PLACEHOLDER)})")


class RowError(ValueError):
    """One input row cannot become model input; the message names the row id and why."""


@dataclass(frozen=True)
class Request:
    """What an engine generates from: the rendered prompt and the images in placeholder order."""

    row_id: str
    prompt: str
    images: list[Image.Image]


def decode_images(row_id: str, images: list[dict[str, Any]] | None) -> list[Image.Image]:
    """The row's images, fully decoded (a truncated or corrupt file fails here, naming the row)."""
    out = []
    items = images or []
    for k, item in enumerate(items):
        data = item.get("bytes") if isinstance(item, dict) else None
        if not data:
            raise RowError(f"row {row_id!r}: image {k + 1} of {len(items)} has no bytes")
        try:
            img = Image.open(io.BytesIO(data))
            img.load()
        except Exception as e:  # PIL raises many types for bad data
            raise RowError(f"row {row_id!r}: image {k + 1} of {len(items)} does not decode ({e})") from None
        out.append(img)
    return out


def image_messages(row_id: str, prompt: list[dict[str, Any]], images: list[Image.Image]) -> list[dict[str, Any]]:
    """Chat messages with each ``<image>`` replaced, in order, by an image content part (as verl does)."""
    found = sum(m["content"].count(IMAGE_PLACEHOLDER) for m in prompt if isinstance(m.get("content"), str))
    if found != len(images):
        raise RowError(f"row {row_id!r}: {found} {IMAGE_PLACEHOLDER} placeholder(s) but {len(images)} image(s)")
    if not images:
        return [dict(m) for m in prompt]
    messages, k = [], 0
    for m in prompt:
        content = m.get("content")
        if not isinstance(content, str):
            messages.append(dict(m))
            continue
        parts: list[dict[str, Any]] = []
        for segment in _SPLIT.split(content):
            if segment == IMAGE_PLACEHOLDER:
                parts.append({"type": "image", "image": images[k]})
                k += 1
            elif segment:
                parts.append({"type": "text", "text": segment})
        messages.append({**m, "content": parts})
    return messages


def build_request(row: dict[str, Any], processor: Any) -> Request:
    """``row`` holds ``id``, ``prompt`` (messages) and ``images`` (``[{"bytes": ...}]``)."""
    row_id = row["id"]
    images = decode_images(row_id, row.get("images"))
    messages = image_messages(row_id, row["prompt"], images)
    try:
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        vision = _vision_inputs(messages, processor) if images else []
    except Exception as e:  # the template or the resize failed on this row's content
        raise RowError(f"row {row_id!r}: cannot build the prompt ({type(e).__name__}: {e})") from None
    return Request(row_id=row_id, prompt=prompt, images=vision)


def _vision_inputs(messages: list[dict[str, Any]], processor: Any) -> list[Image.Image]:
    from qwen_vl_utils import process_vision_info

    from gr_vl_verl.models.families import DEFAULT_FAMILY

    # verl's default: the processor's own patch size, so the resize matches the rollout path (14 on Qwen2.5-VL,
    # 16 on Qwen3-VL and Qwen3.5: docs/models.md).
    patch = getattr(getattr(processor, "image_processor", None), "patch_size", DEFAULT_FAMILY.patch_size)
    images, _ = process_vision_info(messages, image_patch_size=patch, return_video_metadata=True)
    return list(images or [])
