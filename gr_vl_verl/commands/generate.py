"""Generate guard answers for every row of an RL or eval parquet (Ray Data; vLLM or transformers).

    gr-vl generate --data rl_train.parquet --model CKPT --out gens/ --n 4 --temperature 1.0 --top-p 0.95

Writes ``OUT/shard-*.parquet`` (id, sample, output, output_tokens, finish_reason), ``OUT/generate_manifest.json``
and, when every shard is done, ``OUT/generate_summary.json``. Re-running the same command resumes: finished
shards are kept. See docs/generation.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from gr_vl_verl.commands import UsageError, WorkError


def _json_object(value: str) -> dict:
    try:
        data = json.loads(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not JSON: {e}") from None
    if not isinstance(data, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return data


def add_arguments(parser: argparse.ArgumentParser) -> None:
    p = parser
    p.add_argument("--data", type=Path, required=True, help="RL or eval parquet written by `gr-vl prep`")
    p.add_argument("--model", required=True, help="checkpoint folder (model, tokenizer, processor)")
    p.add_argument("--out", type=Path, required=True, help="output folder (resumed if it holds this run)")
    p.add_argument("--backend", choices=("vllm", "transformers"), default="vllm", help="default vllm")
    p.add_argument("--n", type=int, default=1, help="samples per row (default 1)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 is greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default 1.0)")
    p.add_argument("--max-tokens", type=int, default=4096, help="new tokens per sample (default 4096)")
    p.add_argument("--seed", type=int, default=0, help="run seed; each (row, sample) derives its own (default 0)")
    p.add_argument("--batch-size", type=int, default=64, help="rows per engine call (default 64)")
    p.add_argument("--concurrency", type=int, default=1, help="engine actors (default 1)")
    p.add_argument("--shard-size", type=int, default=1000, help="input rows per output shard (default 1000)")
    p.add_argument("--num-gpus", type=float, default=None, help="GPUs per actor (default: 1 for vllm, 0 otherwise)")
    p.add_argument("--num-cpus", type=float, default=1.0, help="CPUs per actor (default 1)")
    p.add_argument("--tensor-parallel-size", type=int, default=1, help="vLLM tensor parallelism per engine")
    p.add_argument(
        "--engine-kwargs",
        type=_json_object,
        default={},
        metavar="JSON",
        help="extra arguments for vllm.LLM / from_pretrained, e.g. '{\"max_model_len\": 8192}'",
    )
    p.add_argument("--ray-address", default=None, help="Ray cluster to join (default: start a local Ray)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from gr_vl_verl.generation import GenerationConfig, GenerationError, generate
    from gr_vl_verl.generation.engines import VLLM_MISSING, vllm_available

    if not args.data.is_file():
        raise UsageError(f"--data: file not found: {args.data}")
    try:
        config = GenerationConfig(
            model=args.model,
            backend=args.backend,
            n=args.n,
            temperature=args.temperature,
            top_p=args.top_p,
            max_tokens=args.max_tokens,
            seed=args.seed,
            batch_size=args.batch_size,
            concurrency=args.concurrency,
            shard_size=args.shard_size,
            num_gpus=args.num_gpus,
            num_cpus=args.num_cpus,
            tensor_parallel_size=args.tensor_parallel_size,
            engine_kwargs=args.engine_kwargs,
            ray_address=args.ray_address,
            progress=not args.no_progress,
        )
    except ValueError as e:
        raise UsageError(str(e)) from None
    if config.backend == "vllm" and not vllm_available():
        raise UsageError(VLLM_MISSING)
    try:
        summary = generate(args.data, args.out, config)
    except (FileNotFoundError, ValueError) as e:  # input kind, empty input, a folder of another run
        raise UsageError(str(e)) from None
    except (GenerationError, OSError) as e:
        raise WorkError(str(e)) from None
    print(summary.format())
    print(f"summary: {Path(args.out) / 'generate_summary.json'}")
    return 0
