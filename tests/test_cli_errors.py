"""Bad input at the command line: exit code 2, one line on stderr naming the problem, nothing else.

Each case runs ``gr-vl`` as a user does (a child process, in an empty folder): no traceback, no usage block,
nothing on stdout, no file written, and no engine started (each stops in a second or two).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from ray_driver import run_in_group


def files_under(folder: Path) -> set[Path]:
    return {p.relative_to(folder) for p in folder.rglob("*")}


def wrong_columns(folder: Path) -> Path:
    """A parquet of someone else's, columns and all."""
    path = folder / "wrong_columns.parquet"
    pq.write_table(pa.table({"question": ["How do I pick a lock?"], "label": ["harmful"]}), path)
    return path


def eval_kind_missing_columns(folder: Path) -> Path:
    """Marked as an eval parquet of ours, but with columns dropped (an edit that kept the schema metadata)."""
    path = folder / "trimmed_eval.parquet"
    table = pa.table({"benchmark": ["b"], "id": ["x"]}).replace_schema_metadata({b"gr_vl_verl.kind": b"eval"})
    pq.write_table(table, path)
    return path


CASES = {
    "prep without --data-root": (
        ["prep", "vltrain", "--out", "OUT"],
        "gr-vl prep vltrain: error: the following arguments are required: --data-root",
    ),
    "eval on a parquet with other columns": (
        ["eval", "--data", wrong_columns, "--model", "MODEL", "--out", "OUT"],
        "gr-vl eval: error: --data: {data}: not a gr_vl_verl parquet",
    ),
    "eval on an eval parquet lacking columns": (
        ["eval", "--data", eval_kind_missing_columns, "--model", "MODEL", "--out", "OUT"],
        "gr-vl eval: error: --data: {data} lacks the eval column(s) index, modality, tasks",
    ),
    "malformed --engine-kwargs JSON": (
        ["classify", "--model", "MODEL", "--request", "hi", "--engine-kwargs", '{"max_model_len": 2048'],
        "gr-vl classify: error: argument --engine-kwargs: not JSON: Expecting ',' delimiter: line 1 column 23",
    ),
    "--engine-kwargs not an object": (
        ["eval", "--data", "DATA", "--model", "MODEL", "--out", "OUT", "--engine-kwargs", "[2048]"],
        "gr-vl eval: error: argument --engine-kwargs: must be a JSON object",
    ),
    "demo with a bad value": (
        ["demo", "--steps", "two"],
        "gr-vl demo: error: argument --steps: invalid int value: 'two'",
    ),
    "demo with an unknown flag": (
        ["demo", "--stepz", "3"],
        "gr-vl: error: unrecognized arguments: --stepz 3",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_exits_2_with_one_line_and_writes_nothing(case, tmp_path):
    argv, expected = CASES[case]
    (tmp_path / "model").mkdir()
    data = next((a(tmp_path) for a in argv if callable(a)), tmp_path / "data.parquet")  # written before the snapshot
    values = {"OUT": tmp_path / "out", "MODEL": tmp_path / "model", "DATA": data}
    argv = [str(data) if callable(a) else str(values.get(a, a)) for a in argv]
    before = files_under(tmp_path)

    done = run_in_group([sys.executable, "-m", "gr_vl_verl", *argv], timeout=120, cwd=tmp_path)

    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert lines[0].startswith(expected.format(data=data)), lines[0]
    assert done.stdout == ""
    assert files_under(tmp_path) == before  # no --out folder, no demo outputs/, nothing


def test_the_one_line_tells_where_the_flags_are_listed(tmp_path):
    """An argparse error names the flag and points at the command's help instead of printing its usage."""
    done = run_in_group([sys.executable, "-m", "gr_vl_verl", "prep", "vltrain", "--out", str(tmp_path / "o")],
                        timeout=120, cwd=tmp_path)  # fmt: skip
    assert done.stderr.strip().endswith("(see `gr-vl prep vltrain --help`)")
    helped = run_in_group([sys.executable, "-m", "gr_vl_verl", "prep", "vltrain", "--help"], timeout=120)
    assert helped.returncode == 0 and "--data-root DATA_ROOT" in helped.stdout and helped.stderr == ""
