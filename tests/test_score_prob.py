"""Harm probabilities in predictions and reports: AUPRC, AUROC, ECE and best F1 per benchmark (scikit-learn as
the reference), averages, the tables and charts; files without probabilities keep the old report."""

from __future__ import annotations

import csv
import io
import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from gr_vl_verl.cli import main as cli_main
from gr_vl_verl.data.schemas import GENERATIONS_SCHEMA, read_generations
from gr_vl_verl.evaluation.predictions import (
    Prediction,
    PredictionError,
    predictions_from_generations,
    read_predictions,
    write_predictions,
)
from gr_vl_verl.evaluation.report import PROB_FILES, REPORT_FILES

H, U = "harmful", "unharmful"
ANSWER = "<think>\nx\n</think>\n<result>\nAnswers:\nRequest: {0}\nResponse: {0}\n</result>"
# benchmark, task, modality, samples; OnlyBad has no unharmful gold (AUROC undefined)
SPEC = [
    ("ToxicChat", "prompt", "text", 60),
    ("HarmImageTest", "prompt", "image", 40),
    ("OnlyBad", "prompt", "text", 5),
    ("BeaverTails", "response", "text", 50),
]


def make(seed: int = 0, with_p: bool = True) -> list[Prediction]:
    rng = random.Random(seed)
    out = []
    for bench, task, modality, n in SPEC:
        for i in range(n):
            gold = H if bench == "OnlyBad" or rng.random() < 0.4 else U
            p = min(1.0, max(0.0, rng.gauss(0.65 if gold == H else 0.35, 0.2)))
            p = round(p, 1) if i % 5 == 0 else p  # some ties
            if i % 9 == 8 or not with_p:
                p = None  # no verdict token
            said = H if (p or 0.5) >= 0.5 else U
            out.append(Prediction(f"{bench}-{i}", bench, task, modality, gold, ANSWER.format(said), 10, p))
    return out


def score(predictions: list[Prediction], tmp: Path, name: str, *compare: Path) -> Path:
    path = tmp / f"{name}.jsonl"
    write_predictions(path, predictions)
    out = tmp / name
    argv = [
        "score",
        "--predictions",
        str(path),
        "--out",
        str(out),
        *(["--compare", *map(str, compare)] if compare else []),
    ]
    assert cli_main(argv) == 0
    return out


def test_figures_match_sklearn_and_lines_without_p_are_counted_out(tmp_path):
    records = make()
    out = score(records, tmp_path, "run")
    report = json.loads((out / "report.json").read_text())
    for bench, task, _, _ in SPEC:
        s = report[task]["per_benchmark"][bench]
        lines = [r for r in records if r.benchmark == bench and r.p_harmful is not None]
        y = [int(r.label == H) for r in lines]
        p = [r.p_harmful for r in lines]
        assert s["n_prob"] == len(lines) <= s["n"]
        assert s["auprc"] == pytest.approx(100 * average_precision_score(y, p))
        if bench == "OnlyBad":
            assert s["auroc"] is None and "AUROC is undefined" in s["prob_notes"][0]
        else:
            assert s["auroc"] == pytest.approx(100 * roc_auc_score(y, p))
    assert (
        report["prompt"]["per_benchmark"]["ToxicChat"]["n_prob"] < report["prompt"]["per_benchmark"]["ToxicChat"]["n"]
    )
    for s in (report[t]["per_benchmark"][b] for b, t, _, _ in SPEC):
        assert 0 <= s["ece"] <= 100 and 0 <= s["best_threshold"] <= 1 and s["best_f1"] >= s["f1"] - 1e-9
    block = report["prompt"]
    with_auroc = [s for s in block["per_benchmark"].values() if s["auroc"] is not None]
    expected = sum(s["auroc"] * s["n_prob"] for s in with_auroc) / sum(s["n_prob"] for s in with_auroc)
    assert block["prob_averages"]["auroc"]["average_all"] == pytest.approx(expected)
    assert block["n_prob"] == sum(s["n_prob"] for s in block["per_benchmark"].values())
    assert "## Harm probability" in (out / "report.md").read_text()
    rows = list(csv.DictReader(io.StringIO((out / "report.csv").read_text())))
    assert {"n_prob", "auprc", "auroc", "ece", "best_f1", "best_threshold"} <= set(rows[0])
    assert float(next(r for r in rows if r["benchmark"] == "ToxicChat")["auprc"]) == pytest.approx(
        report["prompt"]["per_benchmark"]["ToxicChat"]["auprc"], abs=1e-4
    )
    for name in (*REPORT_FILES, *PROB_FILES):
        assert (out / name).read_bytes().startswith(b"\x89PNG") or not name.endswith(".png")


def test_compare_puts_runs_side_by_side_and_is_deterministic(tmp_path):
    first = score(make(1), tmp_path, "a")
    second = score(make(2), tmp_path, "b", first)
    again = score(make(2), tmp_path / "again", "b", first)
    md = (second / "report.md").read_text()
    assert md.count("| a |") >= 2 and md.count("| b |") >= 2
    for name in PROB_FILES:
        assert (again / name).read_bytes() == (second / name).read_bytes()


def test_a_file_without_probabilities_gives_the_old_report(tmp_path):
    out = score(make(with_p=False), tmp_path, "old")
    report = json.loads((out / "report.json").read_text())
    for task in ("prompt", "response"):
        assert "prob_averages" not in report[task] and "n_prob" not in report[task]
        assert all("auprc" not in s for s in report[task]["per_benchmark"].values())
    header = (out / "report.csv").read_text().splitlines()[0]
    assert header == "run,task,benchmark,modality,n,f1,precision,recall,accuracy,unparsed"
    assert "Harm probability" not in (out / "report.md").read_text()
    assert not any((out / name).exists() for name in PROB_FILES)


def test_old_predictions_and_generations_files_still_read(tmp_path):
    line = {"id": "a", "benchmark": "B", "task": "prompt", "modality": "text", "label": H, "output": "x",
            "output_tokens": 1}  # fmt: skip
    (tmp_path / "old.jsonl").write_text(json.dumps(line) + "\n")
    assert next(read_predictions(tmp_path / "old.jsonl")).p_harmful is None
    (tmp_path / "bad.jsonl").write_text(json.dumps({**line, "p_harmful": 1.5}) + "\n")
    with pytest.raises(PredictionError, match=r"bad.jsonl:1: `p_harmful` must be null or a number in \[0, 1\]"):
        list(read_predictions(tmp_path / "bad.jsonl"))

    old_schema = pa.schema([f for f in GENERATIONS_SCHEMA if not f.name.startswith("p_harmful")])
    old_row = {"id": "r1", "sample": 0, "output": ANSWER.format(H), "output_tokens": 3, "finish_reason": "stop"}
    pq.write_table(pa.Table.from_pylist([old_row], schema=old_schema), tmp_path / "old.parquet")
    new_row = {**old_row, "id": "r2", "p_harmful_request": 0.8, "p_harmful_response": None}
    pq.write_table(pa.Table.from_pylist([new_row], schema=GENERATIONS_SCHEMA), tmp_path / "new.parquet")
    gens = list(read_generations(tmp_path / "old.parquet")) + list(read_generations(tmp_path / "new.parquet"))
    assert gens[0]["p_harmful_request"] is None and gens[1]["p_harmful_request"] == 0.8
    rows = [{"benchmark": "B", "id": rid, "modality": "text", "tasks": ["prompt", "response"], "prompt_label": H,
             "response_label": U} for rid in ("r1", "r2")]  # fmt: skip
    preds = list(predictions_from_generations(rows, gens))
    assert [(p.id, p.task, p.p_harmful) for p in preds] == [
        ("r1", "prompt", None),
        ("r1", "response", None),
        ("r2", "prompt", 0.8),
        ("r2", "response", None),
    ]
    assert json.loads(preds[2].to_json())["p_harmful"] == 0.8
