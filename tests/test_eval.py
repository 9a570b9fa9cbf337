"""`gr-vl eval`: the bundled benchmark sample through real generation (Ray Data, the transformers engine, the
tiny Qwen2.5-VL), predictions.jsonl and the scorer's report; resume, shared flags and errors before any work.

Ray runs in child processes only (`ray_driver.run_cli`): once for the `evaluated` fixture and once for the
resume; every other test reads their folders or fails before generating, in this process.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import sklearn_scores
from PIL import Image
from ray_driver import run_cli

from gr_vl_verl.cli import build_parser
from gr_vl_verl.cli import main as cli_main
from gr_vl_verl.data.schemas import EVAL_SCHEMA, RL_SCHEMA, read_generations
from gr_vl_verl.evaluation.predictions import BENCHMARK_ALIASES, read_predictions
from gr_vl_verl.evaluation.report import REPORT_FILES

MAX_TOKENS = 4
NAME = "tiny-run"  # the run folder's name, hence the report's default name


def eval_argv(data: Path, model: Path, out: Path, *extra: str) -> list[str]:
    return ["eval", "--data", str(data), "--model", str(model), "--out", str(out), "--backend", "transformers",
            "--max-tokens", str(MAX_TOKENS), "--shard-size", "10", "--no-progress", *extra]  # fmt: skip


@pytest.fixture(scope="module")
def evaluated(eval_parquet, tiny_model_dir, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("eval") / NAME
    done = run_cli(eval_argv(eval_parquet, tiny_model_dir, out))
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done.stdout


def eval_rows(path: Path) -> list[dict]:
    return pq.read_table(path, columns=["benchmark", "id", "tasks", "prompt_label", "response_label"]).to_pylist()


# --------------------------------------------------------------------------------------------------
# One real run
# --------------------------------------------------------------------------------------------------
def test_eval_writes_generations_predictions_and_the_report(evaluated, eval_parquet):
    out, printed = evaluated
    rows = eval_rows(eval_parquet)
    assert sorted(p.name for p in (out / "generations").glob("shard-*.parquet")) == [
        "shard-00000.parquet", "shard-00001.parquet", "shard-00002.parquet",
    ]  # fmt: skip
    gens = list(read_generations(out / "generations"))
    assert [g["id"] for g in gens] == [r["id"] for r in rows] and {g["sample"] for g in gens} == {0}
    assert all(1 <= g["output_tokens"] <= MAX_TOKENS for g in gens)
    for name in REPORT_FILES:
        assert (out / name).is_file() and (out / name).stat().st_size > 0
    for chart in ("f1_per_benchmark.png", "f1_vs_tokens.png"):
        assert (out / chart).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
        with Image.open(out / chart) as img:
            img.verify()  # a complete, uncorrupted PNG
        with Image.open(out / chart) as img:
            assert img.format == "PNG" and img.width > 100 and img.height > 100
    n_lines = sum(len(r["tasks"]) for r in rows)
    assert f"rows: {len(rows)} generated" in printed and f"predictions: {n_lines} line(s)" in printed
    assert f"report: {out / 'report.md'}" in printed and "mode compat" in printed  # the paper's protocol
    assert "In strict mode: Average (All) prompt " in printed  # and the other mode's averages in one line
    # the processor had the released evaluator's image bounds (recorded with the generations)
    manifest = json.loads((out / "generations" / "generate_manifest.json").read_text())
    assert json.dumps(manifest).count('"min_pixels": 3136') == 1 and '"max_pixels": 12845056' in json.dumps(manifest)


def test_predictions_have_one_line_per_row_and_labelled_task(evaluated, eval_parquet):
    out, _ = evaluated
    rows = eval_rows(eval_parquet)
    lines = (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == sum(len(r["tasks"]) for r in rows) > len(rows)  # SPA_VL_Eval rows have both tasks
    preds = [json.loads(line) for line in lines]
    expected = [(r["id"], t) for r in rows for t in ("prompt", "response") if t in r["tasks"]]
    assert [(p["id"], p["task"]) for p in preds] == expected
    by_id = {r["id"]: r for r in rows}
    generation = {g["id"]: g for g in read_generations(out / "generations")}
    for p in preds:
        row = by_id[p["id"]]
        assert p["label"] == row[f"{p['task']}_label"]
        assert p["benchmark"] == BENCHMARK_ALIASES.get(row["benchmark"], row["benchmark"])
        gen = generation[p["id"]]
        assert (p["output"], p["output_tokens"]) == (gen["output"], gen["output_tokens"])
        # the line's task's probability; None here: four tokens of a random model reach no verdict
        assert p["p_harmful"] == gen[f"p_harmful_{'request' if p['task'] == 'prompt' else 'response'}"] is None


def test_report_equals_a_recomputation_and_gr_vl_score(evaluated, eval_parquet, tmp_path):
    out, _ = evaluated
    report = json.loads((out / "report.json").read_text())
    # recomputed independently: the released evaluator's regexes and scikit-learn's f1_score
    recomputed = sklearn_scores.averages(out / "predictions.jsonl")
    assert report["mode"] == "compat" and len(list(read_predictions(out / "predictions.jsonl"))) > 0
    assert report["name"] == NAME and report["predictions"] == str((out / "predictions.jsonl").resolve())
    for task in ("prompt", "response"):
        for key in ("average_all", "average_text"):
            assert report[task][key] == pytest.approx(recomputed[task][key])
    # the per-benchmark counts are the parquet's labelled rows, under the paper's benchmark names
    labelled = Counter(
        (t, BENCHMARK_ALIASES.get(r["benchmark"], r["benchmark"])) for r in eval_rows(eval_parquet) for t in r["tasks"]
    )
    assert {(t, b): s["n"] for t in ("prompt", "response") for b, s in report[t]["per_benchmark"].items()} == labelled
    # `gr-vl score` on the same predictions, under the same name, writes the same bytes
    assert cli_main(["score", "--predictions", str(out / "predictions.jsonl"), "--out", str(tmp_path / NAME)]) == 0
    for name in REPORT_FILES:
        assert (tmp_path / NAME / name).read_bytes() == (out / name).read_bytes(), name


def test_a_rerun_resumes_generation_and_rescores(evaluated, eval_parquet, tiny_model_dir, tmp_path, capsys):
    """A second run into a folder whose generations are complete generates nothing (no Ray starts) and rewrites
    predictions and report; other settings are refused before any work."""
    first, _ = evaluated
    out = tmp_path / "again"
    shutil.copytree(first / "generations", out / "generations")
    shards = {p.name: p.read_bytes() for p in (out / "generations").glob("shard-*.parquet")}
    done = run_cli(eval_argv(eval_parquet, tiny_model_dir, out, "--mode", "strict", "--compare", str(first)))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "shards: 0 written, 3 already done, of 3" in done.stdout
    assert {p.name: p.read_bytes() for p in (out / "generations").glob("shard-*.parquet")} == shards
    assert (out / "predictions.jsonl").read_bytes() == (first / "predictions.jsonl").read_bytes()
    report = json.loads((out / "report.json").read_text())
    assert report["mode"] == "strict" and report["name"] == "again"
    markdown = (out / "report.md").read_text()
    assert "| again |" in markdown and f"| {NAME} |" in markdown
    capsys.readouterr()
    other = eval_argv(eval_parquet, tiny_model_dir, out)
    other[other.index("--max-tokens") + 1] = str(MAX_TOKENS + 1)
    assert cli_main(other) == 2
    assert f"max_tokens {MAX_TOKENS} (now {MAX_TOKENS + 1})" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# Errors before any work
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--data": "MISSING"}, "--data: no file at"),
        ({"--data": "RL"}, "rl.parquet holds rl rows, expected eval"),
        ({"--data": "TEXT"}, "--data: Parquet magic bytes not found"),
        ({"--data": "EMPTY"}, "has no rows"),
        ({"--model": "/no/such/model"}, "model path not found: /no/such/model"),
        ({"--out": "FILE"}, "exists and is not a folder"),
        ({"--compare": "/no/such/run"}, "/no/such/run: no report.json"),
        ({"--max-tokens": "0"}, "max_tokens must be >= 1"),
    ],
)
def test_usage_errors_exit_2_in_one_line_before_any_work(
    eval_parquet, tiny_model_dir, tmp_path, capsys, change, message
):
    paths = {"MISSING": tmp_path / "missing.parquet", "RL": tmp_path / "rl.parquet", "TEXT": tmp_path / "notes.parquet",
             "EMPTY": tmp_path / "empty.parquet", "FILE": tmp_path / "a-file"}  # fmt: skip
    pq.write_table(RL_SCHEMA.empty_table(), paths["RL"])
    pq.write_table(EVAL_SCHEMA.empty_table(), paths["EMPTY"])
    paths["TEXT"].write_text("not parquet")
    paths["FILE"].write_text("x")
    out = tmp_path / "out"
    argv = eval_argv(eval_parquet, tiny_model_dir, out)
    for flag, value in change.items():
        value = str(paths.get(value, value))
        if flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (out / "generations").exists() and not (out / "predictions.jsonl").exists()


def test_a_malformed_compared_report_is_a_work_error(eval_parquet, tiny_model_dir, tmp_path, capsys):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "report.json").write_text("{}")
    out = tmp_path / "out"
    assert cli_main(eval_argv(eval_parquet, tiny_model_dir, out, "--compare", str(tmp_path / "other"))) == 1
    assert "report.json: `name` must be a non-empty string" in capsys.readouterr().err
    assert not out.exists()


# --------------------------------------------------------------------------------------------------
# One set of generation and scoring flags
# --------------------------------------------------------------------------------------------------
def _options(command: str) -> dict[str, object]:
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices[command]
    return {a.option_strings[-1]: a.default for a in sub._actions if a.option_strings and a.dest != "help"}


def test_eval_takes_generates_flags_but_n_and_scores_flags():
    generate, score, evaluate = _options("generate"), _options("score"), _options("eval")
    shared_generation = {k: v for k, v in generate.items() if k not in ("--n", "--data", "--out")}
    shared_scoring = {k: v for k, v in score.items() if k not in ("--predictions", "--out")}
    assert evaluate == {"--data": None, "--out": None, **shared_generation, **shared_scoring}
    assert generate["--temperature"] == 0.0 and generate["--max-tokens"] == 4096  # the paper's greedy protocol
    assert set(shared_scoring) == {"--mode", "--compare", "--name"} and "--n" in generate
