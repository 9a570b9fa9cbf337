"""The predictions file: one JSON line per (benchmark row, task the row has a gold label for).

``gr-vl eval`` writes it from the evaluation parquet and the generations; ``gr-vl score`` reads it. Keeping the
raw model output (not a parsed label) in the file lets one generation run be scored under every parse mode.

    {"id": str, "benchmark": str, "task": "prompt"|"response", "modality": "text"|"image"|"text_image",
     "label": "harmful"|"unharmful", "output": str, "output_tokens": int, "p_harmful": float|null}

``p_harmful`` is the guard's p(harmful) at the verdict token of the line's task (:mod:`gr_vl_verl.harm_prob`),
null where the answer has none; files written before it existed lack it and read as null.

The reader streams and validates every line; a bad line is an error naming the file and the line number. The
writer publishes atomically (temp file beside the target, then ``os.replace``). Pure Python: no torch, no verl.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gr_vl_verl.atomic import atomic_write
from gr_vl_verl.data.records import MODALITIES, TASKS
from gr_vl_verl.protocol import LABELS

FIELDS: tuple[str, ...] = ("id", "benchmark", "task", "modality", "label", "output", "output_tokens")
#: Fields a line may lack (older files); the reader gives their default.
OPTIONAL_FIELDS: tuple[str, ...] = ("p_harmful",)

#: The released benchmark files split WildGuardTest by task; the paper reports it as one benchmark in both tables.
BENCHMARK_ALIASES: dict[str, str] = {"WildGuardTestPrompt": "WildGuardTest", "WildGuardTestResponse": "WildGuardTest"}


class PredictionError(ValueError):
    """A predictions line, evaluation row or generation that cannot be scored; the message names it."""


@dataclass(frozen=True, slots=True)
class Prediction:
    """One scored unit: a model output against the gold label of one task of one benchmark row."""

    id: str
    benchmark: str
    task: str
    modality: str
    label: str
    output: str
    output_tokens: int
    p_harmful: float | None = None

    def __post_init__(self) -> None:
        problem = _problem(self)
        if problem:
            raise PredictionError(problem)

    def to_json(self) -> str:
        return json.dumps({f: getattr(self, f) for f in (*FIELDS, *OPTIONAL_FIELDS)}, ensure_ascii=False)


def _problem(p: Prediction) -> str | None:
    """What is wrong with a record, or None. One check list for the reader, the builder and the constructor."""
    for name in ("id", "benchmark"):
        value = getattr(p, name)
        if not isinstance(value, str) or not value.strip():
            return f"`{name}` must be a non-empty string, got {value!r}"
    if p.task not in TASKS:
        return f"unknown task {p.task!r}; expected one of {TASKS}"
    if p.modality not in MODALITIES:
        return f"unknown modality {p.modality!r}; expected one of {MODALITIES}"
    if p.label not in LABELS:
        return f"unknown label {p.label!r}; expected one of {LABELS}"
    if not isinstance(p.output, str):
        return f"`output` must be a string, got {type(p.output).__name__}"
    tokens = p.output_tokens
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
        return f"`output_tokens` must be an integer >= 0, got {tokens!r}"
    prob = p.p_harmful
    if prob is not None and (isinstance(prob, bool) or not isinstance(prob, int | float) or not 0.0 <= prob <= 1.0):
        return f"`p_harmful` must be null or a number in [0, 1], got {prob!r}"
    return None


def _from_object(obj: object) -> Prediction:
    if not isinstance(obj, dict):
        raise PredictionError(f"a line must be a JSON object, got {type(obj).__name__}")
    missing = [f for f in FIELDS if f not in obj]
    if missing:
        raise PredictionError(f"missing field(s) {missing}")
    unknown = sorted(set(obj) - set(FIELDS) - set(OPTIONAL_FIELDS))
    if unknown:
        raise PredictionError(f"unknown field(s) {unknown}; expected only {[*FIELDS, *OPTIONAL_FIELDS]}")
    return Prediction(**obj)


def read_predictions(path: Path) -> Iterator[Prediction]:
    """Stream the records of a predictions file, validating each line.

    Blank lines are skipped. A bad line, a repeated ``(benchmark, task, id)`` (it would be counted twice) or a
    file with no records raises :class:`PredictionError` naming ``path:line``. A missing file raises
    ``FileNotFoundError``.
    """
    path = Path(path)
    seen: dict[tuple[str, str, str], int] = {}
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw.decode("utf-8"))
                record = _from_object(obj)
            except UnicodeDecodeError:
                raise PredictionError(f"{path}:{lineno}: not UTF-8 text") from None
            except json.JSONDecodeError as e:
                raise PredictionError(f"{path}:{lineno}: not JSON ({e.msg} at column {e.colno})") from None
            except PredictionError as e:
                raise PredictionError(f"{path}:{lineno}: {e}") from None
            key = (record.benchmark, record.task, record.id)
            if key in seen:
                raise PredictionError(
                    f"{path}:{lineno}: {record.benchmark} {record.task} id {record.id!r} repeats line {seen[key]}"
                )
            seen[key] = lineno
            yield record
    if not seen:
        raise PredictionError(f"{path}: no predictions (the file is empty)")


def write_predictions(path: Path, records: Iterable[Prediction]) -> int:
    """Write records as JSON lines, atomically; returns the count. A failure leaves no file under ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0

    def lines() -> Iterator[bytes]:
        nonlocal count
        for record in records:
            if not isinstance(record, Prediction):
                raise TypeError(f"expected Prediction, got {type(record).__name__}")
            count += 1
            yield (record.to_json() + "\n").encode("utf-8")

    atomic_write(path, lines())
    return count


# --------------------------------------------------------------------------------------------------
# Evaluation rows + generations -> predictions (what `gr-vl eval` calls)
# --------------------------------------------------------------------------------------------------
def _row_problem(row: Mapping[str, Any]) -> str | None:
    for key in ("benchmark", "id", "modality", "tasks"):
        if key not in row:
            return f"missing column {key!r}"
    tasks = row["tasks"]
    if not isinstance(tasks, list | tuple) or not tasks or any(t not in TASKS for t in tasks):
        return f"`tasks` must be a non-empty list of {TASKS}, got {tasks!r}"
    for task in tasks:
        if row.get(f"{task}_label") not in LABELS:
            return f"task {task!r} needs `{task}_label` in {LABELS}, got {row.get(f'{task}_label')!r}"
    return None


def _index_generations(generations: Iterable[Mapping[str, Any]], sample: int) -> dict[str, tuple[str, int, dict]]:
    by_id: dict[str, tuple[str, int, dict]] = {}
    for gen in generations:
        if gen.get("sample", 0) != sample:
            continue
        gid = gen.get("id")
        if gid in by_id:
            raise PredictionError(f"generation id {gid!r} appears twice for sample {sample}")
        output, tokens = gen.get("output"), gen.get("output_tokens")
        if not isinstance(output, str) or isinstance(tokens, bool) or not isinstance(tokens, int):
            raise PredictionError(f"generation id {gid!r}: needs a string `output` and an integer `output_tokens`")
        p = {"prompt": gen.get("p_harmful_request"), "response": gen.get("p_harmful_response")}
        by_id[gid] = (output, tokens, p)
    return by_id


def predictions_from_generations(
    eval_rows: Iterable[Mapping[str, Any]],
    generations: Iterable[Mapping[str, Any]],
    *,
    sample: int = 0,
) -> Iterator[Prediction]:
    """One prediction per (evaluation row, task in its ``tasks``), in row order, prompt before response.

    ``eval_rows`` are rows of the evaluation parquet (``benchmark, id, modality, tasks, prompt_label,
    response_label``; other columns are ignored); ``generations`` are rows of ``gr-vl generate`` output
    (``id, sample, output, output_tokens``, and the ``p_harmful_*`` columns where they exist), of which sample
    number ``sample`` is used. Benchmark names pass
    through :data:`BENCHMARK_ALIASES`. Every row needs exactly one generation and every generation a row:
    anything else is a :class:`PredictionError` naming the id (a mismatched pair of files would otherwise
    score a subset silently).
    """
    by_id = _index_generations(generations, sample)
    used: set[str] = set()
    for row in eval_rows:
        rid = row.get("id")
        problem = _row_problem(row)
        if problem:
            raise PredictionError(f"evaluation row {rid!r}: {problem}")
        if rid in used:
            raise PredictionError(f"evaluation row id {rid!r} appears twice; generations are matched by id")
        if rid not in by_id:
            raise PredictionError(f"evaluation row {rid!r} ({row['benchmark']}) has no generation (sample {sample})")
        used.add(rid)
        output, tokens, p = by_id[rid]
        benchmark = BENCHMARK_ALIASES.get(row["benchmark"], row["benchmark"])
        for task in (t for t in TASKS if t in row["tasks"]):
            try:
                label = row[f"{task}_label"]
                yield Prediction(rid, benchmark, task, row["modality"], label, output, tokens, p[task])
            except PredictionError as e:
                raise PredictionError(f"evaluation row {rid!r}: {e}") from None
    extra = sorted(set(by_id) - used)
    if extra:
        raise PredictionError(f"{len(extra)} generation(s) match no evaluation row, e.g. id {extra[0]!r}")
