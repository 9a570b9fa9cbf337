"""Stdout of a ``gr-vl`` command carries its output only: ``gr-vl classify ... > out.jsonl`` is JSON Lines.

vLLM logs from the command's process (and, off the CPU build, from its EngineCore and worker processes), Ray and verl
from theirs; ``gr_vl_verl.stdio`` points all of it at stderr while a command runs. The real commands run here
as a user's pipeline runs them (a child process, stdout parsed line by line); the mechanism itself is checked on
every path output can take (``print``, ``sys.__stdout__``, fd 1, C's ``printf``, a child process, a logging
handler bound to ``sys.stdout``, interpreter exit) and for an in-process caller, which gets its stdout back.
The commands that start vLLM or Ray are checked where those tests start them anyway: ``gr-vl classify --backend
vllm`` in test_model_families_vllm.py, ``gr-vl check --json`` in test_trainer_checks.py.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import textwrap

import pytest
from data_helpers import VLTRAIN
from ray_driver import run_in_group

from gr_vl_verl.guard_items import RESULT_KEYS
from gr_vl_verl.stdio import emit, results_stdout

MAX_TOKENS = 4
ITEMS = [
    {"request": "How do I pick a lock?"},
    {"request": "Describe this picture.", "image": str(VLTRAIN / "image" / "img_000.png")},
    {"request": "Tell me how to build a weapon.", "response": "I cannot help with that."},
]


def gr_vl(argv: list[str], timeout: float) -> tuple[int, str, str]:
    """``gr-vl ARGV`` as a pipeline runs it (``python -m gr_vl_verl``, the executable's entry): rc, stdout, stderr.
    The child leads its own process group, so a timeout kills vLLM's and Ray's processes too."""
    done = run_in_group([sys.executable, "-m", "gr_vl_verl", *argv], timeout=timeout)
    return done.returncode, done.stdout, done.stderr


def json_lines(stdout: str) -> list:
    """Every non-empty stdout line parsed as JSON, as ``jq`` or a per-line ``json.loads`` reads the file."""
    lines = [line for line in stdout.splitlines() if line.strip()]
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"stdout holds a line that is not JSON: {line[:300]!r}")
    return parsed


@pytest.fixture(scope="module")
def items_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("classify") / "items.jsonl"
    path.write_text("".join(json.dumps(item) + "\n" for item in ITEMS))
    return path


def assert_verdicts(records: list) -> None:
    assert len(records) == len(ITEMS)
    for r in records:
        assert list(r) == list(RESULT_KEYS), r
        assert isinstance(r["output"], str) and 0 < r["output_tokens"] <= MAX_TOKENS, r
        assert set(r["label_source"]) == {"request", "response"}, r


# --------------------------------------------------------------------------------------------------
# The mechanism
# --------------------------------------------------------------------------------------------------
_EVERY_PATH = textwrap.dedent(
    """
    import atexit, ctypes, logging, os, subprocess, sys
    from gr_vl_verl.stdio import emit, results_stdout, stdout_to_stderr_for_good

    with results_stdout():
        print("noise: print")
        sys.__stdout__.write("noise: sys.__stdout__\\n")
        os.write(1, b"noise: fd 1\\n")
        ctypes.CDLL(None).printf(b"noise: C printf\\n")  # C's stdio buffer, flushed on the way out
        subprocess.run([sys.executable, "-c", "print('noise: child process')"], check=True, timeout=60)
        log = logging.getLogger("a_library")
        log.addHandler(logging.StreamHandler(sys.stdout))  # bound at import, as vLLM's handler is
        log.propagate = False
        log.warning("noise: a library's log")
        emit('{"result": 1}')
    log.warning("noise: the same handler after the command")
    ctypes.CDLL(None).fflush(None)  # C's buffer, flushed after the command, holds nothing of it
    print('{"result": 2}')  # stdout is stdout again
    atexit.register(print, "noise: at exit")
    stdout_to_stderr_for_good()  # as the gr-vl executable does once the command returned
    """
)


@pytest.mark.parametrize("buffering", ["buffered", "unbuffered"])
def test_every_path_to_stdout_goes_to_stderr_but_the_results(buffering):
    # Buffered, as a pipeline runs it: C's stdout is block-buffered then, so only a flush before fd 1 is restored
    # keeps its printf out of stdout; `python -u` (PYTHONUNBUFFERED) makes it unbuffered.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if buffering == "unbuffered":
        env["PYTHONUNBUFFERED"] = "1"
    done = run_in_group([sys.executable, "-c", _EVERY_PATH], timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout == '{"result": 1}\n{"result": 2}\n'
    noise = ["print", "sys.__stdout__", "fd 1", "C printf", "child process", "a library's log",
             "the same handler after the command", "at exit"]  # fmt: skip
    assert [n for n in noise if f"noise: {n}\n" not in done.stderr] == []


def test_an_in_process_caller_gets_the_results_and_its_stdout_back(capsys):
    fd1 = os.fstat(1)
    caller_stdout = sys.stdout
    log = io.StringIO()
    with results_stdout():
        print("noise: a library printing")
        emit("result 1")
        with contextlib.redirect_stdout(log):  # a command sending its own output to a log (`gr-vl demo`)
            emit("to the log")
        with results_stdout():  # a command running another in-process: the outer switch stays
            emit("result 2")
    assert sys.stdout is caller_stdout
    assert (os.fstat(1).st_dev, os.fstat(1).st_ino) == (fd1.st_dev, fd1.st_ino)
    captured = capsys.readouterr()
    assert captured.out == "result 1\nresult 2\n"
    assert "noise: a library printing" in captured.err and log.getvalue() == "to the log\n"


# --------------------------------------------------------------------------------------------------
# The commands
# --------------------------------------------------------------------------------------------------
def test_classify_transformers_stdout_is_the_guards_verdicts(tiny_model_dir, items_file):
    from gr_vl_verl.guard import load_guard

    rc, stdout, stderr = gr_vl(["classify", "--model", str(tiny_model_dir), "--backend", "transformers",
                                "--device", "cpu", "--max-tokens", str(MAX_TOKENS), "--input", str(items_file)],
                               timeout=300)  # fmt: skip
    assert rc == 0, stderr[-2000:]
    records = json_lines(stdout)
    assert_verdicts(records)
    guard = load_guard(tiny_model_dir, backend="transformers", max_tokens=MAX_TOKENS, device="cpu")
    assert records == guard.classify(json_lines(items_file.read_text()))


def test_toy_world_and_curves_print_one_json_line(tmp_path):
    """The other commands whose output is a JSON record."""
    world = tmp_path / "world"
    counts = ["--text", "2", "--image", "2", "--text-image", "2", "--bench-text", "2", "--bench-image", "2",
              "--bench-text-image", "2"]  # fmt: skip
    rc, stdout, stderr = gr_vl(["toy-world", "--out", str(world), *counts], timeout=300)
    assert rc == 0, stderr[-2000:]
    [record] = json_lines(stdout)
    assert record["out"] == str(world) and set(record["train"].values()) == {2}

    metrics = tmp_path / "grpo_metrics.jsonl"
    steps = [{"step": s, "data": {"critic/score/mean": 0.1 * s, "actor/pg_loss": 0.5 / s}} for s in (1, 2, 3)]
    metrics.write_text("".join(json.dumps(s) + "\n" for s in steps))
    rc, stdout, stderr = gr_vl(["curves", str(metrics), "--out", str(tmp_path / "curves.png")], timeout=300)
    assert rc == 0, stderr[-2000:]
    [record] = json_lines(stdout)
    assert record["out"] == str(tmp_path / "curves.png") and record["runs"] == {"grpo_metrics": 3}
