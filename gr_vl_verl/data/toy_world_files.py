"""The toy guard world's rows written in the released files' shapes (docs/data.md, "Sources"), and read back.

``GuardReasoner-VLTrain{Text,Image,TextImage}.json`` as ``datasets.Dataset.to_json`` writes them, the
GuardReasoner-VLTest ``benchmark/*.json`` files and its image dataset as ``save_to_disk`` writes it; the rows and
their rules are :mod:`gr_vl_verl.data.toy_world`'s. Pure: JSON here, ``datasets`` imported lazily for the images.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from gr_vl_verl.data.toy_world import Row, label
from gr_vl_verl.protocol import INSTRUCTION


def _to_json_lines(rows: list[dict[str, object]]) -> bytes:
    """As ``datasets.Dataset.to_json`` writes a split: JSON Lines, compact, ASCII, ``/`` escaped as ``\\/``."""
    lines = [json.dumps(r, separators=(",", ":"), ensure_ascii=True).replace("/", "\\/") for r in rows]
    return ("\n".join(lines) + "\n").encode("ascii")


def write_vltrain(root: Path, rows: dict[str, list[Row]]) -> dict[str, int]:
    """``GuardReasoner-VLTrain{Text,Image,TextImage}.json`` and the ``image/``, ``text_image/`` folders."""
    counts = {}
    for split, fname, folder in (
        ("text", "GuardReasoner-VLTrainText.json", None),
        ("image", "GuardReasoner-VLTrainImage.json", "image"),
        ("text_image", "GuardReasoner-VLTrainTextImage.json", "text_image"),
    ):
        records = []
        for i, row in enumerate(rows[split]):
            images = None
            if row.request.image is not None:
                name = f"{folder}/toy_{i:05d}.png"
                (root / folder).mkdir(parents=True, exist_ok=True)
                (root / name).write_bytes(row.request.image)
                images = ["./" + name]
            messages = [
                {"role": "system", "content": INSTRUCTION},
                {"role": "user", "content": row.user_turn()},
                {"role": "assistant", "content": row.answer()},
            ]
            records.append({"messages": messages, "images": images})  # null on text rows, as datasets writes
        (root / fname).write_bytes(_to_json_lines(records))
        counts[fname] = len(records)
    return counts


def write_vltest(root: Path, rows: dict[str, list[Row]]) -> dict[str, int]:
    """``benchmark/*.json`` in the GuardReasoner release's shapes, and the image dataset (``images/``)."""
    bench = root / "benchmark"
    bench.mkdir(parents=True, exist_ok=True)

    def dump(name: str, records: list[dict[str, object]]) -> None:
        (bench / f"{name}.json").write_text(json.dumps(records, indent=4, ensure_ascii=False), encoding="utf-8")

    def text_record(row: Row, output: str) -> dict[str, object]:
        return {"instruction": INSTRUCTION, "input": row.user_turn() + "\n", "output": output}

    dump("ToxicChat", [text_record(r, label(r.request.harmful)) for r in rows["ToxicChat"]])
    dump(
        "WildGuardTestPrompt",
        [text_record(r, f"Answers: \nRequest: {label(r.request.harmful)}\nCompletion: None\nResponse: None\n")
         for r in rows["WildGuardTestPrompt"]],
    )  # fmt: skip
    dump("HarmBenchResponse", [text_record(r, label(bool(r.response_harmful))) for r in rows["HarmBenchResponse"]])
    dump(
        "WildGuardTestResponse",
        [text_record(r, f"Answers: \nRequest: None\nCompletion: None\nResponse: {label(bool(r.response_harmful))}\n")
         for r in rows["WildGuardTestResponse"]],
    )  # fmt: skip
    two_tasks = INSTRUCTION.split("\n\nPut the reasoning process")[0]
    (bench / "HarmImageTest").mkdir(exist_ok=True)
    harm_image = []
    for i, row in enumerate(rows["HarmImageTest"]):
        name = f"HarmImageTest/toy_{i:05d}.png"
        (bench / name).write_bytes(row.request.image or b"")
        harm_image.append({
            "messages": [
                {"role": "user", "content": two_tasks + "\n\n" + row.user_turn()},
                {"role": "assistant", "content": f"Answers: \nRequest: {label(row.request.harmful)}\nResponse: "
                 "unharmful\n"},
            ],
            "images": ["./" + name],
        })  # fmt: skip
    dump("HarmImageTest", harm_image)
    spa = [
        {"messages": [{"role": "user", "content": INSTRUCTION + "\n" + r.user_turn()},
                      {"role": "assistant", "content": r.answer()}]}
        for r in rows["SPA_VL_Eval"]
    ]  # fmt: skip
    dump("SPA_VL_Eval", spa)
    _write_image_dataset(root / "images", rows)
    return {name: len(v) for name, v in rows.items()}


def _write_image_dataset(path: Path, rows: dict[str, list[Row]]) -> None:
    """The GuardReasoner-VLTest image dataset as ``save_to_disk`` writes it: ``image`` and ``label`` (0 =
    HarmImageTest, 1 = SPA_VL_Eval), the two benchmarks' images interleaved; readers pair by order per label.

    ``datasets`` stamps a random fingerprint into ``state.json``; it is replaced by a hash of the images so the
    folder is byte-identical for a seed (``load_from_disk`` reads any fingerprint).
    """
    import datasets

    datasets.disable_progress_bars()
    a = [r.request.image for r in rows["HarmImageTest"]]
    b = [r.request.image for r in rows["SPA_VL_Eval"]]
    images, labels = [], []
    for i in range(max(len(a), len(b))):
        for k, src in ((0, a), (1, b)):
            if i < len(src):
                images.append(src[i])
                labels.append(k)
    ds = datasets.Dataset.from_dict(
        {"image": [{"bytes": x, "path": None} for x in images], "label": labels},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")}),
    )
    ds.save_to_disk(str(path))
    state = path / "state.json"
    data = json.loads(state.read_text())
    digest = hashlib.sha256(b"".join(x or b"" for x in images) + bytes(labels)).hexdigest()[:16]
    data["_fingerprint"] = digest
    state.write_text(json.dumps(data, indent=2, sort_keys=True))


def training_texts(root: Path) -> list[str]:
    """The user and assistant turns of a GuardReasoner-VLTrain folder's JSON Lines files: the text a tiny
    tokenizer learns its vocabulary from (``gr_vl_verl.tiny.build_tokenizer(extra_texts=...)``)."""
    texts = []
    for path in sorted(Path(root).glob("GuardReasoner-VLTrain*.json")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                texts += [m["content"] for m in json.loads(line)["messages"] if m["role"] != "system"]
    return texts
