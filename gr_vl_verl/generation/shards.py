"""The output folder of a generation run: fixed shards of input rows, one parquet each, and the manifest that
makes a re-run resume only what is missing.

Layout of ``OUT``::

    generate_manifest.json     input fingerprint + the settings that decide the outputs
    shard-00000.parquet        GENERATIONS_SCHEMA rows for input rows [0, shard_size), by row then sample
    shard-00001.parquet        ...
    generate_summary.json      written last, only when every shard exists

Shard k always covers the same input rows, so a shard file, once renamed into place, is final: a re-run
with the same input and settings skips it. Pure Python + pyarrow.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from gr_vl_verl.atomic import atomic_path, write_json_atomic
from gr_vl_verl.data.schemas import GENERATIONS_SCHEMA, parquet_kind

MANIFEST = "generate_manifest.json"
SUMMARY = "generate_summary.json"
MANIFEST_FORMAT = 1
#: Input kinds generation reads: RL rows (``extra_info.id``) and evaluation rows (``id``).
INPUT_KINDS = ("rl", "eval")
#: Columns the pipeline carries beside GENERATIONS_SCHEMA: input shard and row index, a row's error, the Ray
#: actor and node that generated the row (the run's summary counts rows per actor from them), and the seconds
#: of the engine call that generated it, on the call's first result row (0 on the others, so they sum per actor).
SHARD, ROW, ERROR, ACTOR, NODE, ENGINE_S = "_shard", "_row", "_error", "_actor", "_node", "_engine_s"
REQUEST_SCHEMA = pa.schema(
    [
        (SHARD, pa.int64()),
        (ROW, pa.int64()),
        ("id", pa.string()),
        ("prompt", pa.list_(pa.field("element", pa.struct([("role", pa.string()), ("content", pa.string())])))),
        ("images", pa.list_(pa.field("element", pa.struct([("bytes", pa.binary())])))),
    ]
)
RESULT_SCHEMA = pa.schema(
    [
        (SHARD, pa.int64()),
        (ROW, pa.int64()),
        *GENERATIONS_SCHEMA,
        (ERROR, pa.string()),
        (ACTOR, pa.string()),
        (NODE, pa.string()),
        (ENGINE_S, pa.float64()),
    ]
)


class FolderMismatch(ValueError):
    """The output folder holds another run's work (other input or settings) or files we did not write."""


@dataclass(frozen=True)
class ShardPlan:
    """The input parquet cut into shards of ``shard_size`` rows."""

    path: Path
    kind: str
    rows: int
    shard_size: int
    fingerprint: str

    @property
    def shards(self) -> int:
        return -(-self.rows // self.shard_size)

    def bounds(self, k: int) -> tuple[int, int]:
        start = k * self.shard_size
        return start, min(start + self.shard_size, self.rows)

    def shard_rows(self, k: int) -> int:
        start, stop = self.bounds(k)
        return stop - start

    def file(self, out_dir: Path, k: int) -> Path:
        width = max(5, len(str(self.shards - 1)))  # names sort in row order however many shards there are
        return Path(out_dir) / f"shard-{k:0{width}d}.parquet"


def footer_fingerprint(path: Path) -> str:
    """sha256 of the parquet footer: it records every row group's size, offsets and statistics, so it changes
    with the content, without reading the (image-heavy) data pages."""
    with open(path, "rb") as f:
        f.seek(-8, os.SEEK_END)
        tail = f.read(8)
        length = int.from_bytes(tail[:4], "little")
        f.seek(-(8 + length), os.SEEK_END)
        footer = f.read(length)
    return hashlib.sha256(footer + tail).hexdigest()


def plan_shards(path: Path, shard_size: int) -> ShardPlan:
    """Check the input (exists, is ours, RL or eval, not empty) and cut it into shards."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    try:
        kind = parquet_kind(path)
        rows = pq.ParquetFile(path).metadata.num_rows
    except pa.ArrowException as e:
        raise ValueError(f"{path}: not a readable parquet file ({e})") from None
    if kind not in INPUT_KINDS:
        raise ValueError(f"{path}: holds {kind} rows; generation reads RL or eval parquets (gr-vl prep)")
    if rows == 0:
        raise ValueError(f"{path}: has no rows")
    _check_ids(path, kind)
    return ShardPlan(path, kind, rows, shard_size, footer_fingerprint(path))


def _row_ids(table: pa.Table | pa.RecordBatch, kind: str) -> Any:
    return table.column("id") if kind == "eval" else pc.struct_field(table.column("extra_info"), "id")


def _check_ids(path: Path, kind: str) -> None:
    """Every row needs its own id: outputs are keyed by it, and each sample's seed is derived from it."""
    ids = _row_ids(pq.read_table(path, columns=["id" if kind == "eval" else "extra_info"]), kind)
    if ids.null_count:
        raise ValueError(f"{path}: {ids.null_count} row(s) without an id")
    counts = pc.value_counts(ids)
    repeated = counts.filter(pc.greater(counts.field("counts"), 1))
    if len(repeated):
        first = repeated[0].as_py()
        raise ValueError(f"{path}: row id {first['values']!r} appears {first['counts']} times; ids must be unique")


def read_shard(plan: ShardPlan, k: int, chunk_rows: int) -> Iterator[pa.Table]:
    """The rows of shard ``k`` as REQUEST_SCHEMA tables of at most ``chunk_rows`` rows.

    Reads only the row groups that overlap the shard, so memory is bounded by a row group plus a chunk.
    """
    start, stop = plan.bounds(k)
    pf = pq.ParquetFile(plan.path)
    id_column = "id" if plan.kind == "eval" else "extra_info"
    groups, first, pos = [], None, 0
    for g in range(pf.metadata.num_row_groups):
        n = pf.metadata.row_group(g).num_rows
        if pos < stop and pos + n > start:
            groups.append(g)
            first = pos if first is None else first
        pos += n
    pos = first or 0  # input index of the next batch's first row
    for batch in pf.iter_batches(batch_size=chunk_rows, row_groups=groups, columns=[id_column, "prompt", "images"]):
        batch_start, pos = pos, pos + batch.num_rows
        lo, hi = max(start - batch_start, 0), min(stop - batch_start, batch.num_rows)
        if lo >= hi:
            continue
        batch = batch.slice(lo, hi - lo)
        ids = _row_ids(batch, plan.kind)
        index = pa.array(range(batch_start + lo, batch_start + hi), pa.int64())
        yield pa.table(
            [pa.array([k] * batch.num_rows, pa.int64()), index, ids, batch.column("prompt"), batch.column("images")],
            schema=REQUEST_SCHEMA,
        )


# --------------------------------------------------------------------------------------------------
# The folder
# --------------------------------------------------------------------------------------------------
def manifest(plan: ShardPlan, settings: dict[str, Any]) -> dict[str, Any]:
    return {
        "format": MANIFEST_FORMAT,
        "input": {"path": str(plan.path.resolve()), "kind": plan.kind, "rows": plan.rows, "footer": plan.fingerprint},
        "shards": plan.shards,
        "settings": settings,
    }


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    diffs = []
    if old.get("format") != new["format"]:
        diffs.append(f"manifest format {old.get('format')!r} (now {new['format']!r})")
    old_in, new_in = old.get("input", {}), new["input"]
    if (old_in.get("footer"), old_in.get("rows")) != (new_in["footer"], new_in["rows"]):
        diffs.append(f"input {old_in.get('path')} with {old_in.get('rows')} rows (now another file or content)")
    old_s = old.get("settings", {})
    for key, value in new["settings"].items():
        if old_s.get(key) != value:
            diffs.append(f"{key} {old_s.get(key)!r} (now {value!r})")
    return diffs


def prepare_folder(out_dir: Path, plan: ShardPlan, settings: dict[str, Any]) -> None:
    """Create ``out_dir`` or check it belongs to this run; clear what an interrupted run left behind.

    Refuses a folder whose manifest names other input or settings, and one holding shard files without a
    manifest. Removes temp files of interrupted writes and the old summary (a summary means "complete").
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    wanted = manifest(plan, settings)
    path = out_dir / MANIFEST
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise FolderMismatch(f"{path}: unreadable manifest ({e}); use a new --out") from None
        diffs = _differences(old, wanted)
        if diffs:
            raise FolderMismatch(
                f"{out_dir} was made by a run with other arguments: {'; '.join(diffs)}. "
                "Resume with the same arguments, or use a new --out"
            )
    else:
        if any(out_dir.glob("shard-*.parquet")):
            raise FolderMismatch(f"{out_dir} holds shard files but no {MANIFEST}; use a new --out")
        write_json_atomic(path, wanted)
    for pattern in (".shard-*.tmp", ".generate_*.tmp"):
        for stale in out_dir.glob(pattern):
            stale.unlink()
    (out_dir / SUMMARY).unlink(missing_ok=True)


def shard_done(out_dir: Path, plan: ShardPlan, k: int, n: int) -> bool:
    """Whether shard ``k`` is already written; a file with the wrong row count is an error, never redone
    silently (something other than this pipeline wrote it)."""
    path = plan.file(out_dir, k)
    if not path.exists():
        return False
    try:
        rows = pq.read_metadata(path).num_rows
    except (OSError, pa.ArrowException) as e:
        raise FolderMismatch(f"{path}: unreadable shard ({e}); delete it to generate it again") from None
    if rows != plan.shard_rows(k) * n:
        raise FolderMismatch(f"{path}: {rows} rows, expected {plan.shard_rows(k) * n}; delete it to generate it again")
    return True


def write_shard(path: Path, parts: list[pa.Table]) -> pa.Table:
    """Write one shard's results, ordered by input row then sample, atomically; returns what was written."""
    table = pa.concat_tables(parts).sort_by([(ROW, "ascending"), ("sample", "ascending")])
    table = table.select(GENERATIONS_SCHEMA.names).cast(GENERATIONS_SCHEMA)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return table
