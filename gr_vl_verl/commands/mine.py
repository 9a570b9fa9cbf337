"""Hard-sample mining: keep the RL rows with at most --max-correct right answers of k (paper §2.3.1).

    gr-vl mine --data rl_train.parquet (--model CKPT [generation options] | --generations GEN) --out DIR
               [--k 4] [--max-correct 0] [--sample-num 12000] [--val-fraction 0.2] [--seed 42]
               [--parse strict|compat] [--keep-all-modality image] [--strict]

With ``--model`` the k answers per row are generated first, into ``DIR/generations/`` (as ``gr-vl generate``
does, so an interrupted run resumes), with the paper's sampling settings as defaults (temperature 1.0, top_p
0.95, up to 4096 tokens). ``--generations`` instead takes what ``gr-vl generate --n K`` wrote over the same
parquet (one file or a folder of shards), so generation can run on a cluster and selection anywhere. Writes
``DIR/rl_train.parquet``, ``DIR/rl_val.parquet`` and ``DIR/mining_stats.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gr_vl_verl.commands import UsageError, WorkError, emit, require_out_folder, require_parquet
from gr_vl_verl.commands._generation import add_generation_arguments, generation_config, run_generation

#: Rejection sampling in the paper (appendix A.5.2) and the released rejection_sampling.py.
PAPER_SAMPLING = {"temperature": 1.0, "top_p": 0.95, "max_tokens": 4096}


def _sample_num(value: str) -> int | None:
    if value == "all":
        return None
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'all', got {value!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from gr_vl_verl.data.records import MODALITIES
    from gr_vl_verl.protocol import PARSE_MODES

    parser.add_argument("--data", type=Path, required=True, help="RL parquet the generations were made from")
    parser.add_argument(
        "--generations",
        type=Path,
        default=None,
        help="`gr-vl generate` output, or any parquet with its columns (id, sample, output, output_tokens, "
        "finish_reason): a file or a folder of them (instead of --model)",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder (created if missing)")
    parser.add_argument("--k", type=int, default=4, help="answers per row that decide (default 4)")
    parser.add_argument(
        "--max-correct", type=int, default=0, help="keep rows with at most this many right answers (default 0)"
    )
    parser.add_argument(
        "--sample-num", type=_sample_num, default=12000, help="cap on kept rows, or 'all' (default 12000)"
    )
    parser.add_argument("--val-fraction", type=float, default=0.2, help="share of the kept rows in rl_val")
    parser.add_argument(
        "--seed", type=int, default=42, help="seed of the cap and the split, and of the generation with --model"
    )
    parser.add_argument(
        "--parse",
        choices=PARSE_MODES,
        default="strict",
        help="strict: labels only from a well-formed answer (as the reward); compat: first labels anywhere "
        "(as the released code)",
    )
    parser.add_argument(
        "--keep-all-modality",
        action="append",
        choices=MODALITIES,
        default=[],
        help="keep every row of this modality whatever its answers (the released code: image); repeatable",
    )
    parser.add_argument("--strict", action="store_true", help="a row without k answers is an error")
    group = parser.add_argument_group("generating the k answers (with --model)")
    add_generation_arguments(group, samples=False, model_required=False, seed=False, defaults=PAPER_SAMPLING)


def run(args: argparse.Namespace) -> int:
    from gr_vl_verl.data.mining import STATS_FILE, MiningConfig, MiningError, mine
    from gr_vl_verl.data.schemas import generation_files, read_generations

    try:
        config = MiningConfig(
            k=args.k,
            max_correct=args.max_correct,
            sample_num=args.sample_num,
            val_fraction=args.val_fraction,
            seed=args.seed,
            parse=args.parse,
            keep_all_modalities=tuple(args.keep_all_modality),
            strict=args.strict,
        )
    except ValueError as e:
        raise UsageError(str(e)) from None
    require_parquet("--data", args.data, "rl")
    require_out_folder("--out", args.out)
    if (args.model is None) == (args.generations is None):
        raise UsageError("give exactly one of --model (generate the k answers here) and --generations")
    if args.model is not None:
        gen_config = generation_config(args, n=args.k)
        args.generations = Path(args.out) / "generations"
        Path(args.out).mkdir(parents=True, exist_ok=True)
        run_generation(args.data, args.generations, gen_config)
    try:
        gen_files = generation_files(args.generations, warn=lambda line: print(f"warning: {line}", file=sys.stderr))
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(f"--generations: {e}") from None
    try:
        stats = mine(
            args.data,
            read_generations(args.generations),
            args.out,
            config,
            inputs={"generations": [str(f) for f in gen_files]},
        )
    except MiningError as e:
        raise WorkError(str(e)) from None
    except (ValueError, OSError) as e:  # unreadable parquet, wrong kind
        raise WorkError(f"{args.data}: {e}") from None
    totals = stats["totals"]
    emit(f"rows: {totals['rows']}, with {config.k} answers: {totals['with_k_answers']}, skipped: {totals['skipped']}")
    emit(f"right answers per row: {json.dumps(totals['histogram'])}")
    emit(f"kept: {totals['kept']}, selected: {totals['selected']} (train {totals['train']}, val {totals['val']})")
    emit(f"stats: {Path(args.out) / STATS_FILE}")
    return 0
