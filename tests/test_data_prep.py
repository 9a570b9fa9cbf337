"""Readers on the sample corpus, the prep pipeline, its accounting of bad rows, atomicity and determinism."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import shutil
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from data_helpers import SMALL, VLTEST, VLTRAIN, VLTRAIN_COUNTS, noise_png, png, train_row, write_split

from gr_vl_verl.cli import main as cli_main
from gr_vl_verl.data import readers
from gr_vl_verl.data.pipeline import PrepConfig, PrepError, load_images, run_prep
from gr_vl_verl.data.records import GuardSample, Rejected
from gr_vl_verl.data.schemas import RL_SCHEMA, SFT_SCHEMA, read_prepared
from gr_vl_verl.data.writers import RowOptions
from gr_vl_verl.protocol import INSTRUCTION, INSTRUCTION_RL, format_answer


def cfg(**kw) -> PrepConfig:
    """Small images for every output but SFT (eval_pixels None: the eval output takes the RL bounds here)."""
    kw.setdefault("progress", False)
    kw.setdefault("images", SMALL)
    kw.setdefault("eval_pixels", None)
    return PrepConfig(**kw)


def vltrain_samples() -> list[GuardSample]:
    items = list(readers.read_vltrain_dir(VLTRAIN))
    assert all(isinstance(i, GuardSample) for i in items), [i for i in items if isinstance(i, Rejected)]
    return items


def loaded(samples: list[GuardSample]) -> list[GuardSample]:
    out = [load_images(s, SMALL) for s in samples]
    assert all(isinstance(s, GuardSample) for s in out)
    return out


# --------------------------------------------------------------------------------------------------
# Readers on the shipped sample corpus
# --------------------------------------------------------------------------------------------------
def test_vltrain_reader_covers_all_modalities_and_labels():
    samples = vltrain_samples()
    assert Counter(s.modality for s in samples) == VLTRAIN_COUNTS
    assert {s.prompt_label for s in samples} == {"harmful", "unharmful"}
    assert {s.response_label for s in samples} == {"harmful", "unharmful", None}
    assert any(s.response is None for s in samples) and any(s.response is not None for s in samples)
    assert all(s.reasoning for s in samples)
    assert len({s.id for s in samples}) == len(samples)
    for s in samples:
        assert len(s.images) == (0 if s.modality == "text" else 1)
        assert all(p.is_file() and p.is_relative_to(VLTRAIN.resolve()) for p in s.images)
    assert all(s.request == "" for s in samples if s.modality == "image")


def test_vltest_reader_pairs_images_by_order_and_keeps_benchmark_tasks():
    images = readers.VLTestImages(VLTEST / "images")
    got = {}
    for name in readers.BENCHMARK_TASKS:
        path = VLTEST / "benchmark" / f"{name}.json"
        if path.is_file():
            items = list(readers.read_benchmark(path, images=images))
            assert all(isinstance(i, GuardSample) for i in items), items
            got[name] = items
    assert set(got) == {
        "ToxicChat",
        "WildGuardTestPrompt",
        "HarmBenchResponse",
        "WildGuardTestResponse",
        "HarmImageTest",
        "SPA_VL_Eval",
    }
    assert all(s.tasks == ("prompt",) for s in got["ToxicChat"] + got["WildGuardTestPrompt"])
    assert all(s.tasks == ("response",) for s in got["HarmBenchResponse"] + got["WildGuardTestResponse"])
    assert all(s.tasks == ("prompt", "response") for s in got["SPA_VL_Eval"])
    assert all(s.modality == "image" for s in got["HarmImageTest"])
    assert all(s.modality == "text_image" for s in got["SPA_VL_Eval"])
    # The image dataset interleaves the two sets (0,1,0,1,...): row i of each set gets its own i-th image.
    import datasets

    ds = datasets.load_from_disk(str(VLTEST / "images")).cast_column("image", datasets.Image(decode=False))
    by_label = {k: [r["image"]["bytes"] for r in ds if r["label"] == k] for k in (0, 1)}
    assert [s.images[0] for s in got["HarmImageTest"]] == by_label[0]
    assert [s.images[0] for s in got["SPA_VL_Eval"]] == by_label[1]


def test_table_reader_jsonl_parquet_and_saved_dataset(tmp_path):
    import datasets
    import pyarrow as pa

    rows = [
        {"uid": "r1", "text": "How do I bake bread?", "label": "unharmful", "pic": None},
        {"uid": "r2", "text": "Describe this.", "label": "harmful", "pic": {"bytes": png(), "path": None}},
        {"uid": "r3", "text": "", "label": "Harmful", "pic": {"bytes": png(30, 20), "path": None}},
    ]
    mapping = readers.parse_mapping(["id=uid", "request=text", "prompt_label=label", "images=pic"])
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "t.parquet")
    ds = datasets.Dataset.from_list(rows).cast_column("pic", datasets.Image())
    ds.save_to_disk(str(tmp_path / "hf"))
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text("".join(json.dumps({**r, "pic": "img/a.png" if r["pic"] else None}) + "\n" for r in rows))
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(png())
    for path in (tmp_path / "t.parquet", tmp_path / "hf", jsonl):
        items = list(readers.read_table(path, mapping))
        assert [i.id for i in items] == ["r1", "r2", "r3"]
        assert [i.modality for i in items] == ["text", "text_image", "image"]
        assert [i.prompt_label for i in items] == ["unharmful", "harmful", "harmful"]
        assert all(load_images(i, SMALL).images for i in items[1:])
    # a list-of-images column (HF `List(Image)`), two images for one request
    multi = datasets.Dataset.from_dict(
        {"request": ["Compare these."], "prompt_label": ["unharmful"], "images": [[png(), png(20, 40)]]}
    ).cast_column("images", datasets.List(datasets.Image()))
    multi.save_to_disk(str(tmp_path / "multi"))
    (item,) = readers.read_table(tmp_path / "multi")
    assert item.modality == "text_image" and item.images == (png(), png(20, 40))
    with pytest.raises(ValueError, match="missing column"):
        list(readers.read_table(tmp_path / "t.parquet", {}))
    with pytest.raises(ValueError, match="unknown field"):
        readers.parse_mapping(["colour=c"])


# --------------------------------------------------------------------------------------------------
# Pipeline: round trip, schema, options
# --------------------------------------------------------------------------------------------------
def test_round_trip_through_every_parquet(tmp_path):
    samples = vltrain_samples()
    summary = run_prep(iter(samples), tmp_path, cfg(formats=("sft", "rl", "eval")))
    assert summary.rows_in == len(samples)
    assert {n: s.written for n, s in summary.outputs.items()} == {
        "sft_train.parquet": 34,
        "rl_train.parquet": 34,
        "eval.parquet": 34,
    }
    expected = loaded(samples)
    assert all(s.answer for s in expected)
    assert list(read_prepared(tmp_path / "sft_train.parquet")) == expected  # the answer comes back verbatim
    no_target = [dataclasses.replace(s, reasoning=None, answer=None) for s in expected]  # RL and eval: none
    assert list(read_prepared(tmp_path / "eval.parquet")) == no_target
    assert list(read_prepared(tmp_path / "rl_train.parquet")) == no_target
    # benchmarks too (prompt-only and response-only labels, images from the saved dataset)
    images = readers.VLTestImages(VLTEST / "images")
    bench = [
        s
        for name in ("ToxicChat", "HarmBenchResponse", "HarmImageTest", "SPA_VL_Eval")
        for s in readers.read_benchmark(VLTEST / "benchmark" / f"{name}.json", images=images)
    ]
    run_prep(iter(bench), tmp_path / "b", cfg(formats=("eval",)))
    assert list(read_prepared(tmp_path / "b" / "eval.parquet")) == loaded(bench)


def test_rl_and_sft_schema_and_values(tmp_path):
    run_prep(iter(vltrain_samples()), tmp_path, cfg(formats=("sft", "rl")))
    rl = pq.read_table(tmp_path / "rl_train.parquet")
    assert rl.schema.equals(RL_SCHEMA, check_metadata=True)
    rows = rl.to_pylist()
    assert Counter(r["data_source"] for r in rows) == {
        "guardreasoner_vl/text": 12,
        "guardreasoner_vl/image": 10,
        "guardreasoner_vl/text_image": 12,
    }
    for i, r in enumerate(rows):
        assert r["ability"] == "safety" and r["reward_model"]["style"] == "rule"
        assert set(r["reward_model"]["ground_truth"]) == {"prompt_label", "response_label"}
        assert r["prompt"][0] == {"role": "system", "content": INSTRUCTION}
        assert r["images"] is not None and len(r["images"]) == r["prompt"][1]["content"].count("<image>")
        assert r["extra_info"]["index"] == i and r["extra_info"]["split"] == "train"
        assert r["extra_info"]["modality"] == r["data_source"].split("/")[1]
    sft = pq.read_table(tmp_path / "sft_train.parquet")
    assert sft.schema.equals(SFT_SCHEMA, check_metadata=True)
    for r in sft.to_pylist():
        assert [m["role"] for m in r["messages"]] == ["system", "user", "assistant"]
        assert r["images"] is not None and len(r["images"]) == r["messages"][1]["content"].count("<image>")
        assert r["messages"][2]["content"].startswith("<think>\n")


# As the GuardReasoner text data writes answers: "Answers: " with its space, text outside the two blocks.
def _as_released(reasoning: str, p: str, r: str | None) -> str:
    verdict = f"Answers: \nRequest: {p}\nResponse: {r or 'None'}\n"
    return f"Let me think.\n<think>\n{reasoning}\n</think>\n\n<result>\n{verdict}</result>\n"


@pytest.fixture
def released_corpus(tmp_path) -> Path:
    root = tmp_path / "released"
    rows = []
    for i, (p, r) in enumerate([("harmful", None), ("unharmful", "unharmful"), ("harmful", "harmful")]):
        row = train_row(request=f"Question {i}?", response=None if r is None else "Reply.", prompt_label=p,
                        response_label=r)  # fmt: skip
        row["messages"][2]["content"] = _as_released(f"## Reasoning Step 1: case {i}.", p, r)
        rows.append(row)
    malformed = train_row(request="No result block?")
    malformed["messages"][2]["content"] = "<think>\nIt is fine.\n</think>\nRequest: unharmful\nResponse: None"
    rows.append({**malformed, "id": "labels-outside-result"})
    write_split(root, "GuardReasoner-VLTrainText.json", rows)
    return root


def _targets(path: Path) -> list[str]:
    return [r["messages"][-1]["content"] for r in pq.read_table(path).to_pylist()]


def test_sft_target_is_the_dataset_answer_verbatim_or_rerendered(released_corpus, tmp_path):
    samples = list(readers.read_vltrain_dir(released_corpus, ["text"]))
    verbatim = run_prep(iter(samples), tmp_path / "v", cfg(formats=("sft", "rl")))
    written = _targets(tmp_path / "v" / "sft_train.parquet")
    assert written == [s.answer for s in samples[:3]]  # byte for byte, text outside the blocks included
    assert list(read_prepared(tmp_path / "v" / "sft_train.parquet")) == samples[:3]
    # a target without its <result> block is not trained on as written; RL only needs its labels
    assert verbatim.outputs["sft_train.parquet"].skipped == {"malformed_answer": 1}
    assert verbatim.dropped == [
        {"id": "labels-outside-result", "reason": "malformed_answer", "output": "sft_train.parquet",
         "message": verbatim.dropped[0]["message"]}
    ]  # fmt: skip
    assert "--sft-target rerender" in verbatim.dropped[0]["message"]
    assert verbatim.outputs["rl_train.parquet"].written == 4

    rerender = run_prep(iter(samples), tmp_path / "r", cfg(formats=("sft",), rows=RowOptions(sft_target="rerender")))
    assert rerender.outputs["sft_train.parquet"].written == 4 and rerender.options["sft_target"] == "rerender"
    rebuilt = _targets(tmp_path / "r" / "sft_train.parquet")
    assert rebuilt == [format_answer(s.reasoning, s.prompt_label, s.response_label) for s in samples]
    assert all("Let me think." not in t for t in rebuilt)
    back = list(read_prepared(tmp_path / "r" / "sft_train.parquet"))
    assert [(b.reasoning, b.prompt_label, b.response_label) for b in back] == [
        (s.reasoning, s.prompt_label, s.response_label) for s in samples
    ]


def test_sft_images_get_their_own_bounds_from_one_decode(tmp_path, monkeypatch):
    """RL keeps the paper's RL bounds, SFT gets LLaMA-Factory's 768x768 cap; each image is decoded once."""
    from PIL import Image

    from gr_vl_verl.data import images as image_module

    root = tmp_path / "corpus"
    (root / "image").mkdir(parents=True)
    (root / "image" / "big.png").write_bytes(noise_png(1200, 800))  # 960,000 pixels
    (root / "image" / "small.jpg").write_bytes(png(20, 20, fmt="JPEG"))
    rows = [{**train_row(images=[f"./image/{name}"]), "id": name} for name in ("big.png", "small.jpg")]
    write_split(root, "GuardReasoner-VLTrainImage.json", rows)
    decodes = []
    real_decode = image_module._decode
    monkeypatch.setattr(image_module, "_decode", lambda *a: decodes.append(a[1]) or real_decode(*a))

    rc = cli_main(["prep", "vltrain", "--data-root", str(root), "--splits", "image", "--out", str(tmp_path / "o"),
                   "--formats", "sft,rl", "--no-progress"])  # fmt: skip
    assert rc == 0 and len(decodes) == 2  # one per image, whatever the number of bounds

    def areas(path: Path) -> list[int]:
        table = pq.read_table(path).to_pylist()
        sizes = [Image.open(io.BytesIO(r["images"][0]["bytes"])).size for r in table]
        return [w * h for w, h in sizes]

    big_rl, small_rl = areas(tmp_path / "o" / "rl_train.parquet")
    big_sft, small_sft = areas(tmp_path / "o" / "sft_train.parquet")
    assert big_rl == 1200 * 800 and 262144 <= small_rl <= 4194304  # the RL bounds
    assert 589824 * 0.99 <= big_sft <= 589824 and 1024 <= small_sft < 262144  # LLaMA-Factory's bounds
    summary = json.loads((tmp_path / "o" / "vltrain_summary.json").read_text())
    assert (summary["options"]["sft_min_pixels"], summary["options"]["sft_max_pixels"]) == (1024, 589824)

    rc = cli_main(["prep", "vltrain", "--data-root", str(root), "--splits", "image", "--out", str(tmp_path / "o2"),
                   "--formats", "sft", "--sft-max-pixels", "10000", "--sft-min-pixels", "2000",
                   "--no-progress"])  # fmt: skip
    assert rc == 0
    assert all(2000 <= a <= 10000 for a in areas(tmp_path / "o2" / "sft_train.parquet"))


def test_original_rl_layout_and_placeholder(tmp_path):
    from PIL import Image

    run_prep(iter(vltrain_samples()), tmp_path, cfg(formats=("rl",), rows=RowOptions.original_rl()))
    rows = pq.read_table(tmp_path / "rl_train.parquet").to_pylist()
    text = [r for r in rows if r["data_source"].endswith("/text")]
    assert len(text) == 12
    for r in text:
        assert len(r["prompt"]) == 1 and r["prompt"][0]["role"] == "user"
        assert r["prompt"][0]["content"].startswith(INSTRUCTION_RL.strip() + " Human user:\n<image>\n")
        assert r["extra_info"]["placeholder_image"] is True
        assert Image.open(io.BytesIO(r["images"][0]["bytes"])).size == (1, 1)
    assert not any(r["extra_info"]["placeholder_image"] for r in rows if not r["data_source"].endswith("/text"))
    # reading back drops the placeholder again
    assert [s.images for s in read_prepared(tmp_path / "rl_train.parquet")][:12] == [()] * 12


def test_val_split_is_seeded_and_stable(tmp_path):
    samples = vltrain_samples()
    a = run_prep(iter(samples), tmp_path / "a", cfg(formats=("rl",), val_fraction=0.3, seed=1))
    run_prep(iter(reversed(samples)), tmp_path / "b", cfg(formats=("rl",), val_fraction=0.3, seed=1))
    run_prep(iter(samples), tmp_path / "c", cfg(formats=("rl",), val_fraction=0.3, seed=2))

    def ids(d: Path, split: str) -> set[str]:
        return {s.id for s in read_prepared(d / f"rl_{split}.parquet")}

    assert 0 < a.outputs["rl_val.parquet"].written < 34
    assert a.outputs["rl_val.parquet"].written + a.outputs["rl_train.parquet"].written == 34
    assert ids(tmp_path / "a", "val") == ids(tmp_path / "b", "val")  # per id, not per position
    assert ids(tmp_path / "a", "val") != ids(tmp_path / "c", "val")
    assert ids(tmp_path / "a", "val").isdisjoint(ids(tmp_path / "a", "train"))


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.parquet"))}


def test_same_input_and_seed_give_the_same_bytes(tmp_path):
    def run(out: Path, workers: int) -> dict[str, str]:
        items = readers.read_vltrain_dir(VLTRAIN)
        run_prep(items, out, cfg(formats=("sft", "rl", "eval"), val_fraction=0.25, seed=7, workers=workers))
        return _digest(out)

    first = run(tmp_path / "1", 1)
    assert len(first) == 5
    assert run(tmp_path / "2", 1) == first
    assert run(tmp_path / "3", 2) == first  # worker processes do not change the output


# --------------------------------------------------------------------------------------------------
# Bad input: every row written or counted with its id and reason
# --------------------------------------------------------------------------------------------------
@pytest.fixture
def broken_corpus(tmp_path) -> Path:
    root = tmp_path / "corpus"
    (root / "image").mkdir(parents=True)
    (root / "image" / "ok.png").write_bytes(png())
    (root / "image" / "empty.png").write_bytes(b"")
    (root / "image" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    big = noise_png(64, 64)
    (root / "image" / "truncated.png").write_bytes(big[: len(big) // 2])
    (root / "image" / "huge.png").write_bytes(noise_png(256, 256))  # over --max-image-bytes below
    (tmp_path / "outside.png").write_bytes(png())
    good = train_row()
    rows = [
        {**good, "id": "ok-text"},
        {**train_row(images=["./image/ok.png"]), "id": "ok-image"},
        {**train_row(images=["./image/nope.png"]), "id": "missing-image"},
        {**train_row(images=["./image/empty.png"]), "id": "empty-image"},
        {**train_row(images=["./image/corrupt.png"]), "id": "corrupt-image"},
        {**train_row(images=["./image/truncated.png"]), "id": "truncated-image"},
        {**train_row(images=["./image/huge.png"]), "id": "huge-image"},
        {**train_row(images=["../outside.png"]), "id": "escape"},
        {**good, "id": "ok-text"},  # duplicate id
        {"id": "no-messages", "images": []},
        {**good, "id": "unknown-key", "colour": "blue"},
        {"id": "unknown-role", "messages": good["messages"] + [{"role": "tool", "content": "x"}]},
        {
            "id": "bad-label",
            "messages": [
                *good["messages"][:2],
                {"role": "assistant", "content": "<think>x</think><result>Request: maybe\nResponse: None</result>"},
            ],
        },
        {**train_row(images=["./image/ok.png", "./image/ok.png"]), "id": "two-images-one-placeholder"},
        {**train_row(response="Sure.", response_label=None), "id": "response-without-label"},
    ]
    rows[13]["messages"][1]["content"] = rows[13]["messages"][1]["content"].replace("<image>\n<image>", "<image>")
    write_split(root, "GuardReasoner-VLTrainText.json", rows)
    return root


EXPECTED_DROPS = {
    "missing-image": "image_missing",
    "empty-image": "image_empty",
    "corrupt-image": "image_corrupt",
    "truncated-image": "image_corrupt",
    "huge-image": "image_oversized",
    "escape": "path_escape",
    "ok-text": "duplicate_id",
    "no-messages": "missing_field",
    "unknown-role": "unknown_field",
    "bad-label": "bad_label",
    "two-images-one-placeholder": "placeholder_mismatch",
}


def test_bad_rows_are_counted_with_id_and_reason(broken_corpus, tmp_path, capsys):
    out = tmp_path / "out"
    rc = cli_main(
        ["prep", "vltrain", "--data-root", str(broken_corpus), "--splits", "text", "--out", str(out),
         "--formats", "sft,rl", "--min-pixels", "784", "--max-pixels", "12544", "--max-image-bytes", "20000",
         "--no-progress"]
    )  # fmt: skip
    assert rc == 0
    summary = json.loads((out / "vltrain_summary.json").read_text())
    assert summary["rows_in"] == 15
    rejected = {d["id"]: d["reason"] for d in summary["dropped"] if "output" not in d}
    assert rejected == EXPECTED_DROPS
    assert all(d["message"] for d in summary["dropped"])
    assert sum(summary["rejected"].values()) == len(EXPECTED_DROPS)
    assert summary["ignored_keys"] == {"colour": 1}  # the unknown key is ignored and counted, the row kept
    # the response without a label is readable but not trainable: skipped by both outputs, by id
    per_output = [(d["id"], d["reason"], d["output"]) for d in summary["dropped"] if "output" in d]
    assert per_output == [
        ("response-without-label", "missing_label", "sft_train.parquet"),
        ("response-without-label", "missing_label", "rl_train.parquet"),
    ]
    for name in ("sft_train.parquet", "rl_train.parquet"):
        stats = summary["outputs"][name]
        assert stats["written"] == 3
        # nothing lost: rows in = rejected + written + skipped, for each output
        assert summary["rows_in"] == sum(summary["rejected"].values()) + stats["written"] + sum(
            stats["skipped"].values()
        )
        assert [s.id for s in read_prepared(out / name)] == ["ok-text", "ok-image", "unknown-key"]
    printed = capsys.readouterr().out
    assert "rows in: 15" in printed and "image_corrupt: 2" in printed and "ignored keys (rows): colour: 1" in printed


def test_strict_fields_rejects_rows_with_keys_the_reader_does_not_use(broken_corpus, tmp_path):
    out = tmp_path / "out"
    rc = cli_main(["prep", "vltrain", "--data-root", str(broken_corpus), "--splits", "text", "--out", str(out),
                   "--formats", "rl", "--strict-fields", "--no-progress"])  # fmt: skip
    assert rc == 0
    summary = json.loads((out / "vltrain_summary.json").read_text())
    rejected = {d["id"]: d["reason"] for d in summary["dropped"] if "output" not in d}
    assert rejected["unknown-key"] == "unknown_field" and summary["ignored_keys"] == {}


def test_strict_turns_a_skip_into_an_error_and_publishes_nothing(broken_corpus, tmp_path, capsys):
    out = tmp_path / "out"
    rc = cli_main(["prep", "vltrain", "--data-root", str(broken_corpus), "--splits", "text", "--out", str(out),
                   "--strict", "--no-progress"])  # fmt: skip
    assert rc == 1
    err = capsys.readouterr().err
    assert "missing-image" in err and "image_missing" in err
    assert not list(out.glob("*.parquet")) and not list(out.glob(".*tmp"))


def test_interrupted_run_leaves_no_partial_parquet(tmp_path):
    samples = vltrain_samples()
    out = tmp_path / "out"
    run_prep(iter(samples[:3]), out, cfg(formats=("rl",)))
    before = (out / "rl_train.parquet").read_bytes()

    def exploding():
        yield from samples[:20]
        raise KeyboardInterrupt("interrupted midway")

    with pytest.raises(KeyboardInterrupt):
        run_prep(exploding(), out, cfg(formats=("rl",), row_group_size=4, batch_size=4))
    assert (out / "rl_train.parquet").read_bytes() == before  # the old file is untouched
    assert sorted(p.name for p in out.iterdir()) == ["prep_summary.json", "rl_train.parquet"]
    with pytest.raises(PrepError):
        run_prep(iter([*samples[:5], Rejected("x", "bad_label", "x: bad")]), tmp_path / "s", cfg(strict=True))
    assert not (tmp_path / "s" / "rl_train.parquet").exists()


def test_broken_json_array_is_a_clear_error(tmp_path, capsys):
    root = tmp_path / "c"
    root.mkdir()
    (root / "GuardReasoner-VLTrainText.json").write_text('[{"messages": []}, {"mess')
    rc = cli_main(["prep", "vltrain", "--data-root", str(root), "--splits", "text", "--out", str(tmp_path / "o"),
                   "--no-progress"])  # fmt: skip
    assert rc == 1 and "truncated" in capsys.readouterr().err
    assert not list((tmp_path / "o").glob("*.parquet"))


def test_cli_vltest_and_data_prep_scripts(tmp_path):
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "eval"
    cmd = [sys.executable, str(repo / "data_prep" / "guardreasoner_vltest.py"),
           "--benchmark-dir", str(VLTEST / "benchmark"), "--image-dataset", str(VLTEST / "images"),
           "--out", str(out), "--min-pixels", "784", "--max-pixels", "12544", "--no-progress"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=repo, timeout=120)
    assert done.returncode == 0, done.stderr
    table = pq.read_table(out / "eval.parquet").to_pylist()
    assert Counter(r["benchmark"] for r in table) == {
        "ToxicChat": 6, "WildGuardTestPrompt": 3, "HarmImageTest": 6, "HarmBenchResponse": 3,
        "WildGuardTestResponse": 2, "SPA_VL_Eval": 6,
    }  # fmt: skip
    assert all(len(r["images"]) == (r["modality"] != "text") for r in table)
    spa = [r for r in table if r["benchmark"] == "SPA_VL_Eval"]
    assert all(r["tasks"] == ["prompt", "response"] and r["response_label"] for r in spa)
    # the training script accepts the same options
    cmd = [sys.executable, str(repo / "data_prep" / "guardreasoner_vltrain.py"), "--data-root", str(VLTRAIN),
           "--out", str(tmp_path / "train"), "--no-progress", "--splits", "image"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=repo, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "rl_train.parquet: written 10" in done.stdout


def test_sample_corpus_is_what_the_generator_writes(tmp_path):
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    argv = [sys.executable, str(repo / "data_prep" / "make_sample_corpus.py"), "--out", str(tmp_path)]
    done = subprocess.run(argv, timeout=120, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    for sub in ("GuardReasoner-VLTrain", "GuardReasoner-VLTest"):
        shipped = sorted(p.relative_to(VLTRAIN.parent) for p in (VLTRAIN.parent / sub).rglob("*") if p.is_file())
        fresh = sorted(p.relative_to(tmp_path) for p in (tmp_path / sub).rglob("*") if p.is_file())
        assert shipped == fresh
        for rel in shipped:
            assert (VLTRAIN.parent / rel).read_bytes() == (tmp_path / rel).read_bytes(), rel
    shutil.rmtree(tmp_path)
