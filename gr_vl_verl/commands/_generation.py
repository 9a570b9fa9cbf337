"""The generation options `gr-vl generate` and `gr-vl eval` share: their flags, the ``GenerationConfig`` they make,
and one way of running it and reporting its failures.

A helper of the command modules (its name starts with ``_``, so ``gr-vl`` lists no command for it). Like a
command, it imports the generation package only inside its functions.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gr_vl_verl.commands import UsageError, WorkError

if TYPE_CHECKING:
    from gr_vl_verl.generation import GenerationConfig, GenerationSummary


def json_object(value: str) -> dict:
    """argparse type of ``--engine-kwargs``: a JSON object."""
    try:
        data = json.loads(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not JSON: {e}") from None
    if not isinstance(data, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return data


def add_engine_kwargs(parser: argparse.ArgumentParser) -> None:
    """``--engine-kwargs JSON``: passed to ``vllm.LLM`` or ``from_pretrained`` as they are."""
    parser.add_argument(
        "--engine-kwargs",
        type=json_object,
        default={},
        metavar="JSON",
        help="extra arguments for vllm.LLM / from_pretrained, e.g. '{\"max_model_len\": 8192}'",
    )


def add_generation_arguments(
    parser: argparse.ArgumentParser,
    *,
    samples: bool = True,
    model_required: bool = True,
    seed: bool = True,
    defaults: dict[str, Any] | None = None,
) -> None:
    """``--model`` and every engine, sampling and Ray option. ``samples=False`` leaves out ``--n`` (a command
    that fixes the number of answers per row itself); ``seed=False`` leaves out ``--seed`` (a command whose own
    ``--seed`` seeds the generation too); ``defaults`` replaces flag defaults (e.g. a command's sampling)."""
    p = parser
    p.add_argument("--model", required=model_required, help="checkpoint folder (model, tokenizer, processor)")
    p.add_argument("--backend", choices=("vllm", "transformers"), default="vllm", help="default vllm")
    if samples:
        p.add_argument("--n", type=int, default=1, help="samples per row (default %(default)s)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 is greedy (default %(default)s)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default %(default)s)")
    p.add_argument("--max-tokens", type=int, default=4096, help="new tokens per sample (default %(default)s)")
    if seed:
        p.add_argument("--seed", type=int, default=0, help="run seed; each (row, sample) derives its own (default 0)")
    p.add_argument("--batch-size", type=int, default=64, help="rows per engine call (default 64)")
    p.add_argument("--concurrency", type=int, default=1, help="engine actors (default 1)")
    p.add_argument("--shard-size", type=int, default=1000, help="input rows per output shard (default 1000)")
    p.add_argument("--num-gpus", type=float, default=None, help="GPUs per actor (default: 1 for vllm, 0 otherwise)")
    p.add_argument("--num-cpus", type=float, default=1.0, help="CPUs per actor (default 1)")
    p.add_argument("--tensor-parallel-size", type=int, default=1, help="vLLM tensor parallelism per engine")
    add_engine_kwargs(p)
    p.add_argument(
        "--min-pixels",
        type=int,
        default=None,
        help="the processor's image bounds, with --max-pixels (default: an eval parquet's 3136-12845056, the "
        "released evaluator's; an RL parquet's 262144-4194304, the RL config's; on a Qwen3-VL or Qwen3.5 "
        "model's 32-pixel grid, the same numbers of vision tokens: docs/models.md)",
    )
    p.add_argument("--max-pixels", type=int, default=None, help="see --min-pixels")
    p.add_argument("--ray-address", default=None, help="Ray cluster to join (default: start a local Ray)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    if defaults:
        p.set_defaults(**defaults)


def generation_config(args: argparse.Namespace, **fixed: Any) -> GenerationConfig:
    """The ``GenerationConfig`` of parsed flags; ``fixed`` supplies what the command has no flag for (``n``).

    A bad value, a missing model folder or ``--backend vllm`` without vLLM installed is a :class:`UsageError`.
    """
    from gr_vl_verl.generation import GenerationConfig
    from gr_vl_verl.generation.engines import VLLM_MISSING, vllm_available

    values = {
        "model": args.model,
        "backend": args.backend,
        "n": getattr(args, "n", 1),
        "temperature": args.temperature,
        "top_p": args.top_p,
        "max_tokens": args.max_tokens,
        "seed": args.seed,
        "batch_size": args.batch_size,
        "concurrency": args.concurrency,
        "shard_size": args.shard_size,
        "num_gpus": args.num_gpus,
        "num_cpus": args.num_cpus,
        "tensor_parallel_size": args.tensor_parallel_size,
        "engine_kwargs": args.engine_kwargs,
        "min_pixels": args.min_pixels,
        "max_pixels": args.max_pixels,
        "ray_address": args.ray_address,
        "progress": not args.no_progress,
        **fixed,
    }
    try:
        config = GenerationConfig(**values)
        model_family(config.model)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if config.backend == "vllm" and not vllm_available():
        raise UsageError(VLLM_MISSING)
    return config


def model_family(model: str | Path):
    """The checkpoint's family (``models.detect``); an unknown one is refused with the list of known ones."""
    from gr_vl_verl.models.detect import family_of_model

    return family_of_model(model)


def family_pixels(data: Path, config: GenerationConfig) -> GenerationConfig:
    """``config`` with the image bounds of the input's stage on the model's grid, when none were given.

    ``generate`` fills in the paper's bounds (Qwen2.5-VL's grid) itself; another family's are set here, before
    it, so the processor gets the paper's number of vision tokens per image on that family's grid too."""
    import dataclasses

    from gr_vl_verl.data.schemas import parquet_kind
    from gr_vl_verl.generation.config import input_pixels
    from gr_vl_verl.models.families import DEFAULT_FAMILY

    family = model_family(config.model)
    if config.min_pixels is not None or family == DEFAULT_FAMILY:
        return config
    low, high = input_pixels(parquet_kind(Path(data)), family)
    return dataclasses.replace(config, min_pixels=low, max_pixels=high)


def run_generation(data: Path, out: Path, config: GenerationConfig) -> GenerationSummary:
    """``generation.generate`` with its failures as command errors: bad input or a folder of another run is
    usage (exit 2), a failed run is work (exit 1)."""
    from gr_vl_verl.generation import GenerationError, generate

    try:
        return generate(data, out, family_pixels(data, config))
    except (FileNotFoundError, ValueError) as e:  # input kind, empty input, a folder of another run
        raise UsageError(str(e)) from None
    except (GenerationError, OSError) as e:
        raise WorkError(str(e)) from None
