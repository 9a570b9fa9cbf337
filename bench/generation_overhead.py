"""What the Ray Data pipeline costs over calling the engine in a plain loop, and what a second actor buys (CPU).

Baselines, measured in the same run:

* per row: the transformers engine (tiny Qwen2.5-VL, one thread, as in an actor with ``num_cpus=1``) called in
  a plain loop over the same RL rows in this process, after it is loaded;
* start-up: a fresh Python process that imports the engine and loads the model (what each actor pays).

The pipeline (``gr_vl_verl.generation.generate``) is timed end to end: start of the Ray Data execution, the
actors starting and loading the model, reading the shards, generating, writing. It runs on N and 2N rows, so
``(T(2N) - T(N)) / N`` is its marginal cost per row (what a long run pays) and ``T(N) - N x marginal`` its
fixed start-up cost. Then one actor against two on this 2-core machine. Every measurement is repeated
``--repeats`` times, the settings interleaved, and the best counts: on a shared machine the minimum is the
least disturbed.

Not a timed test: ``python bench/generation_overhead.py [--rows N] [--max-tokens T]`` (``make bench``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

import gr_vl_verl  # noqa: E402
from gr_vl_verl.cli import main as cli_main  # noqa: E402
from gr_vl_verl.data.schemas import RL_SCHEMA  # noqa: E402
from gr_vl_verl.generation import GenerationConfig, generate  # noqa: E402
from gr_vl_verl.tiny import build_tiny_qwen2_5_vl  # noqa: E402

VLTRAIN = Path(gr_vl_verl.__file__).parent / "sample_data" / "GuardReasoner-VLTrain"


def rl_rows(work: Path, rows: int) -> Path:
    """``rows`` RL rows: the sample corpus prepared once, repeated under new ids."""
    prep = work / "prep"
    argv = ["prep", "vltrain", "--data-root", str(VLTRAIN), "--out", str(prep), "--formats", "rl", "--no-progress"]
    assert cli_main([*argv, "--min-pixels", "784", "--max-pixels", "12544"]) == 0
    base = pq.read_table(prep / "rl_train.parquet").to_pylist()
    out = []
    for i in range(rows):
        row = dict(base[i % len(base)])
        row["extra_info"] = {**row["extra_info"], "id": f"{row['extra_info']['id']}#{i}", "index": i}
        out.append(row)
    path = work / f"rl_{rows}.parquet"
    pq.write_table(pa.Table.from_pylist(out, schema=RL_SCHEMA), path)
    return path


def plain_loop(config: GenerationConfig, data: Path) -> tuple[float, float]:
    """(load seconds, generate seconds) of the engine in this process over every row of ``data``."""
    from gr_vl_verl.generation.engines import TransformersEngine
    from gr_vl_verl.generation.prompts import build_request

    start = time.perf_counter()
    engine = TransformersEngine(config)
    loaded = time.perf_counter()
    rows = pq.read_table(data).to_pylist()
    for i in range(0, len(rows), config.batch_size):
        batch = [{**r, "id": r["extra_info"]["id"]} for r in rows[i : i + config.batch_size]]
        engine.generate([build_request(r, engine.processor) for r in batch])
    return loaded - start, time.perf_counter() - loaded


def cold_start(config: GenerationConfig) -> float:
    """Seconds for a fresh interpreter to import the engine and load the model."""
    code = (
        "import time; t = time.perf_counter()\n"
        "from gr_vl_verl.generation import GenerationConfig\n"
        "from gr_vl_verl.generation.engines import TransformersEngine\n"
        f"TransformersEngine(GenerationConfig(model={config.model!r}, backend='transformers'))\n"
        "print(time.perf_counter() - t)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=600).stdout
    return float(out.split()[-1])


def pipeline(config: GenerationConfig, data: Path, out: Path) -> float:
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    summary = generate(data, out, config)
    seconds = time.perf_counter() - start
    assert summary.rows == pq.read_metadata(data).num_rows
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=136, help="N (the larger run has 2N rows)")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2, help="measurements per setting; the best counts")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run of a few seconds (CI runs it): tiny sizes, the numbers mean nothing",
    )
    args = parser.parse_args()
    if args.quick:
        args.rows, args.max_tokens, args.repeats = 4, 2, 1

    import ray

    work = Path(tempfile.mkdtemp(prefix="gr_vl_bench_gen_"))
    try:
        model = build_tiny_qwen2_5_vl(work / "tiny")
        small, large = rl_rows(work, args.rows), rl_rows(work, 2 * args.rows)
        cfg = GenerationConfig(
            model=str(model),
            backend="transformers",
            temperature=1.0,
            max_tokens=args.max_tokens,
            batch_size=8,
            shard_size=32,
            progress=False,
        )
        print(f"rows N={args.rows}, 2N={2 * args.rows}; max_tokens={args.max_tokens}, n=1, sampled; tiny model, CPU")

        two = GenerationConfig(**{**cfg.to_dict(), "concurrency": 2})
        best = dict.fromkeys(("loop", "cold", "small", "large", "two"), float("inf"))
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
        if args.quick:  # one pipeline run against the plain loop: the bench's code paths, not its numbers
            try:
                loop_s, pipe_s = plain_loop(cfg, small)[1], pipeline(cfg, small, work / "one_small")
            finally:
                ray.shutdown()
            print(f"quick: plain loop {loop_s:.2f} s, pipeline (1 actor, start-up included) {pipe_s:.2f} s")
            return
        try:
            for _ in range(args.repeats):  # interleaved, so each setting sees the same machine load
                best["loop"] = min(best["loop"], plain_loop(cfg, large)[1])
                best["cold"] = min(best["cold"], cold_start(cfg))
                best["small"] = min(best["small"], pipeline(cfg, small, work / "one_small"))
                best["large"] = min(best["large"], pipeline(cfg, large, work / "one_large"))
                best["two"] = min(best["two"], pipeline(two, large, work / "two_large"))
        finally:
            ray.shutdown()
        loop_s, cold, t_small, t_large, t_two = (best[k] for k in ("loop", "cold", "small", "large", "two"))
        per_row = loop_s / (2 * args.rows)
        print(f"baseline, per row (plain loop, 1 thread): {per_row * 1000:.1f} ms/row over 2N rows")
        print(f"baseline, start-up (fresh process imports the engine, loads the model): {cold:.2f} s")
        marginal = (t_large - t_small) / args.rows
        fixed = t_small - args.rows * marginal
        print(f"pipeline, 1 actor: N rows {t_small:.2f} s, 2N rows {t_large:.2f} s")
        print(f"  marginal cost per row {marginal * 1000:.1f} ms = {marginal / per_row:.2f} x baseline per row")
        print(f"  fixed cost {fixed:.2f} s = {fixed / cold:.2f} x baseline start-up")
        print(f"  2N-row run, all included: {t_large / loop_s:.2f} x the plain loop (its model load excluded)")
        print(f"pipeline, 2 actors: 2N rows {t_two:.2f} s = {t_large / t_two:.2f} x the speed of 1 actor")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
