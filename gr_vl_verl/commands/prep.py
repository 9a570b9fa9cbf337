"""Turn GuardReasoner-VL corpora into verl SFT / RL parquets and an evaluation parquet.

Sub-commands, one per kind of source::

    gr-vl prep vltrain --data-root DIR --out OUT            # GuardReasoner-VLTrain → sft_train / rl_train
    gr-vl prep vltest  --benchmark-dir DIR --out OUT        # GuardReasoner-VLTest → eval.parquet
    gr-vl prep table   FILE... --map request=prompt --out OUT   # jsonl / parquet / load_from_disk folder

Every run prints and saves ``OUT/<command>_summary.json``: rows in, written per file, skipped by reason, and
the keys the readers ignored (``--strict-fields`` rejects such rows instead).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gr_vl_verl.commands import UsageError, WorkError, emit
from gr_vl_verl.data.readers import BENCHMARK_TASKS, VLTRAIN_SPLITS

DEFAULT_FORMATS = {"vltrain": "sft,rl", "vltest": "eval", "table": "rl"}


def _csv(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def _common(p: argparse.ArgumentParser, command: str) -> None:
    from gr_vl_verl.data.writers import SFT_TARGETS
    from gr_vl_verl.models.families import DEFAULT_FAMILY, FAMILIES

    paper = DEFAULT_FAMILY
    p.add_argument("--out", type=Path, required=True, help="output folder (created if missing)")
    p.add_argument(
        "--formats",
        type=_csv,
        default=_csv(DEFAULT_FORMATS[command]),
        help=f"comma list of sft, rl, eval (default {DEFAULT_FORMATS[command]})",
    )
    p.add_argument("--split", default="train" if command != "vltest" else "test", help="split name of the rows")
    p.add_argument("--val-fraction", type=float, default=0.0, help="route this fraction to *_val.parquet")
    p.add_argument("--seed", type=int, default=42, help="seed of the train/val assignment")
    p.add_argument("--strict", action="store_true", help="fail (publishing nothing) on the first bad row")
    if command != "table":
        p.add_argument(
            "--strict-fields",
            action="store_true",
            help="reject rows with keys the reader does not use (default: ignore them, counted in the summary)",
        )
    p.add_argument("--workers", type=int, default=1, help="processes decoding images (order is kept)")
    p.add_argument(
        "--model-family",
        choices=tuple(FAMILIES),
        default=paper.name,
        help=f"the model the data is for: its image grid sets the default pixel bounds below, the paper's numbers "
        f"of vision tokens (default {paper.name}, the paper's; docs/models.md)",
    )
    rl, ev, sft = paper.pixels("rl"), paper.pixels("eval"), paper.pixels("sft")
    p.add_argument("--min-pixels", type=int, default=None, help=f"RL: smaller images are scaled up (default {rl[0]})")
    p.add_argument("--max-pixels", type=int, default=None, help=f"RL: larger images are scaled down (default {rl[1]})")
    p.add_argument(
        "--eval-min-pixels",
        type=int,
        default=None,
        help=f"eval: smaller images are scaled up (default {ev[0]}: the released evaluator's)",
    )
    p.add_argument(
        "--eval-max-pixels",
        type=int,
        default=None,
        help=f"eval: larger images are scaled down (default {ev[1]}: the released evaluator's)",
    )
    p.add_argument(
        "--sft-min-pixels",
        type=int,
        default=None,
        help=f"SFT: smaller images are scaled up (default {sft[0]}, LLaMA-Factory's, as the released R-SFT)",
    )
    p.add_argument(
        "--sft-max-pixels",
        type=int,
        default=None,
        help=f"SFT: larger images are scaled down (default {sft[1]} = 768x768, LLaMA-Factory's)",
    )
    p.add_argument(
        "--sft-target",
        choices=SFT_TARGETS,
        default="verbatim",
        help="SFT assistant turn: the dataset's answer as written (default) or rebuilt from reasoning and labels",
    )
    p.add_argument("--max-image-bytes", type=int, default=64 * 1024 * 1024, help="refuse bigger image files")
    p.add_argument(
        "--instruction-placement",
        choices=("system", "user"),
        default="system",
        help="guard instruction as the system turn (SFT, inference) or prefixed to the user turn",
    )
    p.add_argument(
        "--text-placeholder-image",
        action="store_true",
        help="RL: give text rows `<image>` and a 1x1 white image, as the original RL data did",
    )
    p.add_argument(
        "--original-rl",
        action="store_true",
        help="RL rows exactly as the original code: comma instruction in the user turn + placeholder image",
    )
    p.add_argument("--row-group-size", type=int, default=256)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="input_kind", required=True, metavar="SOURCE")
    p = sub.add_parser("vltrain", help="GuardReasoner-VLTrain (LLaMA-Factory JSON + image folders)")
    p.add_argument("--data-root", type=Path, required=True, help="folder with the split JSONs and image folders")
    p.add_argument(
        "--splits",
        type=_csv,
        default=tuple(VLTRAIN_SPLITS),
        help=f"comma list of {', '.join(VLTRAIN_SPLITS)} (default all)",
    )
    _common(p, "vltrain")

    p = sub.add_parser("vltest", help="GuardReasoner-VLTest benchmark JSON files")
    p.add_argument("--benchmark-dir", type=Path, required=True, help="folder of <Benchmark>.json files")
    p.add_argument("--benchmarks", type=_csv, default=None, help="comma list (default: every known file found)")
    p.add_argument(
        "--image-dataset",
        type=Path,
        default=None,
        help="GuardReasoner-VLTest saved with datasets.save_to_disk (images of HarmImageTest / SPA_VL_Eval)",
    )
    _common(p, "vltest")

    p = sub.add_parser("table", help="generic jsonl / parquet / datasets.load_from_disk folder")
    p.add_argument("inputs", type=Path, nargs="+", help="input files or dataset folders")
    p.add_argument("--map", action="append", default=[], metavar="FIELD=COLUMN", help="column for a field")
    p.add_argument("--data-root", type=Path, default=None, help="root for relative image paths")
    p.add_argument("--source", default=None, help="source name (default: the file name)")
    _common(p, "table")


def _items(args: argparse.Namespace, keys) -> tuple[list[str], object]:
    from itertools import chain

    from gr_vl_verl.data import readers

    if args.input_kind == "vltrain":
        return [str(args.data_root)], readers.read_vltrain_dir(args.data_root, args.splits, keys=keys)
    if args.input_kind == "vltest":
        names = args.benchmarks or [n for n in BENCHMARK_TASKS if (args.benchmark_dir / f"{n}.json").is_file()]
        if not names:
            raise FileNotFoundError(f"no known benchmark files in {args.benchmark_dir}")
        images = readers.VLTestImages(args.image_dataset) if args.image_dataset else None
        paths = [args.benchmark_dir / f"{n}.json" for n in names]
        for path in paths:
            if not path.is_file():
                raise FileNotFoundError(f"benchmark file not found: {path}")
        return [str(p) for p in paths], chain.from_iterable(
            readers.read_benchmark(p, n, images=images, keys=keys) for p, n in zip(paths, names, strict=True)
        )
    mapping = readers.parse_mapping(args.map)
    return [str(p) for p in args.inputs], chain.from_iterable(
        readers.read_table(p, mapping, data_root=args.data_root, source=args.source) for p in args.inputs
    )


def _bounds(low: int | None, high: int | None, family: tuple[int, int]) -> tuple[int, int]:
    """A flag given wins; one left out is the model family's bound for the stage."""
    return (family[0] if low is None else low, family[1] if high is None else high)


def config_from_args(args: argparse.Namespace):
    import dataclasses

    from gr_vl_verl.data.images import ImagePolicy
    from gr_vl_verl.data.pipeline import PrepConfig
    from gr_vl_verl.data.writers import RowOptions
    from gr_vl_verl.models.families import get_family

    rows = RowOptions(
        split=args.split,
        placement=args.instruction_placement,
        text_placeholder_image=args.text_placeholder_image,
        sft_target=args.sft_target,
    )
    if args.original_rl:
        rows = dataclasses.replace(RowOptions.original_rl(args.split), sft_target=args.sft_target)
    family = get_family(args.model_family)
    rl = _bounds(args.min_pixels, args.max_pixels, family.pixels("rl"))
    return PrepConfig(
        formats=args.formats,
        split=args.split,
        val_fraction=args.val_fraction,
        seed=args.seed,
        strict=args.strict,
        workers=args.workers,
        row_group_size=args.row_group_size,
        progress=not args.no_progress,
        images=ImagePolicy(min_pixels=rl[0], max_pixels=rl[1], max_file_bytes=args.max_image_bytes),
        sft_pixels=_bounds(args.sft_min_pixels, args.sft_max_pixels, family.pixels("sft")),
        eval_pixels=_bounds(args.eval_min_pixels, args.eval_max_pixels, family.pixels("eval")),
        rows=rows,
    )


def run(args: argparse.Namespace) -> int:
    from gr_vl_verl.data.pipeline import PrepError, run_prep
    from gr_vl_verl.data.readers import ExtraKeys

    try:
        config = config_from_args(args)
    except ValueError as e:
        raise UsageError(str(e)) from None
    keys = ExtraKeys(strict=getattr(args, "strict_fields", False))
    try:
        inputs, items = _items(args, keys)
        summary = run_prep(items, args.out, config, name=args.input_kind, inputs=inputs, ignored_keys=keys.ignored)
    except FileNotFoundError as e:  # a missing input path is a usage error, even when found mid-stream
        raise UsageError(str(e)) from None
    except (PrepError, ValueError, OSError) as e:
        raise WorkError(str(e)) from None
    emit(summary.format())
    emit(f"summary: {Path(args.out) / (args.input_kind + '_summary.json')}")
    return 0
