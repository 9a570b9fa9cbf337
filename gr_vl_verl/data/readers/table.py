"""Generic tables: JSON Lines, parquet or a ``datasets.load_from_disk`` folder, with a column mapping."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from gr_vl_verl.data.readers.common import Item, guard_rows, image_bytes
from gr_vl_verl.data.readers.json_stream import iter_json_rows
from gr_vl_verl.data.records import GuardSample, SampleError, infer_modality

FIELDS: tuple[str, ...] = (
    "id",
    "source",
    "modality",
    "request",
    "response",
    "images",
    "prompt_label",
    "response_label",
    "reasoning",
)
REQUIRED_FIELDS = ("request",)


def parse_mapping(pairs: Iterable[str]) -> dict[str, str]:
    """``["request=prompt", "prompt_label=label"]`` → ``{"request": "prompt", ...}`` (field → column)."""
    mapping: dict[str, str] = {}
    for pair in pairs:
        field, sep, column = pair.partition("=")
        if not sep or not column:
            raise ValueError(f"column mapping {pair!r} is not FIELD=COLUMN")
        if field not in FIELDS:
            raise ValueError(f"unknown field {field!r} in mapping; fields are {FIELDS}")
        mapping[field] = column
    return mapping


def _iter_table_rows(path: Path, batch_size: int) -> tuple[list[str] | None, Iterator[Any]]:
    if path.is_dir():
        import datasets

        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            raise ValueError(f"{path} holds several splits {list(ds)}; point at one split's folder")
        for col, feat in ds.features.items():
            # Keep images as stored bytes: decoding to PIL here would only be re-encoded later.
            if isinstance(feat, datasets.Image):
                ds = ds.cast_column(col, datasets.Image(decode=False))
            elif isinstance(feat, datasets.List) and isinstance(feat.feature, datasets.Image):
                ds = ds.cast_column(col, datasets.List(datasets.Image(decode=False)))

        def rows_ds() -> Iterator[Any]:
            for batch in ds.iter(batch_size=batch_size):
                keys = list(batch)
                for i in range(len(batch[keys[0]]) if keys else 0):
                    yield {k: batch[k][i] for k in keys}

        return list(ds.column_names), rows_ds()
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path, pre_buffer=False)  # pre-buffering keeps every row group read (schemas.py)

        def rows_pq() -> Iterator[Any]:
            for batch in pf.iter_batches(batch_size=batch_size):
                yield from batch.to_pylist()

        return list(pf.schema_arrow.names), rows_pq()
    if path.suffix in (".jsonl", ".json"):
        return None, iter_json_rows(path)
    raise ValueError(f"{path}: unsupported table format (need .jsonl, .json, .parquet or a dataset folder)")


def read_table(
    path: Path,
    mapping: Mapping[str, str] | None = None,
    data_root: Path | None = None,
    source: str | None = None,
    batch_size: int = 256,
) -> Iterator[Item]:
    """A generic table; ``mapping`` maps our field names to its column names (identity by default)."""
    path = Path(path)
    cols = {f: (mapping or {}).get(f, f) for f in FIELDS}
    source = source or path.stem
    data_root = Path(data_root) if data_root is not None else (path if path.is_dir() else path.parent)
    names, rows = _iter_table_rows(path, batch_size)
    if names is not None:
        missing = [cols[f] for f in REQUIRED_FIELDS if cols[f] not in names]
        labels = [cols[f] for f in ("prompt_label", "response_label") if cols[f] in names]
        if missing or not labels:
            need = missing or [cols["prompt_label"] + " or " + cols["response_label"]]
            raise ValueError(f"{path}: missing column(s) {need}; columns are {names}. Map them with --map")

    def build(row: Any, default_id: str, index: int) -> GuardSample:
        if not isinstance(row, Mapping):
            raise SampleError("bad_format", f"row must be an object, got {type(row).__name__}")
        get = {f: row.get(cols[f]) for f in FIELDS}
        if get["request"] is None and cols["request"] not in row:
            raise SampleError("missing_field", f"no column {cols['request']!r} (request)")
        raw_images = get["images"]
        if raw_images is None:
            raw_images = []
        elif not isinstance(raw_images, list | tuple):
            raw_images = [raw_images]
        images = tuple(image_bytes(v, data_root) for v in raw_images)
        request = get["request"] if get["request"] is not None else ""
        if not isinstance(request, str):
            raise SampleError("bad_field", f"request must be a string, got {type(request).__name__}")
        rid = get["id"]
        if rid is not None and (isinstance(rid, bool) or not isinstance(rid, str | int) or not str(rid).strip()):
            raise SampleError("bad_field", f"id must be a non-empty string or int, got {rid!r}")
        return GuardSample(
            id=str(rid) if rid is not None else default_id,
            source=get["source"] or source,
            modality=get["modality"] or infer_modality(request.strip(), len(images)),
            request=request,
            response=get["response"],
            images=images,
            prompt_label=get["prompt_label"],
            response_label=get["response_label"],
            reasoning=get["reasoning"],
        )

    return guard_rows(rows, source, build)
