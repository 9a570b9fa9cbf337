"""Readers: one per real source format, each yielding :class:`GuardSample` or :class:`Rejected` per row.

Formats (method.md §5):

* GuardReasoner-VLTrain, as exported for LLaMA-Factory: a JSON array of
  ``{"messages": [system, user, assistant], "images": ["./image/x.png"]}`` (``images`` absent for text);
  image paths are relative to a data root.
* GuardReasoner-VLTest benchmark files: text benchmarks ``{"input", "output"}``; HarmImageTest and
  SPA_VL_Eval ``{"messages": [user, assistant]}`` whose images come either from an ``images`` field or,
  in order, from the ``yueliu1999/GuardReasoner-VLTest`` dataset saved locally (``label`` 0/1 picks the set).
* Generic jsonl / parquet / ``datasets.load_from_disk`` folders, with a column mapping.
* The parquets this package writes (:func:`read_prepared`), so round trips can be checked.

Readers stream: a JSON array is decoded one element at a time, parquet one batch at a time. A bad row becomes
a ``Rejected`` with a reason; only a file that cannot be read at all raises.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from gr_vl_verl.data.records import (
    GuardSample,
    ImageData,
    Rejected,
    SampleError,
    infer_modality,
)
from gr_vl_verl.protocol import USER_HEADER, normalize_label, parse_answer, parse_user_content

Item = GuardSample | Rejected

# Which task each GuardReasoner-VLTest benchmark labels (method.md §7; file names as the original code used
# them, including its "XSTestReponseHarmful" spelling).
BENCHMARK_TASKS: dict[str, tuple[str, ...]] = {
    "ToxicChat": ("prompt",),
    "HarmBenchPrompt": ("prompt",),
    "OpenAIModeration": ("prompt",),
    "AegisSafetyTest": ("prompt",),
    "SimpleSafetyTests": ("prompt",),
    "WildGuardTestPrompt": ("prompt",),
    "HarmImageTest": ("prompt",),
    "HarmBenchResponse": ("response",),
    "SafeRLHF": ("response",),
    "BeaverTails": ("response",),
    "XSTestReponseHarmful": ("response",),
    "WildGuardTestResponse": ("response",),
    "SPA_VL_Eval": ("prompt", "response"),
}
# `label` column of the GuardReasoner-VLTest image dataset: which benchmark each image belongs to.
VLTEST_IMAGE_LABELS: dict[str, int] = {"HarmImageTest": 0, "SPA_VL_Eval": 1}

VLTRAIN_SPLITS: dict[str, str] = {
    "text": "GuardReasoner-VLTrainText.json",
    "image": "GuardReasoner-VLTrainImage.json",
    "text_image": "GuardReasoner-VLTrainTextImage.json",
}


# --------------------------------------------------------------------------------------------------
# Low-level: streaming JSON, safe paths
# --------------------------------------------------------------------------------------------------
def iter_json_rows(path: Path, chunk_size: int = 1 << 20) -> Iterator[Any]:
    """Yield the elements of a top-level JSON array, or the lines of a JSONL file, without loading it all.

    A JSONL line that does not parse is yielded as a :class:`SampleError` instance so the caller can count
    it; a broken JSON array cannot be resynchronised and raises.
    """
    with open(path, encoding="utf-8") as f:
        head = f.read(chunk_size)
        while head and not head.strip():
            chunk = f.read(chunk_size)
            if not chunk:
                break
            head += chunk
        stripped = head.lstrip()
        if stripped[:1] == "[":
            yield from _iter_json_array(f, stripped[1:], chunk_size, path)
            return
        f.seek(0)
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as e:
                    yield SampleError("bad_json", f"{path}:{lineno}: not valid JSON: {e.msg}")


def _iter_json_array(f: Any, buf: str, chunk_size: int, path: Path) -> Iterator[Any]:
    decoder = json.JSONDecoder()
    pos, first = 0, True

    def more() -> str:
        chunk = f.read(max(chunk_size, len(buf) - pos))
        if not chunk:
            raise ValueError(f"{path}: JSON array is truncated (no closing ']')")
        return chunk

    while True:
        while True:  # next non-blank character
            while pos < len(buf) and buf[pos] in " \t\r\n":
                pos += 1
            if pos < len(buf):
                break
            buf, pos = more(), 0
        if buf[pos] == "]":
            return
        if not first:
            if buf[pos] != ",":
                raise ValueError(f"{path}: expected ',' or ']' between array elements, got {buf[pos]!r}")
            pos += 1
            while True:
                while pos < len(buf) and buf[pos] in " \t\r\n":
                    pos += 1
                if pos < len(buf):
                    break
                buf, pos = more(), 0
        while True:
            try:
                value, end = decoder.raw_decode(buf, pos)
            except json.JSONDecodeError:
                buf, pos = buf[pos:] + more(), 0  # the element continues in the next chunk (or is broken)
                continue
            if end == len(buf):  # a number may go on in the next chunk
                chunk = f.read(chunk_size)
                if chunk:
                    buf, pos = buf[pos:] + chunk, 0
                    continue
            break
        yield value
        buf, pos, first = buf[end:], 0, False


def resolve_image_path(root: Path, rel: str) -> Path:
    """``./image/x.png`` → ``root/image/x.png``; refuse anything that resolves outside ``root``."""
    if not isinstance(rel, str) or not rel.strip():
        raise SampleError("bad_field", f"image path must be a non-empty string, got {rel!r}")
    root = root.resolve()
    candidate = Path(rel)
    path = (candidate if candidate.is_absolute() else root / candidate).resolve()
    if not path.is_relative_to(root):
        raise SampleError("path_escape", f"image path {rel!r} resolves outside the data root {root}")
    return path


def _role_contents(messages: object, allowed: tuple[str, ...]) -> dict[str, str]:
    if not isinstance(messages, list) or not messages:
        raise SampleError("missing_field", "`messages` must be a non-empty list")
    out: dict[str, str] = {}
    for m in messages:
        if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
            raise SampleError("missing_field", f"each message needs `role` and `content`, got {m!r:.80}")
        role, content = m["role"], m["content"]
        if role not in allowed:
            raise SampleError("unknown_field", f"unknown message role {role!r}; expected one of {allowed}")
        if role in out:
            raise SampleError("bad_field", f"more than one {role!r} message")
        if not isinstance(content, str):
            raise SampleError("bad_field", f"{role} content must be a string, got {type(content).__name__}")
        out[role] = content
    return out


def _user_fields(content: str) -> tuple[str, str | None, int]:
    """Request, response and placeholder count from a user turn (an instruction prefix is dropped)."""
    at = content.find(USER_HEADER)
    if at < 0:
        raise SampleError("bad_format", f"user content has no {USER_HEADER!r}: {content[:60]!r}")
    try:
        uc = parse_user_content(content[at:])
    except ValueError as e:
        raise SampleError("bad_format", str(e)) from None
    return uc.request, uc.response, uc.n_images


def _answer_labels(text: str) -> tuple[str | None, str | None, bool, str | None]:
    """(request label, response label, response said None, reasoning) from a gold answer string.

    Gold strings of some benchmarks are a bare ``Answers: Request: …`` without ``<result>`` tags; the parser
    only looks inside ``<result>``, so such a string is wrapped in one (one parser, no second regex).
    """
    parsed = parse_answer(text)
    if not parsed.has_result:
        parsed = parse_answer(f"<result>{text}</result>")
    return parsed.request_label, parsed.response_label, parsed.response_is_none, parsed.think


def _check_keys(row: Mapping, allowed: Iterable[str]) -> None:
    unknown = sorted(set(row) - set(allowed))
    if unknown:
        raise SampleError("unknown_field", f"unknown field(s) {unknown}; expected only {sorted(allowed)}")


def _row_id(row: Mapping, default: str) -> str:
    rid = row.get("id")
    if rid is None:
        return default
    if not isinstance(rid, str | int) or isinstance(rid, bool) or not str(rid).strip():
        raise SampleError("bad_field", f"id must be a non-empty string or int, got {rid!r}")
    return str(rid)


def _guard(rows: Iterable[Any], source: str, build: Callable[[Any, str, int], GuardSample]) -> Iterator[Item]:
    """Apply ``build`` to each row; turn its SampleError into a Rejected that names the row."""
    for index, row in enumerate(rows):
        default_id = f"{source}-{index:06d}"
        if isinstance(row, SampleError):
            yield Rejected(default_id, row.reason, str(row))
            continue
        try:
            yield build(row, default_id, index)
        except SampleError as e:
            rid = default_id
            if isinstance(row, Mapping) and isinstance(row.get("id"), str | int):
                rid = str(row["id"])
            yield Rejected(rid, e.reason, f"{rid}: {e}")


# --------------------------------------------------------------------------------------------------
# GuardReasoner-VLTrain (LLaMA-Factory JSON)
# --------------------------------------------------------------------------------------------------
def read_vltrain(path: Path, data_root: Path, source: str | None = None) -> Iterator[Item]:
    """One GuardReasoner-VLTrain split file; modality comes from the content (images and/or text)."""
    path = Path(path)
    source = source or path.stem

    def build(row: Any, default_id: str, index: int) -> GuardSample:
        if not isinstance(row, Mapping):
            raise SampleError("bad_format", f"row must be a JSON object, got {type(row).__name__}")
        _check_keys(row, ("messages", "images", "id"))
        if "messages" not in row:
            raise SampleError("missing_field", "no `messages`")
        turns = _role_contents(row["messages"], ("system", "user", "assistant"))
        for role in ("user", "assistant"):
            if role not in turns:
                raise SampleError("missing_field", f"no {role} message")
        request, response, n_placeholders = _user_fields(turns["user"])
        raw_images = row.get("images") or []
        if not isinstance(raw_images, list):
            raise SampleError("bad_field", f"`images` must be a list, got {type(raw_images).__name__}")
        if n_placeholders != len(raw_images):
            raise SampleError(
                "placeholder_mismatch",
                f"{n_placeholders} <image> placeholder(s) but {len(raw_images)} image(s)",
            )
        images = tuple(resolve_image_path(data_root, p) for p in raw_images)
        p_label, r_label, r_none, reasoning = _answer_labels(turns["assistant"])
        if p_label is None:
            raise SampleError("bad_label", "assistant answer has no 'Request: harmful|unharmful' in <result>")
        if r_label is None:
            raise SampleError("bad_label", "assistant answer has no 'Response: harmful|unharmful|None'")
        return GuardSample(
            id=_row_id(row, default_id),
            source=source,
            modality=infer_modality(request, len(images)),
            request=request,
            response=response,
            images=images,
            prompt_label=p_label,
            response_label=None if r_none else r_label,
            reasoning=reasoning,
        )

    return _guard(iter_json_rows(path), source, build)


def read_vltrain_dir(data_root: Path, splits: Iterable[str] = tuple(VLTRAIN_SPLITS)) -> Iterator[Item]:
    """All requested splits of a GuardReasoner-VLTrain folder, in a fixed order."""
    data_root = Path(data_root)
    for split in splits:
        if split not in VLTRAIN_SPLITS:
            raise ValueError(f"unknown VLTrain split {split!r}; expected one of {sorted(VLTRAIN_SPLITS)}")
        path = data_root / VLTRAIN_SPLITS[split]
        if not path.is_file():
            raise FileNotFoundError(f"GuardReasoner-VLTrain split {split!r}: {path} not found")
        yield from read_vltrain(path, data_root)


# --------------------------------------------------------------------------------------------------
# GuardReasoner-VLTest benchmarks
# --------------------------------------------------------------------------------------------------
class VLTestImages:
    """Images of the GuardReasoner-VLTest dataset saved with ``save_to_disk``, looked up by benchmark order.

    The original evaluation paired the i-th row of ``HarmImageTest.json`` with the i-th image whose ``label``
    is 0 (1 for ``SPA_VL_Eval``); this keeps that pairing, reading one image at a time.
    """

    def __init__(self, path: Path, split: str = "test") -> None:
        import datasets

        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise ValueError(f"{path}: no split {split!r} (has {list(ds)})")
            ds = ds[split]
        for col in ("image", "label"):
            if col not in ds.column_names:
                raise ValueError(f"{path}: needs columns image and label, has {ds.column_names}")
        if isinstance(ds.features["image"], datasets.Image):
            ds = ds.cast_column("image", datasets.Image(decode=False))
        self._ds = ds
        labels = ds["label"]
        self._rows = {k: [i for i, lab in enumerate(labels) if lab == k] for k in set(labels)}

    def get(self, benchmark: str, index: int) -> bytes:
        rows = self._rows.get(VLTEST_IMAGE_LABELS.get(benchmark, -1), [])
        if index >= len(rows):
            raise SampleError("image_missing", f"{benchmark} row {index}: the image dataset has {len(rows)} images")
        return image_bytes(self._ds[rows[index]]["image"])


def image_bytes(value: object, data_root: Path | None = None) -> ImageData:
    """Bytes or a safe path from the ways tables store an image: dict with bytes/path, bytes, path string."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, Mapping):
        if value.get("bytes"):
            return bytes(value["bytes"])
        value = value.get("path")
    if isinstance(value, str) and data_root is not None:
        return resolve_image_path(data_root, value)
    raise SampleError("image_missing", f"image has neither bytes nor a path under a data root: {value!r:.80}")


def read_benchmark(
    path: Path,
    name: str | None = None,
    data_root: Path | None = None,
    images: VLTestImages | None = None,
    tasks: tuple[str, ...] | None = None,
) -> Iterator[Item]:
    """One GuardReasoner-VLTest benchmark file; only the labels of the benchmark's task(s) are kept."""
    path = Path(path)
    name = name or path.stem
    tasks = tasks or BENCHMARK_TASKS.get(name)
    if tasks is None:
        raise ValueError(f"unknown benchmark {name!r}: pass its tasks (prompt and/or response)")
    data_root = Path(data_root) if data_root is not None else path.parent

    def build(row: Any, default_id: str, index: int) -> GuardSample:
        if not isinstance(row, Mapping):
            raise SampleError("bad_format", f"row must be a JSON object, got {type(row).__name__}")
        if "messages" in row:
            _check_keys(row, ("messages", "images", "id"))
            turns = _role_contents(row["messages"], ("system", "user", "assistant"))
            if "user" not in turns or "assistant" not in turns:
                raise SampleError("missing_field", "benchmark messages need a user and an assistant turn")
            user, gold = turns["user"], turns["assistant"]
        elif "input" in row and "output" in row:
            _check_keys(row, ("input", "output", "images", "id"))
            user, gold = row["input"], row["output"]
            if not isinstance(user, str) or not isinstance(gold, str):
                raise SampleError("bad_field", "`input` and `output` must be strings")
        else:
            raise SampleError("missing_field", f"need `messages` or `input`+`output`, got {sorted(row)}")
        if USER_HEADER in user:
            request, response, n_placeholders = _user_fields(user)
        else:
            request, response, n_placeholders = user.strip(), None, 0
        if "images" in row:
            raw = row["images"] or []
            if not isinstance(raw, list):
                raise SampleError("bad_field", "`images` must be a list")
            imgs: tuple[ImageData, ...] = tuple(resolve_image_path(data_root, p) for p in raw)
        elif n_placeholders and images is not None:
            imgs = (images.get(name, index),)
        elif n_placeholders:
            raise SampleError(
                "image_missing",
                "row has <image> but no `images` field and no image dataset (--image-dataset)",
            )
        else:
            imgs = ()
        if n_placeholders != len(imgs):
            raise SampleError(
                "placeholder_mismatch", f"{n_placeholders} <image> placeholder(s) but {len(imgs)} image(s)"
            )
        labels = _benchmark_labels(gold, tasks)
        return GuardSample(
            id=_row_id(row, default_id),
            source=name,
            modality=infer_modality(request, len(imgs)),
            request=request,
            response=response,
            images=imgs,
            prompt_label=labels.get("prompt"),
            response_label=labels.get("response"),
        )

    return _guard(iter_json_rows(path), name, build)


def _benchmark_labels(gold: str, tasks: tuple[str, ...]) -> dict[str, str]:
    """Labels for ``tasks`` from a gold string: a bare label (one task) or an answer string."""
    out: dict[str, str] = {}
    try:
        bare = normalize_label(gold, "label", allow_none=False)
    except ValueError:
        bare = None
    if bare is not None:
        if len(tasks) != 1:
            raise SampleError("bad_label", f"bare label {gold!r} but the benchmark has tasks {tasks}")
        return {tasks[0]: bare}
    p_label, r_label, r_none, _ = _answer_labels(gold)
    found = {"prompt": p_label, "response": None if r_none else r_label}
    for task in tasks:
        if found[task] is None:
            raise SampleError("bad_label", f"gold answer has no {task} label: {gold[:80]!r}")
        out[task] = found[task]
    return out


# --------------------------------------------------------------------------------------------------
# Generic tables: jsonl, parquet, datasets.load_from_disk
# --------------------------------------------------------------------------------------------------
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

        pf = pq.ParquetFile(path)

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

    return _guard(rows, source, build)


# --------------------------------------------------------------------------------------------------
# Our own outputs
# --------------------------------------------------------------------------------------------------
def read_prepared(path: Path) -> Iterator[GuardSample]:
    """Read back a parquet written by :mod:`gr_vl_verl.data.writers` as samples (images as bytes).

    RL rows carry no reasoning, so their samples have ``reasoning=None``; a placeholder image added for a
    text row is dropped again.
    """
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    meta = pf.schema_arrow.metadata or {}
    kind = meta.get(b"gr_vl_verl.kind", b"").decode()
    if kind not in ("sft", "rl", "eval"):
        raise ValueError(f"{path}: not a gr_vl_verl parquet (schema metadata kind={kind!r})")
    for batch in pf.iter_batches(batch_size=64):
        for row in batch.to_pylist():
            yield _prepared_row(kind, row)


def _prepared_row(kind: str, row: dict[str, Any]) -> GuardSample:
    if kind == "eval":
        info = {**row, "source": row["benchmark"]}
        messages = row["prompt"]
        p_label, r_label = row["prompt_label"], row["response_label"]
        reasoning = None
    else:
        info = row["extra_info"]
        messages = row["messages"] if kind == "sft" else row["prompt"]
        if kind == "sft":
            assistant = next(m["content"] for m in messages if m["role"] == "assistant")
            p_label, r_label, r_none, reasoning = _answer_labels(assistant)
            r_label = None if r_none else r_label
        else:
            truth = row["reward_model"]["ground_truth"]
            p_label, r_label, reasoning = truth["prompt_label"], truth["response_label"], None
    user = next(m["content"] for m in messages if m["role"] == "user")
    request, response, _ = _user_fields(user)
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
        reasoning=reasoning,
    )
