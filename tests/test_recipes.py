"""The mining and evaluation recipes (``recipes/{mine,eval}_qwen2_5_vl.sh``): what they launch, read by the real
``gr-vl`` parser, and one real run.

Each script runs in its dry mode (the command line, shell-quoted, on stdout); the line is split as a shell
splits it and everything after ``-m gr_vl_verl.cli`` is parsed by ``gr_vl_verl.cli.build_parser()``, so a
renamed flag, a changed default or a quoting mistake fails here. The evaluation recipe then runs for real, with
the tiny model and the transformers backend given as extra arguments, which must win over the script's vLLM.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from gr_vl_verl.cli import build_parser
from gr_vl_verl.generation import GenerationConfig

ROOT = Path(__file__).resolve().parents[1]
MINE = ROOT / "recipes" / "mine_qwen2_5_vl.sh"
EVAL = ROOT / "recipes" / "eval_qwen2_5_vl.sh"
SCRIPTS = [MINE, EVAL]
#: What the scripts read from the environment; removed from the test's own environment first.
VARIABLES = ("DATA", "MODEL_PATH", "OUT", "GPUS", "TP", "RAY_ADDRESS", "GPU_MEMORY_UTILIZATION", "MAX_MODEL_LEN")
#: The method's values, which the scripts leave to the commands' defaults.
METHOD_FLAGS = {"--k", "--max-correct", "--sample-num", "--val-fraction", "--seed", "--temperature", "--top-p",
                "--max-tokens", "--parse", "--mode", "--n"}  # fmt: skip


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("recipes")
    (d / "data.parquet").write_bytes(b"")
    (d / "model").mkdir()
    env = {k: v for k, v in os.environ.items() if k not in (*VARIABLES, "PYTHON", "GR_VL_DRY_RUN")}
    env.update(DATA=str(d / "data.parquet"), MODEL_PATH=str(d / "model"), OUT=str(d / "out"), GR_VL_DRY_RUN="1")
    return env


def command_line(script: Path, env: dict[str, str], *extra: str) -> list[str]:
    run = subprocess.run(["bash", str(script), *extra], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.count("\n") == 1 and run.stderr == ""
    return shlex.split(run.stdout)


def launched(script: Path, env: dict[str, str], *extra: str) -> argparse.Namespace:
    """The arguments the script's command would run `gr-vl` with, as the real parser reads them."""
    argv = command_line(script, env, *extra)
    assert argv[:3] == ["python3", "-m", "gr_vl_verl.cli"]
    return build_parser().parse_args(argv[3:])


def refused(script: Path, env: dict[str, str]) -> str:
    """stderr of a run that must stop before starting anything (exit 2, nothing on stdout)."""
    run = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and run.stdout == "", (run.returncode, run.stdout, run.stderr)
    assert run.stderr.count("\n") == 1 and run.stderr.startswith("error: ")
    return run.stderr


def test_mine_recipe_runs_gr_vl_mine_with_the_papers_rejection_sampling(env) -> None:
    args = launched(MINE, env)
    assert args.command == "mine"
    assert (args.data, args.model, args.out) == (Path(env["DATA"]), env["MODEL_PATH"], Path(env["OUT"]))
    assert args.generations is None  # --model: generation and selection in one command
    # sampling: k = 4 answers at temperature 1.0, top_p 0.95, up to 4096 tokens, through vLLM
    assert (args.k, args.temperature, args.top_p, args.max_tokens, args.backend) == (4, 1.0, 0.95, 4096, "vllm")
    # selection: every answer wrong, at most 12,000 rows, 80/20, seed 42
    assert (args.max_correct, args.sample_num, args.val_fraction, args.seed) == (0, 12000, 0.2, 42)
    assert (args.parse, args.keep_all_modality, args.strict) == ("strict", [], False)
    # hardware: one engine per GPU of a node of 8
    assert (args.concurrency, args.tensor_parallel_size, args.num_gpus) == (8, 1, None)
    assert (args.engine_kwargs, args.ray_address) == ({}, None)


def test_eval_recipe_runs_gr_vl_eval_with_the_papers_protocol(env) -> None:
    args = launched(EVAL, env)
    assert args.command == "eval"
    assert (args.data, args.model, args.out) == (Path(env["DATA"]), env["MODEL_PATH"], Path(env["OUT"]))
    # greedy, up to 4096 tokens, through vLLM; scored in strict mode under OUT's name
    assert (args.temperature, args.top_p, args.max_tokens, args.backend) == (0.0, 1.0, 4096, "vllm")
    assert (args.mode, args.name, args.compare) == ("compat", None, [])  # the paper's protocol
    assert (args.concurrency, args.tensor_parallel_size, args.engine_kwargs, args.ray_address) == (8, 1, {}, None)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_the_method_lives_in_the_commands_defaults_only(script: Path, env) -> None:
    flags = {word for word in command_line(script, env) if word.startswith("--")}
    assert not flags & METHOD_FLAGS
    assert flags == {"--data", "--model", "--out", "--backend", "--concurrency", "--tensor-parallel-size"}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_hardware_variables_become_engines_engine_kwargs_and_the_cluster(script: Path, env) -> None:
    hardware = {"GPUS": "16", "TP": "2", "GPU_MEMORY_UTILIZATION": ".85", "MAX_MODEL_LEN": "8192",
                "RAY_ADDRESS": "10.0.0.1:6379"}  # fmt: skip
    args = launched(script, dict(env, **hardware))
    assert (args.concurrency, args.tensor_parallel_size, args.ray_address) == (8, 2, "10.0.0.1:6379")
    assert args.engine_kwargs == {"gpu_memory_utilization": 0.85, "max_model_len": 8192}
    # the generation settings these flags make on vLLM's GPU build: 8 engines of 2 GPUs (one per tensor-parallel
    # rank, num_gpus left to the engine), all 16 GPUs taken. This machine's CPU build refuses tensor parallelism.
    assert args.num_gpus is None and args.concurrency * args.tensor_parallel_size == 16
    with pytest.raises(ValueError, match="tensor_parallel_size > 1 needs vLLM's GPU build"):
        GenerationConfig(model=args.model, backend=args.backend, concurrency=args.concurrency,
                         tensor_parallel_size=args.tensor_parallel_size, num_gpus=args.num_gpus,
                         engine_kwargs=args.engine_kwargs, ray_address=args.ray_address)  # fmt: skip
    four = launched(script, dict(env, GPUS="4", GPU_MEMORY_UTILIZATION="1"))
    assert (four.concurrency, four.engine_kwargs) == (4, {"gpu_memory_utilization": 1})


def test_extra_arguments_pass_through_and_win(env) -> None:
    mine = launched(MINE, env, "--k", "8", "--temperature", "0.7", "--concurrency", "3", "--keep-all-modality", "image")
    assert (mine.k, mine.temperature, mine.concurrency, mine.keep_all_modality) == (8, 0.7, 3, ["image"])
    assert mine.top_p == 0.95  # what is not given stays the paper's
    run = dict(env, GPU_MEMORY_UTILIZATION="0.5")
    extra = ["--name", "GR-VL 3B (R-SFT)", "--compare", "runs/a", "runs/b c", "--engine-kwargs", '{"dtype": "half"}']
    ev = launched(EVAL, run, *extra, "--backend", "transformers", "--mode", "strict")
    assert (ev.name, ev.compare, ev.backend, ev.mode) == (
        "GR-VL 3B (R-SFT)",
        [Path("runs/a"), Path("runs/b c")],
        "transformers",
        "strict",
    )
    assert ev.engine_kwargs == {"dtype": "half"}  # a second --engine-kwargs replaces the script's object


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
@pytest.mark.parametrize("missing", ["DATA", "MODEL_PATH", "OUT"])
def test_missing_paths_stop_the_script_before_python_starts(script: Path, missing: str, env) -> None:
    # not a dry run, and an interpreter that does not exist: only the script's own check can answer
    live = {k: v for k, v in env.items() if k not in ("GR_VL_DRY_RUN", missing)} | {"PYTHON": "/nonexistent/python3"}
    assert f"error: {missing} is not set: export {missing}=<" in refused(script, live)
    if missing != "OUT":  # OUT is created when missing
        stderr = refused(script, live | {missing: "/nonexistent/gr_vl"})
        assert f"{missing}: '/nonexistent/gr_vl' does not exist" in stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_bad_paths_and_hardware_values_are_refused_naming_the_variable(script: Path, env) -> None:
    assert "OUT: '" in refused(script, env | {"OUT": env["DATA"]})  # a file, not a folder
    assert "DATA takes one path" in refused(script, env | {"DATA": f"{env['DATA']},{env['DATA']}"})
    assert "GPUS must be a positive integer" in refused(script, env | {"GPUS": "0"})
    assert "GPUS must be a positive integer" in refused(script, env | {"GPUS": "eight"})
    assert "TP=3 does not divide GPUS=8" in refused(script, env | {"TP": "3"})
    assert "GPU_MEMORY_UTILIZATION must be in (0, 1]" in refused(script, env | {"GPU_MEMORY_UTILIZATION": "1.5"})
    assert "GPU_MEMORY_UTILIZATION must be in (0, 1]" in refused(script, env | {"GPU_MEMORY_UTILIZATION": "0"})
    assert "MAX_MODEL_LEN must be a positive integer" in refused(script, env | {"MAX_MODEL_LEN": "8k"})


def test_eval_recipe_runs_for_real(eval_parquet, tiny_model_dir, tmp_path) -> None:
    """Not a dry run: the script execs `gr-vl eval` on the bundled benchmark sample with the tiny model; the
    extra arguments switch it to the transformers backend on CPU (GPUS=1: one engine)."""
    out = tmp_path / "tiny-run"
    env = {k: v for k, v in os.environ.items() if k not in (*VARIABLES, "GR_VL_DRY_RUN")}
    env.update(DATA=str(eval_parquet), MODEL_PATH=str(tiny_model_dir), OUT=str(out), GPUS="1", PYTHON=sys.executable)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    extra = ["--backend", "transformers", "--max-tokens", "4", "--shard-size", "10", "--no-progress", "--name", "tiny"]
    argv = ["bash", str(EVAL), *extra]
    run = subprocess.run(argv, timeout=120, env=env, capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["name"] == "tiny" and report["mode"] == "compat"
    summary = json.loads((out / "generations" / "generate_summary.json").read_text())
    config = {k: summary["config"][k] for k in ("backend", "concurrency", "max_tokens", "temperature")}
    assert config == {"backend": "transformers", "concurrency": 1, "max_tokens": 4, "temperature": 0.0}
    assert summary["rows"] == summary["rows_total"] > 0
