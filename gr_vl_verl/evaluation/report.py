"""The score folder: ``report.json``, ``report.md`` (the paper's table layout), ``report.csv`` and two charts.

A folder holds one run's numbers; other runs' folders (their ``report.json``) can be laid beside it in the
tables and charts, which is how GuardReasoner-VL is compared with its Eco variant or a baseline. Every file is
written atomically, and the same inputs give the same bytes (no timestamps anywhere, PNG metadata included).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gr_vl_verl.atomic import atomic_write
from gr_vl_verl.evaluation.predictions import TASKS
from gr_vl_verl.evaluation.tables import (
    AVERAGE_ALL,
    AVERAGE_TEXT,
    PROB_CSV_COLUMNS,
    TASK_TITLES,
    cell,
    csv_average_values,
    csv_values,
    fmt,
    has_probabilities,
    markdown_section,
    md_table,
    run_labels,
    table_columns,
)

REPORT_VERSION = 1
REPORT_FILES = ("report.json", "report.md", "report.csv", "f1_per_benchmark.png", "f1_vs_tokens.png")
#: Written too when a run's predictions carried p_harmful.
PROB_FILES = ("pr_curves.png", "reliability.png")
CSV_COLUMNS = ("run", "task", "benchmark", "modality", "n", "f1", "precision", "recall", "accuracy", "unparsed")


class ReportError(ValueError):
    """A ``report.json`` that cannot be compared; the message names the file and the key."""


def build_report(summary: dict[str, Any], *, name: str, predictions: str) -> dict[str, Any]:
    """The ``report.json`` object: the scorer's summary with the run's name and where its predictions are."""
    return {"version": REPORT_VERSION, "name": name, "predictions": predictions, **summary}


# --------------------------------------------------------------------------------------------------
# Reading other runs
# --------------------------------------------------------------------------------------------------
def _number(value: object) -> bool:
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))


def _check_report(report: object) -> str | None:
    if not isinstance(report, dict):
        return "not a JSON object"
    if not isinstance(report.get("name"), str) or not report["name"]:
        return "`name` must be a non-empty string"
    for task in TASKS:
        block = report.get(task)
        if not isinstance(block, dict) or not isinstance(block.get("per_benchmark"), dict):
            return f"`{task}.per_benchmark` is missing"
        for key in ("average_text", "average_all"):
            if not _number(block.get(key)):
                return f"`{task}.{key}` must be a number or null"
        for bench, s in block["per_benchmark"].items():
            if not isinstance(s, dict) or not _number(s.get("f1")) or not isinstance(s.get("n"), int):
                return f"`{task}.per_benchmark.{bench}` needs numbers `f1` and `n`"
    tokens = report.get("tokens")
    if not isinstance(tokens, dict) or not _number(tokens.get("mean_output_tokens")):
        return "`tokens.mean_output_tokens` must be a number or null"
    if not _number(report.get("average_f1")):
        return "`average_f1` must be a number or null"
    other = report.get("other_mode")  # absent from reports written before it existed
    if other is not None and not (
        isinstance(other, dict)
        and all(isinstance(other.get(t), dict) and _number(other[t].get("average_all")) for t in TASKS)
    ):
        return "`other_mode` must hold each task's averages"
    return None


def load_report(folder: Path) -> dict[str, Any]:
    """A score folder's ``report.json``. ``FileNotFoundError`` if absent, :class:`ReportError` if malformed."""
    path = Path(folder) / "report.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no report.json (not a `gr-vl score` output folder)")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ReportError(f"{path}: not JSON ({e})") from None
    problem = _check_report(report)
    if problem:
        raise ReportError(f"{path}: {problem}")
    return report


# --------------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------------
def other_mode_line(report: dict[str, Any]) -> str | None:
    """One line with the other parse mode's averages (Average (All), then Text, per task), so the gap between
    the paper's ``compat`` reading and ``strict`` shows in every report; None for a report without them."""
    other = report.get("other_mode")
    if not other:
        return None
    tasks = ", ".join(
        f"{task} {fmt(other[task]['average_all'])} (text {fmt(other[task].get('average_text'))})"
        for task in TASKS
        if other[task].get("average_all") is not None
    )
    return f"In `{other['mode']}` mode: Average (All) {tasks or '–'}; unparsed outputs {other.get('unparsed', '–')}."


def markdown(runs: list[dict[str, Any]]) -> str:
    """``report.md``: one table per task (benchmarks as columns, one row per run), efficiency, details."""
    labels = run_labels(runs)
    main = runs[0]
    out = [
        f"# Guard evaluation: {labels[0]}",
        "",
        "F1 x100 with `harmful` as the positive class. Averages are weighted by each benchmark's number of "
        "labelled samples; Average (Text) covers the benchmarks whose rows are all text.",
        f"Parse mode: `{main['mode']}`. Predictions: `{main['predictions']}`.",
    ]
    line = other_mode_line(main)
    if line:
        out += ["", line]
    for task in TASKS:
        columns = table_columns(task, runs)
        if not columns:
            continue
        rows = [[label, *(fmt(cell(run, task, c)) for c in columns)] for label, run in zip(labels, runs, strict=True)]
        out += ["", f"## {TASK_TITLES[task]}", "", *md_table(["Run", *columns], rows, "l" + "r" * len(columns))]
    rows = [
        [
            label,
            str(run.get("mode", "–")),
            fmt(run.get("average_f1")),
            fmt(run["tokens"].get("mean_output_tokens")),
            str((run.get("unparsed") or {}).get("total", "–")),
        ]
        for label, run in zip(labels, runs, strict=True)
    ]
    out += ["", "## Efficiency", "", "Average F1 is the mean of the two tasks' Average (All), as in the paper.", ""]
    out += md_table(["Run", "Mode", "Average F1", "Mean output tokens", "Unparsed outputs"], rows, "llrrr")
    out += ["", f"## Details: {labels[0]}", ""]
    header = ["Task", "Benchmark", "Modality", "n", "F1", "Precision", "Recall", "Accuracy", "Unparsed", "Tokens"]
    tokens = main["tokens"].get("per_benchmark", {})
    rows = [
        [
            task,
            bench,
            s["modality"],
            str(s["n"]),
            fmt(s["f1"]),
            fmt(s["precision"]),
            fmt(s["recall"]),
            fmt(s["accuracy"]),
            str(s["unparsed"]),
            fmt(tokens.get(bench), 1),
        ]
        for task in TASKS
        for bench, s in main[task]["per_benchmark"].items()
    ]
    out += md_table(header, rows, "lllrrrrrrr")
    out += markdown_section(runs, labels)
    return "\n".join(out) + "\n"


def csv_text(runs: list[dict[str, Any]]) -> str:
    """``report.csv``: one row per (run, task, benchmark or average), every run given."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    with_prob = any(has_probabilities(run) for run in runs)
    writer.writerow(CSV_COLUMNS + (PROB_CSV_COLUMNS if with_prob else ()))

    def num(value: object) -> str:
        return "" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)

    for label, run in zip(run_labels(runs), runs, strict=True):
        for task in TASKS:
            block = run[task]
            for bench, s in block["per_benchmark"].items():
                extra = csv_values(s, num) if with_prob else []
                writer.writerow([label, task, bench, *(num(s.get(k)) for k in CSV_COLUMNS[3:]), *extra])
            text_n = sum(s["n"] for s in block["per_benchmark"].values() if s.get("modality") == "text")
            for name, key, n in ((AVERAGE_TEXT, "average_text", text_n), (AVERAGE_ALL, "average_all", block.get("n"))):
                if block.get(key) is not None:
                    extra = csv_average_values(block, key, num) if with_prob else []
                    writer.writerow([label, task, name, "", num(n), num(block[key]), "", "", "", "", *extra])
    return buf.getvalue()


# --------------------------------------------------------------------------------------------------
# The folder
# --------------------------------------------------------------------------------------------------
def write_report(out: Path, report: dict[str, Any], compare: Sequence[dict[str, Any]] = ()) -> list[Path]:
    """Write the five files of :data:`REPORT_FILES` into ``out`` (and :data:`PROB_FILES` when a run has harm
    probabilities); ``compare`` runs join the tables and charts."""
    from gr_vl_verl import charts  # matplotlib only here: loading a report does not need it

    out = Path(out)
    runs = [report, *compare]
    labels = run_labels(runs)
    # Everything is rendered before anything is written: a failure leaves the folder's previous files in place.
    contents = {
        "report.json": (json.dumps(report, indent=2, ensure_ascii=False) + "\n").encode(),
        "report.md": markdown(runs).encode(),
        "report.csv": csv_text(runs).encode(),
        **charts.report_figures(runs, labels, probabilities=any(has_probabilities(run) for run in runs)),
    }
    out.mkdir(parents=True, exist_ok=True)
    for name in contents:
        atomic_write(out / name, [contents[name]])
    for name in PROB_FILES:  # charts of an earlier run in this folder that no longer apply
        if name not in contents:
            (out / name).unlink(missing_ok=True)
    return [out / name for name in contents]
