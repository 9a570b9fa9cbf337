"""The prep pipeline: samples in, parquets and a summary out, every row accounted for.

Each input row ends in exactly one place per output format: written to one of its files, skipped by that
format (e.g. an SFT row without reasoning), or rejected before any format (bad row, duplicate id, bad image).
So ``rows_in == rejected + written + skipped`` holds for every format, and the summary (printed and saved as
JSON beside the outputs) names every dropped row with its reason. ``strict`` turns the first drop into an
error, and then no output is published.

Images are decoded in batches, optionally in worker processes; batches keep memory bounded and ``map``
keeps the order, so the output does not depend on the number of workers. Each image is decoded once, then
scaled to the bounds of each output, each the released code's for that stage: SFT ``sft_pixels``
(LLaMA-Factory's defaults, which the released R-SFT ran with), RL ``images`` (EasyR1's config), eval
``eval_pixels`` (``qwen_vl_utils``' defaults, which the released evaluator ran with). The summary records the
bounds of every output file.

Pure Python: no torch, no verl.
"""

from __future__ import annotations

import dataclasses
import hashlib
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from gr_vl_verl.atomic import write_json_atomic
from gr_vl_verl.data.images import (
    EVAL_MAX_PIXELS,
    EVAL_MIN_PIXELS,
    SFT_MAX_PIXELS,
    SFT_MIN_PIXELS,
    ImagePolicy,
    PixelBounds,
    check_bounds,
    normalize_image_bounds,
)
from gr_vl_verl.data.records import GuardSample, Rejected, SampleError
from gr_vl_verl.data.schemas import KINDS, SCHEMAS
from gr_vl_verl.data.writers import ROW_BUILDERS, AtomicParquetWriter, RowOptions


class PrepError(RuntimeError):
    """A strict run hit a row it could not write; nothing was published."""


@dataclass(frozen=True)
class PrepConfig:
    formats: tuple[str, ...] = ("rl",)
    split: str = "train"
    # Fraction of samples routed to a `val` file, chosen by a seeded hash of the id (streaming, stable).
    val_fraction: float = 0.0
    seed: int = 42
    strict: bool = False
    workers: int = 1
    batch_size: int = 64
    row_group_size: int = 256
    progress: bool = True
    images: ImagePolicy = field(default_factory=ImagePolicy)
    # (min_pixels, max_pixels) of the SFT output's images; None: the same as `images`.
    sft_pixels: PixelBounds | None = (SFT_MIN_PIXELS, SFT_MAX_PIXELS)
    # (min_pixels, max_pixels) of the eval output's images; None: the same as `images`.
    eval_pixels: PixelBounds | None = (EVAL_MIN_PIXELS, EVAL_MAX_PIXELS)
    rows: RowOptions = field(default_factory=RowOptions)

    def __post_init__(self) -> None:
        bad = [f for f in self.formats if f not in KINDS]
        if bad or not self.formats:
            raise ValueError(f"formats must be a non-empty subset of {KINDS}, got {self.formats}")
        if self.sft_pixels is not None:
            check_bounds(self.sft_pixels, "sft_pixels")
        if self.eval_pixels is not None:
            check_bounds(self.eval_pixels, "eval_pixels")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.workers < 1 or self.batch_size < 1:
            raise ValueError("workers and batch_size must be >= 1")

    def bounds(self, kind: str) -> PixelBounds:
        """The image bounds of one output format."""
        own = {"sft": self.sft_pixels, "eval": self.eval_pixels}.get(kind)
        return tuple(own) if own is not None else self.images.bounds


def output_name(kind: str, split: str) -> str:
    return "eval.parquet" if kind == "eval" else f"{kind}_{split}.parquet"


def assign_split(sample_id: str, config: PrepConfig) -> str:
    if config.val_fraction <= 0:
        return config.split
    digest = hashlib.sha256(f"{config.seed}:{sample_id}".encode()).digest()
    return "val" if int.from_bytes(digest[:8], "big") / 2**64 < config.val_fraction else config.split


@dataclass
class OutputStats:
    path: str
    kind: str
    split: str
    pixels: PixelBounds
    written: int = 0
    skipped: Counter = field(default_factory=Counter)


@dataclass
class PrepSummary:
    inputs: list[str]
    rows_in: int = 0
    rejected: Counter = field(default_factory=Counter)
    outputs: dict[str, OutputStats] = field(default_factory=dict)
    dropped: list[dict[str, str]] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    # Keys the readers ignored (rows per key): real exports carry keys the readers do not use.
    ignored_keys: Counter = field(default_factory=Counter)

    def to_dict(self) -> dict[str, Any]:
        return {
            "inputs": self.inputs,
            "rows_in": self.rows_in,
            "rejected": dict(sorted(self.rejected.items())),
            "outputs": {
                name: {
                    "path": s.path,
                    "format": s.kind,
                    "split": s.split,
                    "min_pixels": s.pixels[0],
                    "max_pixels": s.pixels[1],
                    "written": s.written,
                    "skipped": dict(sorted(s.skipped.items())),
                }
                for name, s in self.outputs.items()
            },
            "dropped": self.dropped,
            "ignored_keys": dict(sorted(self.ignored_keys.items())),
            "options": self.options,
        }

    def format(self) -> str:
        lines = [f"rows in: {self.rows_in}"]
        total_rejected = sum(self.rejected.values())
        lines.append(f"rejected before writing: {total_rejected}")
        lines += [f"  {reason}: {n}" for reason, n in sorted(self.rejected.items())]
        for name, s in self.outputs.items():
            skipped = sum(s.skipped.values())
            detail = ", ".join(f"{r}: {n}" for r, n in sorted(s.skipped.items()))
            bounds = f"images {s.pixels[0]:,}-{s.pixels[1]:,} pixels"
            lines.append(
                f"{name}: written {s.written}, skipped {skipped}" + (f" ({detail})" if detail else "") + f"; {bounds}"
            )
        if self.ignored_keys:
            detail = ", ".join(f"{k}: {n}" for k, n in sorted(self.ignored_keys.items()))
            lines.append(f"ignored keys (rows): {detail}")
        return "\n".join(lines)


def load_image_versions(
    sample: GuardSample | Rejected, policy: ImagePolicy, bounds: tuple[PixelBounds, ...]
) -> tuple[GuardSample, ...] | Rejected:
    """One copy of the sample per pixel bounds, each image verified and decoded once, then bounded and
    PNG-encoded per copy; or why not (a Rejected passes through)."""
    if isinstance(sample, Rejected):
        return sample
    try:
        per_image = [normalize_image_bounds(img, policy, bounds) for img in sample.images]
    except SampleError as e:
        return Rejected(sample.id, e.reason, f"{sample.id}: {e}")
    if not per_image:
        return (sample,) * len(bounds)
    return tuple(dataclasses.replace(sample, images=version) for version in zip(*per_image, strict=True))


def load_images(sample: GuardSample | Rejected, policy: ImagePolicy) -> GuardSample | Rejected:
    """The sample with every image verified, bounded by ``policy`` and PNG-encoded, or why not."""
    versions = load_image_versions(sample, policy, ((policy.min_pixels, policy.max_pixels),))
    return versions if isinstance(versions, Rejected) else versions[0]


def _batched(items: Iterable[Any], n: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) >= n:
            yield batch
            batch = []
    if batch:
        yield batch


def run_prep(
    items: Iterable[GuardSample | Rejected],
    out_dir: Path,
    config: PrepConfig,
    name: str = "prep",
    inputs: list[str] | None = None,
    total: int | None = None,
    ignored_keys: Counter | None = None,
) -> PrepSummary:
    """Write ``config.formats`` for ``items`` into ``out_dir``; save ``{name}_summary.json`` there.

    ``ignored_keys`` is the counter the readers of ``items`` fill as they stream (``ExtraKeys.ignored``);
    the summary reports it as it stands at the end.
    """
    from tqdm import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = PrepSummary(
        inputs=list(inputs or []), ignored_keys=ignored_keys if ignored_keys is not None else Counter()
    )
    summary.options = {
        "formats": list(config.formats),
        "split": config.split,
        "val_fraction": config.val_fraction,
        "seed": config.seed,
        "strict": config.strict,
        "min_pixels": config.images.min_pixels,
        "max_pixels": config.images.max_pixels,
        "sft_min_pixels": config.bounds("sft")[0],
        "sft_max_pixels": config.bounds("sft")[1],
        "eval_min_pixels": config.bounds("eval")[0],
        "eval_max_pixels": config.bounds("eval")[1],
        "sft_target": config.rows.sft_target,
        "instruction_placement": config.rows.placement,
        "text_placeholder_image": config.rows.text_placeholder_image,
    }
    splits = [config.split] + (["val"] if config.val_fraction > 0 else [])

    def drop(item_id: str, reason: str, message: str, output: str | None = None) -> None:
        if config.strict:
            where = f" for {output}" if output else ""
            raise PrepError(f"strict: row {item_id!r} cannot be written{where}: [{reason}] {message}")
        entry = {"id": item_id, "reason": reason, "message": message}
        if output:
            entry["output"] = output
        summary.dropped.append(entry)

    with ExitStack() as stack:
        writers: dict[tuple[str, str], AtomicParquetWriter] = {}
        for kind in config.formats:
            for split in ["test"] if kind == "eval" else splits:
                path = out_dir / output_name(kind, split)
                writer = AtomicParquetWriter(path, SCHEMAS[kind], row_group_size=config.row_group_size)
                writers[(kind, split)] = stack.enter_context(writer)
                summary.outputs[path.name] = OutputStats(str(path), kind, split, config.bounds(kind))
        # one decode per image, one bounded version per distinct bounds among the outputs
        versions = tuple(dict.fromkeys(config.bounds(kind) for kind in config.formats))
        version_of = {kind: versions.index(config.bounds(kind)) for kind in config.formats}
        prepare = partial(load_image_versions, policy=config.images, bounds=versions)
        if config.workers > 1:
            import multiprocessing

            pool = stack.enter_context(multiprocessing.get_context("spawn").Pool(config.workers))
            mapper = partial(pool.map, prepare, chunksize=max(1, config.batch_size // (4 * config.workers)))
        else:
            mapper = partial(map, prepare)

        seen: set[str] = set()

        def unique(stream: Iterable[GuardSample | Rejected]) -> Iterator[GuardSample | Rejected]:
            # Rejected rows travel with the batch so every drop is reported in input order.
            for item in stream:
                summary.rows_in += 1
                if isinstance(item, GuardSample):
                    if item.id in seen:
                        item = Rejected(item.id, "duplicate_id", f"id {item.id!r} already seen; later copy dropped")
                    else:
                        seen.add(item.id)
                yield item

        bar = tqdm(items, total=total, desc=f"prep {name}", unit="row", disable=not config.progress, file=sys.stderr)
        for batch in _batched(unique(bar), config.batch_size):
            for item in mapper(batch):
                if isinstance(item, Rejected):
                    summary.rejected[item.reason] += 1
                    drop(item.id, item.reason, item.message)
                    continue
                for kind in config.formats:
                    sample = item[version_of[kind]]
                    split = "test" if kind == "eval" else assign_split(sample.id, config)
                    writer = writers[(kind, split)]
                    stats = summary.outputs[writer.path.name]
                    opts = dataclasses.replace(config.rows, split=split)
                    try:
                        row = ROW_BUILDERS[kind](sample, stats.written, opts)
                    except SampleError as e:
                        stats.skipped[e.reason] += 1
                        drop(sample.id, e.reason, str(e), writer.path.name)
                        continue
                    writer.write(row)
                    stats.written += 1
        bar.close()
    write_json_atomic(out_dir / f"{name}_summary.json", summary.to_dict())
    return summary
