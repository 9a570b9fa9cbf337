"""Parquet outputs: samples into rows of the schemas in :mod:`.schemas`, written streaming and atomically.

* **Streaming:** rows are buffered and flushed as row groups (by count or by buffered image bytes), so memory
  stays bounded whatever the corpus size.
* **Atomic:** a run writes to a temp file in the destination folder and ``os.replace``-s it at the end; an
  interrupted run leaves no partial parquet under the final name (and an older file there untouched).
* **Deterministic:** explicit schemas, no timestamps; the same samples give the same bytes.
* **Mixed modalities:** ``images`` is a list, ``[]`` for text rows, never null: verl's SFT dataset calls
  ``len(images)`` and its RL dataset pairs each ``<image>`` with one list entry (docs/verl_notes.md).

Pure Python + pyarrow: no torch, no verl.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq

from gr_vl_verl.atomic import publish, temp_beside
from gr_vl_verl.data.images import placeholder_png
from gr_vl_verl.data.records import GuardSample, SampleError, require_training_labels
from gr_vl_verl.data.schemas import ABILITY, DATA_SOURCE_PREFIX
from gr_vl_verl.protocol import (
    INSTRUCTION,
    INSTRUCTION_RL,
    InstructionPlacement,
    build_messages,
    format_answer,
    parse_answer,
)

#: The SFT assistant turn: the source's answer as written, or rebuilt from reasoning and labels.
SftTarget = Literal["verbatim", "rerender"]
SFT_TARGETS: tuple[str, ...] = ("verbatim", "rerender")


@dataclass(frozen=True)
class RowOptions:
    """How samples become rows. Defaults: the instruction as the system turn, as SFT and inference ran."""

    split: str = "train"
    placement: InstructionPlacement = "system"
    instruction: str = INSTRUCTION
    # Reproduce the original RL data: text rows get `<image>` and a 1x1 white image (RL only).
    text_placeholder_image: bool = False
    # SFT target: `verbatim` trains on the dataset's assistant text as written (what the released R-SFT saw);
    # `rerender` rebuilds it with protocol.format_answer, dropping any text outside the two blocks.
    sft_target: SftTarget = "verbatim"

    def __post_init__(self) -> None:
        if self.sft_target not in SFT_TARGETS:
            raise ValueError(f"sft_target must be one of {SFT_TARGETS}, got {self.sft_target!r}")

    @classmethod
    def original_rl(cls, split: str = "train") -> RowOptions:
        """The original EasyR1 RL data: comma-variant instruction prefixed to the user turn, placeholder image."""
        return cls(split=split, placement="user", instruction=INSTRUCTION_RL, text_placeholder_image=True)


def _image_list(sample: GuardSample) -> list[dict[str, bytes]]:
    out = []
    for img in sample.images:
        if not isinstance(img, bytes):
            raise TypeError(f"sample {sample.id!r}: images must be loaded to bytes before writing, got a path")
        out.append({"bytes": img})
    return out


def _extra_info(sample: GuardSample, index: int, split: str, placeholder: bool) -> dict[str, Any]:
    return {
        "id": sample.id,
        "source": sample.source,
        "modality": sample.modality,
        "split": split,
        "index": index,
        "placeholder_image": placeholder,
    }


def data_source(sample: GuardSample) -> str:
    return DATA_SOURCE_PREFIX + sample.modality


def sft_target(sample: GuardSample, opts: RowOptions) -> str:
    """The assistant turn an SFT row trains on: the sample's answer as written when it has one and
    ``opts.sft_target`` is ``verbatim``, else reasoning and labels through :func:`format_answer`.

    A verbatim answer must have the trained format (``<think>`` then ``<result>`` with both labels): training
    on a malformed target would teach the malformation. Such rows are skipped, or rebuilt with ``rerender``.
    """
    require_training_labels(sample)
    if sample.reasoning is None:
        raise SampleError("missing_reasoning", f"sample {sample.id!r}: SFT rows need a reasoning target")
    if opts.sft_target == "verbatim" and sample.answer is not None:
        if not parse_answer(sample.answer).well_formed:
            raise SampleError(
                "malformed_answer",
                f"sample {sample.id!r}: the answer is not <think>…</think> then <result>…</result> with "
                "Request: and Response: labels (--sft-target rerender rebuilds it)",
            )
        return sample.answer
    return format_answer(sample.reasoning, sample.prompt_label, sample.response_label)


def sft_row(sample: GuardSample, index: int, opts: RowOptions) -> dict[str, Any]:
    """verl ``MultiTurnSFTDataset`` row: system instruction, user turn, reasoning + result as the target."""
    target = sft_target(sample, opts)
    messages = build_messages(
        sample.request,
        sample.response,
        len(sample.images),
        placement=opts.placement,
        instruction=opts.instruction,
    )
    messages.append({"role": "assistant", "content": target})
    return {
        "messages": messages,
        "images": _image_list(sample),
        "data_source": data_source(sample),
        "extra_info": _extra_info(sample, index, opts.split, False),
    }


def rl_row(sample: GuardSample, index: int, opts: RowOptions) -> dict[str, Any]:
    """verl ``RLHFDataset`` row; the reward reads the labels from ``reward_model.ground_truth``."""
    require_training_labels(sample)
    images = _image_list(sample)
    placeholder = opts.text_placeholder_image and not images
    if placeholder:
        images = [{"bytes": placeholder_png()}]
    prompt = build_messages(
        sample.request, sample.response, len(images), placement=opts.placement, instruction=opts.instruction
    )
    return {
        "data_source": data_source(sample),
        "prompt": prompt,
        "images": images,
        "ability": ABILITY,
        "reward_model": {"style": "rule", "ground_truth": sample.ground_truth},
        # concat_of: set by safety-aware concatenation (data.concat) on the rows it makes.
        "extra_info": {**_extra_info(sample, index, opts.split, placeholder), "concat_of": None},
    }


def eval_row(sample: GuardSample, index: int, opts: RowOptions) -> dict[str, Any]:
    """One benchmark row: the prompt to generate from, its images, and the gold labels per task.

    The user turn is the benchmark file's own where it has one (``sample.user_turn``, verbatim, as the released
    evaluator sent it), else the template's rendering of the fields."""
    images = _image_list(sample)
    return {
        "benchmark": sample.source,
        "id": sample.id,
        "index": index,
        "modality": sample.modality,
        "tasks": list(sample.tasks),
        "prompt_label": sample.prompt_label,
        "response_label": sample.response_label,
        "request": sample.request,
        "response": sample.response,
        "data_source": data_source(sample),
        "prompt": build_messages(
            sample.request,
            sample.response,
            len(images),
            placement=opts.placement,
            instruction=opts.instruction,
            user_content=sample.user_turn,
        ),
        "images": images,
    }


ROW_BUILDERS: dict[str, Callable[[GuardSample, int, RowOptions], dict[str, Any]]] = {
    "sft": sft_row,
    "rl": rl_row,
    "eval": eval_row,
}


class AtomicParquetWriter:
    """Append rows; flush row groups by count or buffered bytes; publish with ``os.replace`` on success.

    Use as a context manager: leaving it by an exception deletes the temp file and keeps any existing file
    at ``path`` unchanged.
    """

    def __init__(
        self,
        path: Path,
        schema: pa.Schema,
        row_group_size: int = 256,
        max_buffer_bytes: int = 64 * 1024 * 1024,
        compression: str = "zstd",
    ) -> None:
        if row_group_size < 1:
            raise ValueError(f"row_group_size must be >= 1, got {row_group_size}")
        self.path = Path(path)
        self.schema = schema
        self.row_group_size = row_group_size
        self.max_buffer_bytes = max_buffer_bytes
        self.compression = compression
        self.rows_written = 0
        self._buf: list[dict[str, Any]] = []
        self._buf_bytes = 0
        self._tmp: Path | None = None
        self._writer: pq.ParquetWriter | None = None

    def __enter__(self) -> AtomicParquetWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self._tmp = temp_beside(self.path)
        os.close(fd)
        self._writer = pq.ParquetWriter(str(self._tmp), self.schema, compression=self.compression)
        return self

    def write(self, row: dict[str, Any]) -> None:
        if self._writer is None:
            raise RuntimeError("AtomicParquetWriter.write outside its `with` block")
        self._buf.append(row)
        self._buf_bytes += sum(len(img["bytes"]) for img in row.get("images") or ())
        if len(self._buf) >= self.row_group_size or self._buf_bytes >= self.max_buffer_bytes:
            self._flush()

    def _flush(self) -> None:
        if self._buf and self._writer is not None:
            self._writer.write_table(pa.Table.from_pylist(self._buf, schema=self.schema))
            self.rows_written += len(self._buf)
            self._buf, self._buf_bytes = [], 0

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._writer is not None and self._tmp is not None
        try:
            if exc_type is None:
                self._flush()
            self._writer.close()
            if exc_type is None:
                publish(self._tmp, self.path)
        finally:
            self._tmp.unlink(missing_ok=True)
            self._writer = None
