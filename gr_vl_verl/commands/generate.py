"""Generate guard answers for every row of an RL or eval parquet (Ray Data; vLLM or transformers).

    gr-vl generate --data rl_train.parquet --model CKPT --out gens/ --n 4 --temperature 1.0 --top-p 0.95

Writes ``OUT/shard-*.parquet`` (id, sample, output, output_tokens, finish_reason, p_harmful_request,
p_harmful_response), ``OUT/generate_manifest.json``
and, when every shard is done, ``OUT/generate_summary.json``. Re-running the same command resumes: finished
shards are kept. See docs/generation.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gr_vl_verl.commands import UsageError, emit
from gr_vl_verl.commands._generation import add_generation_arguments, generation_config, run_generation


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, help="RL or eval parquet written by `gr-vl prep`")
    parser.add_argument("--out", type=Path, required=True, help="output folder (resumed if it holds this run)")
    add_generation_arguments(parser)


def run(args: argparse.Namespace) -> int:
    if not args.data.is_file():
        raise UsageError(f"--data: file not found: {args.data}")
    summary = run_generation(args.data, args.out, generation_config(args))
    emit(summary.format())
    emit(f"summary: {Path(args.out) / 'generate_summary.json'}")
    return 0
