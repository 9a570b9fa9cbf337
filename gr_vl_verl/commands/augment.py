"""Safety-aware concatenation: add pairs of RL rows merged into one, labels OR-merged (paper eq. 4-5).

    gr-vl augment --data rl_train.parquet --out rl_train_aug.parquet [--ratio 0.2] [--seed 42]
                  [--style paper|original] [--min-pixels N] [--max-pixels N]

The output holds every input row unchanged, then round(n * ratio / (1 - ratio)) concatenated rows, so they
are ``ratio`` of it. A summary is printed and saved beside the output as ``<name>.summary.json``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gr_vl_verl.commands import UsageError, WorkError, emit, require_parquet


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from gr_vl_verl.data.images import MAX_PIXELS, MIN_PIXELS

    parser.add_argument("--data", type=Path, required=True, help="RL parquet (e.g. the mined rl_train.parquet)")
    parser.add_argument("--out", type=Path, required=True, help="output RL parquet")
    parser.add_argument("--ratio", type=float, default=0.2, help="share of concatenated rows in the output")
    parser.add_argument("--seed", type=int, default=42, help="seed of the pairs")
    parser.add_argument(
        "--style",
        choices=("paper", "original"),
        default="paper",
        help="paper: one interaction (requests joined, responses joined); original: the released code's text, "
        "the two user turns joined with a space",
    )
    parser.add_argument("--min-pixels", type=int, default=MIN_PIXELS, help="smaller merged images are scaled up")
    parser.add_argument("--max-pixels", type=int, default=MAX_PIXELS, help="larger merged images are scaled down")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from gr_vl_verl.data.concat import ConcatConfig, ConcatError, run_augment, summary_path
    from gr_vl_verl.data.images import ImagePolicy

    try:
        config = ConcatConfig(
            ratio=args.ratio,
            seed=args.seed,
            style=args.style,
            images=ImagePolicy(min_pixels=args.min_pixels, max_pixels=args.max_pixels),
        )
    except ValueError as e:
        raise UsageError(str(e)) from None
    require_parquet("--data", args.data, "rl")
    if args.out.resolve() == args.data.resolve():
        raise UsageError(f"--out must differ from --data ({args.out})")
    if args.out.suffix != ".parquet":
        raise UsageError(f"--out: expected a .parquet file name, got {args.out}")
    try:
        summary = run_augment(args.data, args.out, config, progress=not args.no_progress)
    except ConcatError as e:
        raise WorkError(str(e)) from None
    except (ValueError, OSError) as e:
        raise WorkError(f"{args.data}: {e}") from None
    emit(summary.format())
    emit(f"summary: {summary_path(Path(args.out))}")
    return 0
