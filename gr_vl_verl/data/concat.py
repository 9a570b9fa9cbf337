"""Safety-aware data concatenation (GuardReasoner-VL, paper eq. 4-5): two RL rows become one interaction.

The requests are joined, the responses are joined (an absent response adds nothing), the images are pasted side
by side on a white canvas and bounded as the released code did (``thumbnail((1024, 1024))``, LANCZOS), then
checked and bounded like every prepared image. Labels are OR-merged per task: the new prompt (response) is
harmful if either part's prompt (response) is harmful. The merged labels go into ``reward_model.ground_truth``,
so the reward scores the row against them; the released code kept sample 1's answer string as the reward's
ground truth and so scored its concatenated rows against sample 1's labels only.

``gr-vl augment`` streams: input rows are copied as they are read, the rows a pair needs are spilled to small
bucket files on disk, and each bucket is merged on its own, so memory does not grow with the corpus.

Pure Python + Pillow + pyarrow: no torch, no verl.
"""

from __future__ import annotations

import math
import pickle
import random
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pyarrow.parquet as pq

from gr_vl_verl.atomic import write_json_atomic
from gr_vl_verl.data.images import ImagePolicy, decode_image, encode_png, merge_horizontal, normalize_image
from gr_vl_verl.data.records import GuardSample, SampleError, infer_modality, require_training_labels
from gr_vl_verl.data.schemas import RL_SCHEMA, parquet_batches, parquet_kind, sample_from_row
from gr_vl_verl.data.writers import AtomicParquetWriter, RowOptions, rl_row
from gr_vl_verl.protocol import HARMFUL, IMAGE_PLACEHOLDER, UNHARMFUL, USER_HEADER, InstructionPlacement

ConcatStyle = Literal["paper", "original"]
STYLES: tuple[str, ...] = ("paper", "original")
#: The released code's bound on the merged canvas (``thumbnail((1024, 1024), LANCZOS)``).
MAX_SIDE = 1024
#: Pairs merged per spill bucket: bounds the rows (with their images) held in memory at once.
BUCKET_PAIRS = 64


class ConcatError(ValueError):
    """The input cannot be augmented (empty, a row without labels, a corrupt image); nothing was written."""


@dataclass(frozen=True)
class ConcatConfig:
    """How many rows to concatenate and how; defaults are the paper's (20 % of the output)."""

    ratio: float = 0.2  # share of concatenated rows in the output
    seed: int = 42
    style: ConcatStyle = "paper"
    images: ImagePolicy = field(default_factory=ImagePolicy)  # the paper's pixel bounds, as prep
    max_side: int = MAX_SIDE

    def __post_init__(self) -> None:
        if not (isinstance(self.ratio, int | float) and 0.0 <= self.ratio < 1.0):
            raise ValueError(f"ratio must be in [0, 1), got {self.ratio!r}")
        if self.style not in STYLES:
            raise ValueError(f"style must be one of {STYLES}, got {self.style!r}")
        if self.max_side < 1:
            raise ValueError(f"max_side must be >= 1, got {self.max_side}")


def concat_count(n: int, ratio: float) -> int:
    """Rows to add to ``n`` so that they are ``ratio`` of the output: ``n * ratio / (1 - ratio)``, half up."""
    return math.floor(n * ratio / (1.0 - ratio) + 0.5)


def plan_pairs(n: int, config: ConcatConfig) -> list[tuple[int, int]]:
    """Seeded pairs of distinct row indices, drawn independently (a pair may recur), as the released code did."""
    m = concat_count(n, config.ratio)
    if m and n < 2:
        raise ConcatError(f"concatenation needs at least 2 rows, the input has {n}")
    rng = random.Random(config.seed)
    return [tuple(rng.sample(range(n), 2)) for _ in range(m)]  # type: ignore[misc]


def concat_id(seed: int, j: int) -> str:
    return f"concat-s{seed}-{j:06d}"


# --------------------------------------------------------------------------------------------------
# One pair
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Part:
    """What a concatenation needs of one input row: its sample and how its prompt was laid out."""

    sample: GuardSample  # images: the real ones (a text row's placeholder image is dropped)
    placement: InstructionPlacement
    instruction: str
    user: str  # the user turn from "Human user:" on
    placeholder: bool  # the row carried the original RL data's 1x1 stand-in image
    split: str


def part_from_row(row: dict[str, Any]) -> Part:
    """Read an RL row (as ``to_pylist`` gives it); SampleError if it has no labels or an unknown layout."""
    try:
        sample = sample_from_row("rl", row)
    except (KeyError, StopIteration, TypeError) as e:
        raise SampleError("bad_format", f"not an RL row of this package ({type(e).__name__}: {e})") from None
    require_training_labels(sample)
    turns = {m["role"]: m["content"] for m in row["prompt"]}
    user = turns["user"]
    at = user.find(USER_HEADER)
    prefix = user[:at].strip()
    if "system" in turns:
        if prefix:
            raise SampleError("bad_format", "instruction both in the system turn and before the user turn")
        placement: InstructionPlacement = "system"
        instruction = turns["system"]
    elif prefix:
        placement, instruction = "user", prefix
    else:
        raise SampleError("bad_format", "no guard instruction (neither a system turn nor a user-turn prefix)")
    info = row["extra_info"]
    return Part(sample, placement, instruction, user[at:], bool(info.get("placeholder_image")), info["split"])


def merge_label(a: str | None, b: str | None) -> str:
    """Paper eq. 5: unharmful only if both parts are (an absent response counts as unharmful)."""
    return HARMFUL if HARMFUL in (a, b) else UNHARMFUL


def merge_images(images: list[tuple[str, bytes]], config: ConcatConfig) -> bytes | None:
    """At most one image from ``(row id, image)`` pairs: a single one as it is, several side by side and
    thumbnailed; then bounded as prep bounds images. A bad image is a SampleError naming its row."""
    if not images:
        return None
    if len(images) == 1:
        return _named(images[0][0], normalize_image, images[0][1], config.images)
    decoded = [_named(rid, decode_image, img, config.images) for rid, img in images]
    canvas = merge_horizontal(decoded, max_side=config.max_side)
    return normalize_image(encode_png(canvas), config.images)


def _named(rid: str, fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except SampleError as e:
        raise SampleError(e.reason, f"row {rid!r}: {e}") from None


def _join(*texts: str | None) -> str | None:
    present = [t for t in texts if t]
    return " ".join(present) if present else None


def _original_user(a: Part, b: Part) -> str:
    """The released layout: ``problem1.strip() + " " + problem2.strip()``, later ``<image>`` tags removed."""
    text = a.user.strip() + " " + b.user.strip()
    first = text.find(IMAGE_PLACEHOLDER)
    if first < 0:
        return text
    cut = first + len(IMAGE_PLACEHOLDER)
    return text[:cut] + text[cut:].replace(IMAGE_PLACEHOLDER, "")


def concat_row(a: Part, b: Part, new_id: str, index: int, config: ConcatConfig) -> dict[str, Any]:
    """The RL row of one concatenated interaction, laid out like part ``a`` (instruction placement, split)."""
    sa, sb = a.sample, b.sample
    response = _join(sa.response, sb.response)
    request = _join(sa.request, sb.request) or ""
    image = merge_images([(s.id, img) for s in (sa, sb) for img in s.images], config)
    images = (image,) if image is not None else ()
    source = sa.source if sa.source == sb.source else f"{sa.source}+{sb.source}"
    sample = GuardSample(
        id=new_id,
        source=source,
        modality=infer_modality(request, len(images)),
        request=request,
        response=response,
        images=images,
        prompt_label=merge_label(sa.prompt_label, sb.prompt_label),
        response_label=merge_label(sa.response_label, sb.response_label) if response is not None else None,
    )
    opts = RowOptions(
        split=a.split,
        placement=a.placement,
        instruction=a.instruction,
        # data where text rows carry a stand-in image keeps doing so
        text_placeholder_image=a.placeholder or b.placeholder,
    )
    row = rl_row(sample, index, opts)
    row["extra_info"]["concat_of"] = [sa.id, sb.id]
    if config.style == "original":
        user = _original_user(a, b)
        tags, n_images = user.count(IMAGE_PLACEHOLDER), len(row["images"])
        if tags != n_images:
            raise SampleError("placeholder_mismatch", f"{tags} <image> tags for {n_images} image(s)")
        if a.placement == "system":
            row["prompt"] = [{"role": "system", "content": a.instruction}, {"role": "user", "content": user}]
        else:
            row["prompt"] = [{"role": "user", "content": a.instruction + " " + user}]
    return row


# --------------------------------------------------------------------------------------------------
# A whole file, streaming
# --------------------------------------------------------------------------------------------------
@dataclass
class AugmentSummary:
    data: str
    out: str
    config: ConcatConfig
    rows_in: int = 0
    concat_rows: int = 0
    labels: Counter = field(default_factory=Counter)  # "prompt=harmful", "response=none", ... of the new rows
    modalities: Counter = field(default_factory=Counter)

    def to_dict(self) -> dict[str, Any]:
        rows_out = self.rows_in + self.concat_rows
        return {
            "data": self.data,
            "out": self.out,
            "rows_in": self.rows_in,
            "concat_rows": self.concat_rows,
            "rows_out": rows_out,
            "concat_share": self.concat_rows / rows_out if rows_out else 0.0,
            "concat_labels": dict(sorted(self.labels.items())),
            "concat_modalities": dict(sorted(self.modalities.items())),
            "config": {
                "ratio": self.config.ratio,
                "seed": self.config.seed,
                "style": self.config.style,
                "max_side": self.config.max_side,
                "min_pixels": self.config.images.min_pixels,
                "max_pixels": self.config.images.max_pixels,
            },
        }

    def format(self) -> str:
        d = self.to_dict()
        return (
            f"rows in: {d['rows_in']}, concatenated: {d['concat_rows']}, rows out: {d['rows_out']} "
            f"({100 * d['concat_share']:.1f}% concatenated)"
        )


def summary_path(out: Path) -> Path:
    return out.with_name(out.stem + ".summary.json")


def _rows(path: Path) -> Iterator[dict[str, Any]]:
    for batch in parquet_batches(path):
        yield from batch.to_pylist()


def run_augment(data: Path, out: Path, config: ConcatConfig, progress: bool = False) -> AugmentSummary:
    """Write ``out``: every row of ``data`` unchanged, then the concatenated rows; and ``out``'s summary."""
    from tqdm import tqdm

    data, out = Path(data), Path(out)
    if parquet_kind(data) != "rl":
        raise ConcatError(f"{data}: holds {parquet_kind(data)} rows; augment reads an RL parquet")
    n = pq.ParquetFile(data).metadata.num_rows
    if n == 0:
        raise ConcatError(f"{data}: no rows to augment")
    pairs = plan_pairs(n, config)
    needs: dict[int, list[tuple[int, int]]] = {}  # row index -> [(pair, side)]
    for j, pair in enumerate(pairs):
        for side, i in enumerate(pair):
            needs.setdefault(i, []).append((j, side))
    new_ids = {concat_id(config.seed, j) for j in range(len(pairs))}
    summary = AugmentSummary(str(data), str(out), config)
    out.parent.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.pairs.") as spill,
        AtomicParquetWriter(out, RL_SCHEMA) as writer,
    ):
        bar = tqdm(total=n + len(pairs), desc="augment", unit="row", disable=not progress)
        for i, row in enumerate(_rows(data)):
            rid = (row.get("extra_info") or {}).get("id")
            try:
                part = part_from_row(row)
            except SampleError as e:
                raise ConcatError(f"{data}: row {i} (id {rid!r}): [{e.reason}] {e}") from None
            if rid in new_ids:
                raise ConcatError(f"{data}: row {i} has id {rid!r}, which this seed gives a concatenated row")
            writer.write(row)
            for j, side in needs.get(i, ()):
                with open(Path(spill) / f"{j // BUCKET_PAIRS:06d}.pkl", "ab") as f:
                    pickle.dump((j, side, i, part), f, protocol=pickle.HIGHEST_PROTOCOL)
            bar.update()
        summary.rows_in = n
        for start in range(0, len(pairs), BUCKET_PAIRS):
            held: dict[tuple[int, int], tuple[int, Part]] = {}
            with open(Path(spill) / f"{start // BUCKET_PAIRS:06d}.pkl", "rb") as f:
                while True:
                    try:
                        j, side, i, part = pickle.load(f)
                    except EOFError:
                        break
                    held[(j, side)] = (i, part)
            for j in range(start, min(start + BUCKET_PAIRS, len(pairs))):
                (ia, a), (ib, b) = held[(j, 0)], held[(j, 1)]
                try:
                    row = concat_row(a, b, concat_id(config.seed, j), n + j, config)
                except SampleError as e:
                    raise ConcatError(
                        f"{data}: rows {ia} (id {a.sample.id!r}) + {ib} (id {b.sample.id!r}): [{e.reason}] {e}"
                    ) from None
                writer.write(row)
                _count(summary, row)
                bar.update()
        bar.close()
    write_json_atomic(summary_path(out), summary.to_dict())
    return summary


def _count(summary: AugmentSummary, row: dict[str, Any]) -> None:
    truth = row["reward_model"]["ground_truth"]
    summary.concat_rows += 1
    summary.labels[f"prompt={truth['prompt_label']}"] += 1
    summary.labels[f"response={truth['response_label'] or 'none'}"] += 1
    summary.modalities[row["extra_info"]["modality"]] += 1
