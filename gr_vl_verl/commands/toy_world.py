"""Write a learnable toy guard world, seeded, in GuardReasoner-VLTrain / -VLTest's file shapes.

    gr-vl toy-world --out DIR [--seed 0] [--text N --image N --text-image N]
                    [--bench-text N --bench-image N --bench-text-image N]

Writes ``DIR/GuardReasoner-VLTrain`` and ``DIR/GuardReasoner-VLTest``, which ``gr-vl prep vltrain`` and
``gr-vl prep vltest`` read as they read the real corpora. Byte-identical for a seed. The rules that decide harm,
and what the benchmarks hold out: docs/toy_world.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from gr_vl_verl.commands import UsageError, emit, require_out_folder


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from gr_vl_verl.data.toy_world import WorldConfig

    d = WorldConfig()
    parser.add_argument("--out", type=Path, required=True, help="output folder (new or empty)")
    parser.add_argument("--seed", type=int, default=d.seed)
    for name, help_text in (
        ("text", "GuardReasoner-VLTrainText rows"),
        ("image", "GuardReasoner-VLTrainImage rows"),
        ("text_image", "GuardReasoner-VLTrainTextImage rows"),
        ("bench_text", "rows of each text benchmark"),
        ("bench_image", "HarmImageTest rows"),
        ("bench_text_image", "SPA_VL_Eval rows"),
    ):
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, type=int, default=getattr(d, name), help=f"{help_text} (default %(default)s)")


def run(args: argparse.Namespace) -> int:
    from gr_vl_verl.data.toy_world import WorldConfig, generate

    require_out_folder("--out", args.out)
    try:
        config = WorldConfig(seed=args.seed, text=args.text, image=args.image, text_image=args.text_image,
                             bench_text=args.bench_text, bench_image=args.bench_image,
                             bench_text_image=args.bench_text_image)  # fmt: skip
        counts = generate(args.out, config)
    except (ValueError, FileExistsError) as e:
        raise UsageError(str(e)) from None
    emit(json.dumps({"out": str(args.out), "seed": args.seed, **counts}))
    return 0
