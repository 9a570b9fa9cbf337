"""The readers on files in the shapes the real GuardReasoner releases have (the bundled corpus mimics them).

Text benchmarks carry ``instruction`` beside ``input`` and ``output``; the VLTrain splits are ``datasets``
JSON Lines with ``"images": null`` on text rows and released-style answers; HarmImageTest has no system turn
and lists image paths. Every row must be read, the unused keys counted, and ``--strict-fields`` must restore
the old refusal.
"""

from __future__ import annotations

import json
from collections import Counter

from data_helpers import VLTEST, VLTRAIN, VLTRAIN_COUNTS

from gr_vl_verl.cli import main as cli_main
from gr_vl_verl.data import readers
from gr_vl_verl.data.records import GuardSample, Rejected
from gr_vl_verl.protocol import INSTRUCTION

BENCH = VLTEST / "benchmark"
TEXT_BENCHMARKS = ("ToxicChat", "WildGuardTestPrompt", "HarmBenchResponse", "WildGuardTestResponse")


def test_vltrain_splits_are_datasets_json_lines_and_all_rows_read():
    text = (VLTRAIN / "GuardReasoner-VLTrainText.json").read_text(encoding="utf-8")
    rows = [json.loads(line) for line in text.splitlines()]
    assert text.startswith('{"messages":') and all(r["images"] is None for r in rows)
    assert "<\\/think>" in text  # to_json escapes slashes
    answers = [r["messages"][-1]["content"] for r in rows]
    assert any("Answers: \nRequest:" in a and "\nCompletion: " in a for a in answers)
    keys = readers.ExtraKeys(strict=True)
    samples = list(readers.read_vltrain_dir(VLTRAIN, keys=keys))
    assert all(isinstance(s, GuardSample) for s in samples), [s for s in samples if isinstance(s, Rejected)]
    assert Counter(s.modality for s in samples) == VLTRAIN_COUNTS
    for row, sample in zip(rows, samples, strict=False):  # released-style answers give the same labels
        answer = row["messages"][-1]["content"]
        assert f"Request: {sample.prompt_label}\n" in answer
        assert f"Response: {sample.response_label or 'None'}\n" in answer
        assert sample.reasoning and sample.reasoning.startswith("# Task 1")


def test_text_benchmarks_have_the_released_shape_and_their_instruction_is_ignored_and_counted():
    for name in TEXT_BENCHMARKS:
        raw = (BENCH / f"{name}.json").read_text(encoding="utf-8")
        assert raw.startswith('[\n    {\n        "instruction": ')  # a JSON array, indent 4
        rows = json.loads(raw)
        assert all(list(r) == ["instruction", "input", "output"] for r in rows)
        assert all(r["input"].startswith("Human user:\n") and r["input"].endswith("\n\n") for r in rows)
        keys = readers.ExtraKeys()
        samples = list(readers.read_benchmark(BENCH / f"{name}.json", keys=keys))
        assert all(isinstance(s, GuardSample) for s in samples), samples
        assert keys.ignored == {"instruction": len(rows)}
        for row, sample in zip(rows, samples, strict=True):
            assert row["input"].rstrip("\n").endswith(sample.response or "None")
    response_gold = json.loads((BENCH / "WildGuardTestResponse.json").read_text())[0]["output"]
    assert response_gold == "Answers: \nRequest: None\nCompletion: None\nResponse: harmful\n"
    strict = list(readers.read_benchmark(BENCH / "ToxicChat.json", keys=readers.ExtraKeys(strict=True)))
    assert {(r.reason, "instruction" in r.message) for r in strict} == {("unknown_field", True)}


def test_harm_image_test_as_released_reads_with_or_without_the_image_dataset():
    rows = json.loads((BENCH / "HarmImageTest.json").read_text(encoding="utf-8"))
    two_tasks = INSTRUCTION.split("\n\nPut the reasoning process")[0]
    for row in rows:
        assert list(row) == ["messages", "images"] and [m["role"] for m in row["messages"]] == ["user", "assistant"]
        assert row["messages"][0]["content"] == two_tasks + "\n\nHuman user:\n<image>\n\nAI assistant:\nNone\n"
        assert row["messages"][1]["content"] in (
            "Answers: \nRequest: harmful\nResponse: unharmful\n",
            "Answers: \nRequest: unharmful\nResponse: unharmful\n",
        )
        assert row["images"][0].startswith("./HarmImageTest/") and len(row["images"]) == 1
    from_dataset = list(
        readers.read_benchmark(BENCH / "HarmImageTest.json", images=readers.VLTestImages(VLTEST / "images"))
    )
    from_paths = list(readers.read_benchmark(BENCH / "HarmImageTest.json"))
    assert all(isinstance(s, GuardSample) for s in from_dataset + from_paths)
    assert [s.images[0] for s in from_paths] == [BENCH.resolve() / r["images"][0][2:] for r in rows]
    assert [s.images[0] for s in from_dataset] == [p.read_bytes() for p in (s.images[0] for s in from_paths)]
    assert [s.prompt_label for s in from_dataset] == [
        "harmful" if "Request: harmful" in r["messages"][1]["content"] else "unharmful" for r in rows
    ]
    assert all(s.tasks == ("prompt",) and s.request == "" for s in from_dataset)


def test_prep_vltest_writes_every_row_and_reports_the_ignored_keys(tmp_path, capsys):
    n_text = sum(len(json.loads((BENCH / f"{n}.json").read_text())) for n in TEXT_BENCHMARKS)
    args = ["prep", "vltest", "--benchmark-dir", str(BENCH), "--image-dataset", str(VLTEST / "images"), "--no-progress"]
    assert cli_main([*args, "--out", str(tmp_path / "lenient"), "--min-pixels", "784", "--max-pixels", "12544"]) == 0
    summary = json.loads((tmp_path / "lenient" / "vltest_summary.json").read_text())
    assert summary["rejected"] == {} and summary["dropped"] == []
    assert summary["outputs"]["eval.parquet"]["written"] == summary["rows_in"]
    assert summary["ignored_keys"] == {"instruction": n_text}
    assert f"ignored keys (rows): instruction: {n_text}" in capsys.readouterr().out
    assert cli_main([*args, "--out", str(tmp_path / "strict"), "--strict-fields"]) == 0
    strict = json.loads((tmp_path / "strict" / "vltest_summary.json").read_text())
    assert strict["rejected"] == {"unknown_field": n_text}


def test_eval_rows_prompt_with_the_benchmark_files_own_text(tmp_path):
    """A text benchmark's `input` ends in a blank line the template's rendering lacks; the eval row keeps it, as
    the released generate.py sent `input` as it is. Image benchmarks' prompts (after the instruction) equal the
    rendering. Reading the parquet back gives the samples the reader made."""
    import pyarrow.parquet as pq

    from gr_vl_verl.data.schemas import read_prepared
    from gr_vl_verl.protocol import format_user_content

    out = tmp_path / "o"
    assert cli_main(["prep", "vltest", "--benchmark-dir", str(BENCH), "--image-dataset", str(VLTEST / "images"),
                     "--out", str(out), "--no-progress"]) == 0  # fmt: skip
    rows = pq.read_table(out / "eval.parquet", columns=["benchmark", "prompt", "request", "response"]).to_pylist()
    for name in TEXT_BENCHMARKS:
        inputs = [r["input"] for r in json.loads((BENCH / f"{name}.json").read_text())]
        users = [r["prompt"][-1]["content"] for r in rows if r["benchmark"] == name]
        assert users == inputs and all(u.endswith("\n\n") for u in users)
    for r in rows:
        if r["benchmark"] in ("HarmImageTest", "SPA_VL_Eval"):
            assert r["prompt"][-1]["content"] == format_user_content(r["request"], r["response"], 1)
    images = readers.VLTestImages(VLTEST / "images")
    read = [
        s for n in ("ToxicChat", "SPA_VL_Eval") for s in readers.read_benchmark(BENCH / f"{n}.json", n, images=images)
    ]
    back = {s.id: s for s in read_prepared(out / "eval.parquet")}
    assert read and all(isinstance(s, GuardSample) for s in read)
    assert all(back[s.id].user_turn == s.user_turn for s in read)
    assert all(s.user_turn for s in read if s.source == "ToxicChat")
    assert not any(s.user_turn for s in read if s.source == "SPA_VL_Eval")  # equal to the rendering: dropped
