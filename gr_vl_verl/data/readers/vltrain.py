"""GuardReasoner-VLTrain as exported for LLaMA-Factory (docs/data.md, "Sources").

Each split file holds ``{"messages": [system, user, assistant], "images": ["./image/x.png"]}`` rows, as JSON
Lines (``datasets``' ``to_json``) or a JSON array; image paths are relative to the data root; ``images`` is
absent, or null, on text rows. Labels are read from the assistant turn with the tolerant parser, so
``Answers: \nRequest: …`` and extra lines such as ``Completion: …`` read as well as the canonical form.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from gr_vl_verl.data.readers.common import (
    ExtraKeys,
    Item,
    guard_rows,
    resolve_image_path,
    role_contents,
    row_id,
    user_fields,
)
from gr_vl_verl.data.readers.json_stream import iter_json_rows
from gr_vl_verl.data.records import GuardSample, SampleError, infer_modality
from gr_vl_verl.protocol import gold_labels

VLTRAIN_SPLITS: dict[str, str] = {
    "text": "GuardReasoner-VLTrainText.json",
    "image": "GuardReasoner-VLTrainImage.json",
    "text_image": "GuardReasoner-VLTrainTextImage.json",
}


def read_vltrain(
    path: Path, data_root: Path, source: str | None = None, keys: ExtraKeys | None = None
) -> Iterator[Item]:
    """One GuardReasoner-VLTrain split file; modality comes from the content (images and/or text).

    Keys other than ``messages``, ``images`` and ``id`` are ignored and counted in ``keys`` (rejected with
    ``keys.strict``).
    """
    path = Path(path)
    source = source or path.stem
    keys = keys if keys is not None else ExtraKeys()

    def build(row: Any, default_id: str, index: int) -> GuardSample:
        if not isinstance(row, Mapping):
            raise SampleError("bad_format", f"row must be a JSON object, got {type(row).__name__}")
        keys.check(row, ("messages", "images", "id"))
        if "messages" not in row:
            raise SampleError("missing_field", "no `messages`")
        turns = role_contents(row["messages"], ("system", "user", "assistant"))
        for role in ("user", "assistant"):
            if role not in turns:
                raise SampleError("missing_field", f"no {role} message")
        request, response, n_placeholders = user_fields(turns["user"])
        raw_images = row.get("images") or []
        if not isinstance(raw_images, list):
            raise SampleError("bad_field", f"`images` must be a list, got {type(raw_images).__name__}")
        if n_placeholders != len(raw_images):
            raise SampleError(
                "placeholder_mismatch",
                f"{n_placeholders} <image> placeholder(s) but {len(raw_images)} image(s)",
            )
        images = tuple(resolve_image_path(data_root, p) for p in raw_images)
        answer = turns["assistant"]
        try:
            labels = gold_labels(answer)
        except ValueError as e:
            raise SampleError("bad_label", f"assistant {e}") from None
        return GuardSample(
            id=row_id(row, default_id),
            source=source,
            modality=infer_modality(request, len(images)),
            request=request,
            response=response,
            images=images,
            prompt_label=labels.prompt_label,
            response_label=labels.response_label,
            answer=answer,  # kept as written: the SFT target; the reasoning is its <think> block
        )

    return guard_rows(iter_json_rows(path), source, build)


def read_vltrain_dir(
    data_root: Path, splits: Iterable[str] = tuple(VLTRAIN_SPLITS), keys: ExtraKeys | None = None
) -> Iterator[Item]:
    """All requested splits of a GuardReasoner-VLTrain folder, in a fixed order."""
    data_root = Path(data_root)
    for split in splits:
        if split not in VLTRAIN_SPLITS:
            raise ValueError(f"unknown VLTrain split {split!r}; expected one of {sorted(VLTRAIN_SPLITS)}")
        path = data_root / VLTRAIN_SPLITS[split]
        if not path.is_file():
            raise FileNotFoundError(f"GuardReasoner-VLTrain split {split!r}: {path} not found")
        yield from read_vltrain(path, data_root, keys=keys)
