"""GuardReasoner-VLTest benchmark files (docs/data.md, "Sources").

Text benchmarks are JSON arrays of ``{"instruction", "input", "output"}`` rows (only ``input`` and ``output``
are read, as the original evaluator did; ``input`` is kept verbatim as the sample's ``user_turn``, its final
blank line included); HarmImageTest and SPA_VL_Eval hold
``{"messages": [user, assistant], "images": ["./HarmImageTest/x.png"]}``. Their images come, in order, from
the ``yueliu1999/GuardReasoner-VLTest`` dataset saved locally (its ``label`` 0/1 picks the benchmark) when
it is given, else from the listed paths.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from gr_vl_verl.data.readers.common import (
    ExtraKeys,
    Item,
    guard_rows,
    image_bytes,
    resolve_image_path,
    role_contents,
    row_id,
    user_fields,
)
from gr_vl_verl.data.readers.json_stream import iter_json_rows
from gr_vl_verl.data.records import GuardSample, ImageData, SampleError, infer_modality
from gr_vl_verl.protocol import USER_HEADER, gold_labels, normalize_label

# Which task each GuardReasoner-VLTest benchmark labels (docs/method.md §7; file names as the original code used
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


def read_benchmark(
    path: Path,
    name: str | None = None,
    data_root: Path | None = None,
    images: VLTestImages | None = None,
    tasks: tuple[str, ...] | None = None,
    keys: ExtraKeys | None = None,
) -> Iterator[Item]:
    """One GuardReasoner-VLTest benchmark file; only the labels of the benchmark's task(s) are kept.

    Images of HarmImageTest / SPA_VL_Eval come from ``images`` (the saved GuardReasoner-VLTest dataset) when
    given, by order, as the original evaluation took them, whatever paths the rows list; otherwise from the
    rows' ``images`` paths under ``data_root`` (the file's folder by default). Keys the reader does not use
    (the text benchmarks' ``instruction``) are ignored and counted in ``keys`` (rejected with ``keys.strict``).
    """
    path = Path(path)
    keys = keys if keys is not None else ExtraKeys()
    name = name or path.stem
    tasks = tasks or BENCHMARK_TASKS.get(name)
    if tasks is None:
        raise ValueError(f"unknown benchmark {name!r}: pass its tasks (prompt and/or response)")
    data_root = Path(data_root) if data_root is not None else path.parent

    def build(row: Any, default_id: str, index: int) -> GuardSample:
        if not isinstance(row, Mapping):
            raise SampleError("bad_format", f"row must be a JSON object, got {type(row).__name__}")
        if "messages" in row:
            keys.check(row, ("messages", "images", "id"))
            turns = role_contents(row["messages"], ("system", "user", "assistant"))
            if "user" not in turns or "assistant" not in turns:
                raise SampleError("missing_field", "benchmark messages need a user and an assistant turn")
            user, gold = turns["user"], turns["assistant"]
        elif "input" in row and "output" in row:
            keys.check(row, ("input", "output", "images", "id"))
            user, gold = row["input"], row["output"]
            if not isinstance(user, str) or not isinstance(gold, str):
                raise SampleError("bad_field", "`input` and `output` must be strings")
        else:
            raise SampleError("missing_field", f"need `messages` or `input`+`output`, got {sorted(row)}")
        user_turn = None
        if USER_HEADER in user:
            request, response, n_placeholders = user_fields(user)
            # the file's prompt from "Human user:" on, verbatim: what the released generate.py sent (it cut
            # the instruction off the image benchmarks' user turn at "\n\nHuman user:")
            user_turn = user[user.find(USER_HEADER) :]
        else:
            request, response, n_placeholders = user.strip(), None, 0
        raw = row.get("images") or []
        if not isinstance(raw, list):
            raise SampleError("bad_field", "`images` must be a list")
        if n_placeholders and images is not None and name in VLTEST_IMAGE_LABELS:
            imgs: tuple[ImageData, ...] = (images.get(name, index),)
        elif raw:
            imgs = tuple(resolve_image_path(data_root, p) for p in raw)
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
            id=row_id(row, default_id),
            source=name,
            modality=infer_modality(request, len(imgs)),
            request=request,
            response=response,
            images=imgs,
            prompt_label=labels.get("prompt"),
            response_label=labels.get("response"),
            user_turn=user_turn,
        )

    return guard_rows(iter_json_rows(path), name, build)


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
    try:
        labels = gold_labels(gold, require=tasks)
    except ValueError as e:
        raise SampleError("bad_label", f"gold {e}") from None
    found = {"prompt": labels.prompt_label, "response": labels.response_label}
    for task in tasks:
        if found[task] is None:
            raise SampleError("bad_label", f"gold answer has no {task} label: {gold[:80]!r}")
        out[task] = found[task]
    return out
