"""The parquet schemas this package writes (verl's SFT and RL schemas, our evaluation schema), and their
read-back into :class:`GuardSample` so every round trip can be checked.

Schemas are explicit (no inference from the first rows) and carry ``gr_vl_verl.kind`` in their metadata, so a
reader can tell our files apart. ``images`` is always a list, ``[]`` for text rows, never null: verl's SFT
dataset calls ``len(images)`` and its RL dataset pairs each ``<image>`` with one list entry.

Pure Python + pyarrow: no torch, no verl.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq

from gr_vl_verl.data.readers.common import user_fields
from gr_vl_verl.data.records import GuardSample
from gr_vl_verl.protocol import USER_HEADER, gold_labels

Kind = Literal["sft", "rl", "eval"]
KINDS: tuple[str, ...] = ("sft", "rl", "eval")
#: 2: RL ``extra_info`` gained ``concat_of``.
SCHEMA_VERSION = "2"
#: ``data_source`` per modality: verl groups validation metrics by it, so each modality gets its own curve.
DATA_SOURCE_PREFIX = "guardreasoner_vl/"
ABILITY = "safety"


def _list(item: pa.DataType) -> pa.DataType:
    # Parquet names list items "element"; naming them so here makes the schema read back identical.
    return pa.list_(pa.field("element", item))


_MESSAGES = _list(pa.struct([("role", pa.string()), ("content", pa.string())]))
_IMAGES = _list(pa.struct([("bytes", pa.binary())]))
_EXTRA_INFO_FIELDS: list[tuple[str, pa.DataType]] = [
    ("id", pa.string()),
    ("source", pa.string()),
    ("modality", pa.string()),
    ("split", pa.string()),
    ("index", pa.int64()),
    ("placeholder_image", pa.bool_()),
]
_EXTRA_INFO = pa.struct(_EXTRA_INFO_FIELDS)
# RL rows also name the two rows a safety-aware concatenation was made of (`gr-vl augment`); null otherwise.
_RL_EXTRA_INFO = pa.struct([*_EXTRA_INFO_FIELDS, ("concat_of", _list(pa.string()))])
_GROUND_TRUTH = pa.struct([("prompt_label", pa.string()), ("response_label", pa.string())])


def _meta(kind: str) -> dict[bytes, bytes]:
    return {b"gr_vl_verl.kind": kind.encode(), b"gr_vl_verl.schema_version": SCHEMA_VERSION.encode()}


SFT_SCHEMA = pa.schema(
    [
        ("messages", _MESSAGES),
        ("images", _IMAGES),
        ("data_source", pa.string()),
        ("extra_info", _EXTRA_INFO),
    ],
    metadata=_meta("sft"),
)
RL_SCHEMA = pa.schema(
    [
        ("data_source", pa.string()),
        ("prompt", _MESSAGES),
        ("images", _IMAGES),
        ("ability", pa.string()),
        ("reward_model", pa.struct([("style", pa.string()), ("ground_truth", _GROUND_TRUTH)])),
        ("extra_info", _RL_EXTRA_INFO),
    ],
    metadata=_meta("rl"),
)
EVAL_SCHEMA = pa.schema(
    [
        ("benchmark", pa.string()),
        ("id", pa.string()),
        ("index", pa.int64()),
        ("modality", pa.string()),
        ("tasks", _list(pa.string())),
        ("prompt_label", pa.string()),
        ("response_label", pa.string()),
        ("request", pa.string()),
        ("response", pa.string()),
        ("data_source", pa.string()),
        ("prompt", _MESSAGES),
        ("images", _IMAGES),
    ],
    metadata=_meta("eval"),
)
SCHEMAS: dict[str, pa.Schema] = {"sft": SFT_SCHEMA, "rl": RL_SCHEMA, "eval": EVAL_SCHEMA}

#: What ``gr-vl generate`` writes: one row per (input row, sample), for mining and evaluation to read.
GENERATIONS_SCHEMA = pa.schema(
    [
        ("id", pa.string()),  # the input row's id (``extra_info.id`` of an RL row, ``id`` of an eval row)
        ("sample", pa.int32()),  # 0 .. n-1
        ("output", pa.string()),  # the decoded answer, special tokens removed
        ("output_tokens", pa.int32()),
        ("finish_reason", pa.string()),  # "stop" (end of sequence) or "length" (hit the token limit)
        # p(harmful) at the answer's Request / Response verdict token (gr_vl_verl.harm_prob); null without one.
        # Absent from files written before they existed: readers give None then.
        ("p_harmful_request", pa.float64()),
        ("p_harmful_response", pa.float64()),
    ],
    metadata=_meta("generations"),
)


def row_id(kind: str, row: dict[str, Any]) -> str:
    """The id of a row of one of our parquets: ``extra_info.id`` (SFT, RL) or ``id`` (eval)."""
    return row["id"] if kind == "eval" else row["extra_info"]["id"]


def parquet_kind(path: Path) -> str:
    """``sft``, ``rl``, ``eval`` or ``generations`` from a parquet's schema metadata; ValueError otherwise."""
    meta = pq.read_schema(path).metadata or {}
    kind = meta.get(b"gr_vl_verl.kind", b"").decode()
    if kind not in (*KINDS, "generations"):
        raise ValueError(f"{path}: not a gr_vl_verl parquet (schema metadata kind={kind!r})")
    return kind


#: What a generations parquet needs, by column: the type check and the type's name for messages.
_GENERATION_TYPES: dict[str, tuple[Any, str]] = {
    "id": (lambda t: pa.types.is_string(t) or pa.types.is_large_string(t), "string"),
    "sample": (pa.types.is_integer, "integer"),
    "output": (lambda t: pa.types.is_string(t) or pa.types.is_large_string(t), "string"),
    "output_tokens": (pa.types.is_integer, "integer"),
    "finish_reason": (lambda t: pa.types.is_string(t) or pa.types.is_large_string(t), "string"),
}


#: Columns a generations parquet may lack (older files, other tools); rows then read them as None.
OPTIONAL_GENERATION_COLUMNS: tuple[str, ...] = ("p_harmful_request", "p_harmful_response")


def check_generation_file(path: Path) -> str | None:
    """None for a `gr-vl generate` shard; a warning for a parquet written elsewhere that has the columns
    (``id``, ``sample``, ``output``, ``output_tokens``, ``finish_reason``) and their types, so answers generated
    by another tool can be mined; ValueError naming the missing or mistyped column otherwise."""
    schema = pq.read_schema(path)
    kind = (schema.metadata or {}).get(b"gr_vl_verl.kind", b"").decode()
    if kind == "generations":
        return None
    if kind:
        raise ValueError(f"{path}: holds gr_vl_verl {kind} rows, not generations")
    for column, (ok, type_name) in _GENERATION_TYPES.items():
        if column not in schema.names:
            raise ValueError(
                f"{path}: not a generations parquet: no column `{column}` (needs {', '.join(_GENERATION_TYPES)})"
            )
        if not ok(schema.field(column).type):
            raise ValueError(f"{path}: column `{column}` is {schema.field(column).type}, not {type_name}")
    return f"{path}: not written by `gr-vl generate`; read by its columns {', '.join(_GENERATION_TYPES)}"


def generation_files(path: Path, warn: Callable[[str], None] | None = None) -> list[Path]:
    """The generation parquet(s) at ``path``: the file itself, or a folder's ``*.parquet`` in name order.

    Each must be a `gr-vl generate` shard or have its columns and types (:func:`check_generation_file`);
    ``warn`` receives one line per file of the second kind."""
    path = Path(path)
    files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
    if not files or not all(f.is_file() for f in files):
        raise FileNotFoundError(f"no generation parquet at {path}")
    for f in files:
        try:
            message = check_generation_file(f)
        except pa.ArrowException as e:
            raise ValueError(f"{f}: not a readable parquet file ({e})") from None
        if message and warn is not None:
            warn(message)
    return files


def parquet_batches(path: Path, batch_size: int = 64, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
    """Record batches of a parquet file, holding about one row group at a time.

    Why not plain ``ParquetFile(path).iter_batches``: with pyarrow's default ``pre_buffer=True`` (pyarrow 26)
    the reader keeps every row group it has read until the iteration ends, so reading a 922 MiB RL parquet
    peaked at 1.1 GiB RSS; without pre-buffering it stayed at 0.2 GiB (docs/data.md, "Memory").
    """
    yield from pq.ParquetFile(path, pre_buffer=False).iter_batches(batch_size=batch_size, columns=columns)


def read_generations(path: Path, batch_size: int = 1024) -> Iterator[dict[str, Any]]:
    """Rows of ``gr-vl generate`` output (a file or a folder of shards), streamed; of a parquet written elsewhere
    only the generation columns are read. The probability columns are None in files without them."""
    for f in generation_files(path):
        names = pq.read_schema(f).names
        optional = [c for c in OPTIONAL_GENERATION_COLUMNS if c in names]
        absent = dict.fromkeys(c for c in OPTIONAL_GENERATION_COLUMNS if c not in names)
        for batch in parquet_batches(f, batch_size, columns=[*_GENERATION_TYPES, *optional]):
            for row in batch.to_pylist():
                yield {**row, **absent} if absent else row


def read_prepared(path: Path) -> Iterator[GuardSample]:
    """Read back a parquet written by :mod:`gr_vl_verl.data.writers` as samples (images as bytes).

    An SFT row's assistant turn comes back as the sample's ``answer`` (and its reasoning); RL and eval rows
    carry no target, so theirs have ``reasoning=None, answer=None``. A placeholder image added for a text row
    is dropped again.
    """
    kind = parquet_kind(path)
    if kind not in KINDS:
        raise ValueError(f"{path}: holds {kind}, not samples")
    for batch in parquet_batches(path):
        for row in batch.to_pylist():
            yield sample_from_row(kind, row)


def sample_from_row(kind: str, row: dict[str, Any]) -> GuardSample:
    """One row of a ``kind`` parquet (as ``to_pylist`` gives it) as a sample; see :func:`read_prepared`."""
    answer = None
    if kind == "eval":
        info = {**row, "source": row["benchmark"]}
        messages = row["prompt"]
        p_label, r_label = row["prompt_label"], row["response_label"]
    else:
        info = row["extra_info"]
        messages = row["messages"] if kind == "sft" else row["prompt"]
        if kind == "sft":
            answer = next(m["content"] for m in messages if m["role"] == "assistant")
            p_label, r_label = gold_labels(answer)
        else:
            truth = row["reward_model"]["ground_truth"]
            p_label, r_label = truth["prompt_label"], truth["response_label"]
    user = next(m["content"] for m in messages if m["role"] == "user")
    request, response, _ = user_fields(user)
    # an eval row's user turn may be a benchmark file's own (GuardSample.user_turn); others are the template's
    user_turn = user[user.find(USER_HEADER) :] if kind == "eval" else None
    images = tuple(img["bytes"] for img in row["images"])
    if info.get("placeholder_image"):
        images = ()
    return GuardSample(
        id=info["id"],
        source=info["source"],
        modality=info["modality"],
        request=request,
        response=response,
        images=images,
        prompt_label=p_label,
        response_label=r_label,
        answer=answer,
        user_turn=user_turn,
    )
