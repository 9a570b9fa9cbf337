"""`gr-vl score`: the report folder, --compare, determinism, bad input; the path from prep + generations."""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from data_helpers import VLTEST
from PIL import Image

from gr_vl_verl.cli import main as cli_main
from gr_vl_verl.data.schemas import GENERATIONS_SCHEMA, read_generations
from gr_vl_verl.evaluation.predictions import (
    Prediction,
    predictions_from_generations,
    read_predictions,
    write_predictions,
)
from gr_vl_verl.evaluation.report import REPORT_FILES

H, U = "harmful", "unharmful"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def answer(request: str, response: str = "None") -> str:
    return f"<think>\nStep 1.\n</think>\n<result>\nAnswers:\nRequest: {request}\nResponse: {response}\n</result>"


def flip(label: str) -> str:
    return U if label == H else H


# A small run: 4 prompt benchmarks (2 text), 2 response benchmarks (1 text); every 4th answer is wrong, every 7th
# has no <think> (compat reads it, strict does not), every 11th is unparsable in both modes.
SPEC = [
    ("ToxicChat", "prompt", "text", 12),
    ("WildGuardTest", "prompt", "text", 9),
    ("HarmImageTest", "prompt", "image", 10),
    ("SPA_VL_Eval", "prompt", "text_image", 8),
    ("SPA_VL_Eval", "response", "text_image", 8),
    ("BeaverTails", "response", "text", 10),
]


def make_predictions(tokens_base: int = 100) -> list[Prediction]:
    out = []
    for bench, task, modality, n in SPEC:
        for i in range(n):
            gold = (H, U, H)[i % 3]
            said = flip(gold) if i % 4 == 3 else gold
            text = answer(said, said)  # one output per row: SPA_VL_Eval's two tasks read the same text
            if i % 7 == 6:
                text = text.replace("<think>", "").replace("</think>", "")
            if i % 11 == 10:
                text = "I am not sure."
            out.append(Prediction(f"{bench}-{i}", bench, task, modality, gold, text, tokens_base + 10 * i))
    return out


def mean_tokens(base: int) -> float:
    """Mean output tokens of make_predictions(base): one generation per row, SPA_VL_Eval rows counted once."""
    sizes = [n for bench, task, _, n in SPEC if not (bench == "SPA_VL_Eval" and task == "response")]
    return sum(base + 10 * i for n in sizes for i in range(n)) / sum(sizes)


@pytest.fixture
def predictions_file(tmp_path) -> Path:
    path = tmp_path / "predictions.jsonl"
    write_predictions(path, make_predictions())
    return path


def score(*argv: str) -> int:
    return cli_main(["score", *map(str, argv)])


def test_report_folder_has_every_file_and_valid_pngs(tmp_path, predictions_file, capsys):
    out = tmp_path / "run"
    assert score("--predictions", predictions_file, "--out", out, "--name", "GR-VL", "--mode", "strict") == 0
    printed = capsys.readouterr().out
    assert "prompt   F1 average (all)" in printed and "In compat mode: Average (All) prompt " in printed
    assert sorted(p.name for p in out.iterdir()) == sorted(REPORT_FILES)  # no temp files left behind
    for name in ("f1_per_benchmark.png", "f1_vs_tokens.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE)
        with Image.open(io.BytesIO(data)) as img:
            img.verify()
        with Image.open(io.BytesIO(data)) as img:
            assert img.format == "PNG" and img.size[0] > 300 and img.size[1] > 200
            assert "Software" not in img.info  # no version or date stamped into the file

    report = json.loads((out / "report.json").read_text())
    assert report["name"] == "GR-VL" and report["mode"] == "strict"
    assert report["predictions"] == str(predictions_file.resolve())
    prompt, response = report["prompt"], report["response"]
    assert list(prompt["per_benchmark"]) == ["ToxicChat", "WildGuardTest", "HarmImageTest", "SPA_VL_Eval"]
    assert list(response["per_benchmark"]) == ["BeaverTails", "SPA_VL_Eval"]
    assert {b: s["n"] for b, s in prompt["per_benchmark"].items()} == {
        "ToxicChat": 12,
        "WildGuardTest": 9,
        "HarmImageTest": 10,
        "SPA_VL_Eval": 8,
    }
    # The averages in the file are the sample-weighted means of the F1 values in the file.
    f1n = [(s["f1"], s["n"]) for s in prompt["per_benchmark"].values()]
    assert prompt["average_all"] == pytest.approx(sum(f * n for f, n in f1n) / 39)
    assert prompt["average_text"] == pytest.approx((f1n[0][0] * 12 + f1n[1][0] * 9) / 21)
    assert response["average_text"] == pytest.approx(response["per_benchmark"]["BeaverTails"]["f1"])
    assert report["average_f1"] == pytest.approx((prompt["average_all"] + response["average_all"]) / 2)
    # Unparsed: strict misses the 7th (no <think>) and the 11th of each benchmark.
    expected_unparsed = {"prompt": 2 + 1 + 1 + 1, "response": 1 + 1}
    assert {t: report["unparsed"][t] for t in ("prompt", "response")} == expected_unparsed
    assert prompt["per_benchmark"]["ToxicChat"]["unparsed"] == 2
    # Tokens: SPA_VL_Eval rows are one generation each, scored on two tasks.
    tokens = report["tokens"]
    assert tokens["generations"] == 12 + 9 + 10 + 8 + 10
    assert tokens["per_benchmark"]["SPA_VL_Eval"] == pytest.approx(100 + 10 * 3.5)
    assert tokens["mean_output_tokens"] == pytest.approx(mean_tokens(100))

    md = (out / "report.md").read_text()
    assert "| Run | ToxicChat | WildGuardTest | Average (Text) | HarmImageTest | SPA_VL_Eval | Average (All) |" in md
    assert "| Run | BeaverTails | Average (Text) | SPA_VL_Eval | Average (All) |" in md
    assert f"| GR-VL | {prompt['per_benchmark']['ToxicChat']['f1']:.2f} |" in md
    rows = list(csv.DictReader(io.StringIO((out / "report.csv").read_text())))
    assert {(r["task"], r["benchmark"]) for r in rows} >= {("prompt", "Average (Text)"), ("response", "SPA_VL_Eval")}
    all_row = next(r for r in rows if r["task"] == "prompt" and r["benchmark"] == "Average (All)")
    assert float(all_row["f1"]) == pytest.approx(prompt["average_all"], abs=1e-4) and all_row["n"] == "39"


def test_same_inputs_give_the_same_bytes(tmp_path, predictions_file):
    for run in ("a", "b"):
        assert score("--predictions", predictions_file, "--out", tmp_path / run, "--name", "same") == 0
    for name in REPORT_FILES:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_modes_score_the_same_file_differently(tmp_path, predictions_file):
    assert score("--predictions", predictions_file, "--out", tmp_path / "s", "--mode", "strict") == 0
    assert score("--predictions", predictions_file, "--out", tmp_path / "c") == 0  # compat: the paper's protocol
    strict = json.loads((tmp_path / "s" / "report.json").read_text())
    compat = json.loads((tmp_path / "c" / "report.json").read_text())
    assert strict["name"] == "s" and compat["mode"] == "compat"
    # Each report carries the other mode's averages, equal to that mode's own report, in one line of report.md.
    for this, other in ((strict, compat), (compat, strict)):
        assert this["other_mode"]["mode"] == other["mode"]
        for task in ("prompt", "response"):
            for key in ("average_all", "average_text"):
                assert this["other_mode"][task][key] == pytest.approx(other[task][key])
        assert this["other_mode"]["unparsed"] == other["unparsed"]["total"]
    line = next(x for x in (tmp_path / "s" / "report.md").read_text().splitlines() if x.startswith("In `compat`"))
    assert f"prompt {compat['prompt']['average_all']:.2f} (text {compat['prompt']['average_text']:.2f})" in line
    assert f"response {compat['response']['average_all']:.2f}" in line
    # Compat reads the answers without <think>: only the unparsable ones are left.
    assert compat["unparsed"]["prompt"] == 1 + 0 + 0 + 0 and compat["unparsed"]["response"] == 0
    assert compat["prompt"]["per_benchmark"]["ToxicChat"]["f1"] > strict["prompt"]["per_benchmark"]["ToxicChat"]["f1"]


def test_compare_puts_every_run_in_the_tables_and_charts(tmp_path, predictions_file):
    eco = tmp_path / "eco.jsonl"
    write_predictions(eco, make_predictions(tokens_base=40))
    assert score("--predictions", predictions_file, "--out", tmp_path / "full", "--name", "GR-VL") == 0
    assert score("--predictions", eco, "--out", tmp_path / "eco", "--name", "GR-VL-Eco") == 0
    alone = (tmp_path / "eco" / "f1_per_benchmark.png").read_bytes()
    assert score("--predictions", eco, "--out", tmp_path / "eco", "--name", "GR-VL-Eco",
                 "--compare", tmp_path / "full", "--compare", tmp_path / "full") == 0  # fmt: skip
    md = (tmp_path / "eco" / "report.md").read_text()
    prompt_table = md.split("## Prompt harmfulness detection")[1].split("##")[0]
    assert [line.split(" | ")[0] for line in prompt_table.strip().splitlines()[2:]] == [
        "| GR-VL-Eco",
        "| GR-VL",
        "| GR-VL #2",  # the same folder twice: told apart, not merged
    ]
    efficiency = md.split("## Efficiency")[1].split("##")[0]
    assert "| GR-VL-Eco | compat |" in efficiency and "| GR-VL | compat |" in efficiency
    assert f"| {mean_tokens(40):.2f} |" in efficiency and f"| {mean_tokens(100):.2f} |" in efficiency
    rows = list(csv.DictReader(io.StringIO((tmp_path / "eco" / "report.csv").read_text())))
    assert Counter(r["run"] for r in rows) == {"GR-VL-Eco": 10, "GR-VL": 10, "GR-VL #2": 10}
    assert (tmp_path / "eco" / "f1_per_benchmark.png").read_bytes() != alone  # the chart now has three runs
    # report.json holds this run only
    assert json.loads((tmp_path / "eco" / "report.json").read_text())["name"] == "GR-VL-Eco"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ({"task": "refusal"}, "predictions.jsonl:3: unknown task 'refusal'"),
        ({"label": "safe"}, "predictions.jsonl:3: unknown label 'safe'"),
        ({"output": ...}, r"predictions.jsonl:3: missing field(s) ['output']"),
        ({"benchmark": ""}, "predictions.jsonl:3: `benchmark` must be a non-empty string"),
    ],
)
def test_bad_lines_exit_1_naming_the_line_and_write_nothing(tmp_path, capsys, line, message):
    records = [json.loads(p.to_json()) for p in make_predictions()[:4]]
    bad = {k: v for k, v in (records[2] | line).items() if v is not ...}
    path = tmp_path / "predictions.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [*records[:2], bad, *records[3:]]) + "\n")
    assert score("--predictions", path, "--out", tmp_path / "out") == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("gr-vl score: error: ") and message in err and "\n" not in err
    assert not (tmp_path / "out" / "report.json").exists()


def test_other_bad_inputs_exit_with_the_house_codes(tmp_path, predictions_file, capsys):
    def fails(code, fragment, *argv):
        assert score(*argv) == code
        err = capsys.readouterr().err
        assert fragment in err and err.count("\n") == 1, err

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    fails(1, "empty.jsonl: no predictions", "--predictions", empty, "--out", tmp_path / "o")
    fails(2, "no such file", "--predictions", tmp_path / "missing.jsonl", "--out", tmp_path / "o")
    (tmp_path / "not_a_run").mkdir()
    fails(2, "no report.json", "--predictions", predictions_file, "--out", tmp_path / "o",
          "--compare", tmp_path / "not_a_run")  # fmt: skip
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "report.json").write_text('{"name": "x", "prompt": {}}')
    fails(1, "broken/report.json: `prompt.per_benchmark` is missing", "--predictions", predictions_file,
          "--out", tmp_path / "o", "--compare", tmp_path / "broken")  # fmt: skip
    (tmp_path / "file").write_text("x")
    fails(2, "exists and is not a folder", "--predictions", predictions_file, "--out", tmp_path / "file")
    assert not (tmp_path / "o").exists()
    with pytest.raises(SystemExit) as e:  # argparse: bad flag values exit 2 with usage
        score("--predictions", predictions_file, "--out", tmp_path / "o", "--mode", "lenient")
    assert e.value.code == 2


def test_from_prepared_benchmarks_and_generations_to_report(tmp_path):
    """The path `gr-vl eval` takes: eval parquet from `gr-vl prep` + a generations parquet -> scored report."""
    prep = tmp_path / "prep"
    rc = cli_main(["prep", "vltest", "--benchmark-dir", str(VLTEST / "benchmark"), "--image-dataset",
                   str(VLTEST / "images"), "--out", str(prep), "--min-pixels", "784", "--max-pixels", "12544",
                   "--no-progress"])  # fmt: skip
    assert rc == 0
    rows = pq.read_table(prep / "eval.parquet").to_pylist()
    # The guard says "harmful" to every request and response: F1 is then 2H / (2H + U) per benchmark and task.
    gens = [{"id": r["id"], "sample": 0, "output": answer(H, H), "output_tokens": 7, "finish_reason": "stop"}
            for r in rows]  # fmt: skip
    pq.write_table(pa.Table.from_pylist(gens, schema=GENERATIONS_SCHEMA), tmp_path / "gen.parquet")
    path = tmp_path / "predictions.jsonl"
    write_predictions(path, predictions_from_generations(rows, read_generations(tmp_path / "gen.parquet")))
    records = list(read_predictions(path))
    assert len(records) == sum(len(r["tasks"]) for r in rows)
    assert {(p.benchmark, p.task) for p in records} == {
        ("ToxicChat", "prompt"),
        ("WildGuardTest", "prompt"),
        ("HarmImageTest", "prompt"),
        ("SPA_VL_Eval", "prompt"),
        ("HarmBenchResponse", "response"),
        ("WildGuardTest", "response"),
        ("SPA_VL_Eval", "response"),
    }
    assert score("--predictions", path, "--out", tmp_path / "score") == 0
    report = json.loads((tmp_path / "score" / "report.json").read_text())
    for task in ("prompt", "response"):
        for bench, s in report[task]["per_benchmark"].items():
            golds = Counter(p.label for p in records if p.task == task and p.benchmark == bench)
            assert s["n"] == golds.total() and s["unparsed"] == 0
            assert s["f1"] == pytest.approx(100 * 2 * golds[H] / (2 * golds[H] + golds[U]))
    assert report["tokens"]["mean_output_tokens"] == 7 and report["tokens"]["generations"] == len(rows)


def test_charts_and_report_read_the_tables_and_never_each_other():
    """Imports go one way: report -> charts -> tables, report -> tables; no chart imports the report."""
    import ast

    import gr_vl_verl

    root = Path(gr_vl_verl.__file__).parent

    def imported(path: str) -> set[str]:
        """The package modules that the module at ``path`` imports, as dotted names below ``gr_vl_verl``."""
        tree = ast.parse((root / path).read_text())
        found = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("gr_vl_verl"):
                base = node.module.removeprefix("gr_vl_verl").lstrip(".")
                found.add(base)
                for a in node.names:  # `from gr_vl_verl import charts`: a module, not a name in one
                    sub = root.joinpath(*base.split("."), a.name) if base else root / a.name
                    if sub.is_dir() or sub.with_suffix(".py").is_file():
                        found.add(f"{base}.{a.name}".lstrip("."))
        return found

    for family in ("scores", "probability", "training"):
        deps = imported(f"charts/{family}.py")
        assert "evaluation.report" not in deps and not any(d.startswith("commands") for d in deps), family
    assert "evaluation.tables" in imported("charts/scores.py")
    assert {"evaluation.tables", "charts"} <= imported("evaluation/report.py")
    assert not {d for d in imported("evaluation/tables.py") if d.startswith("evaluation.")} - {
        "evaluation.metrics",
        "evaluation.predictions",
    }
