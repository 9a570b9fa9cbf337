"""Peak memory and throughput of RL-parquet prep: streaming pipeline vs a naive in-memory pandas script.

Builds synthetic GuardReasoner-VLTrain corpora (2k and 20k samples, a third with an image) in a temp dir and
converts each with

* ``stream-w1`` / ``stream-w2``: ``gr_vl_verl.data.pipeline.run_prep`` with 1 and 2 image workers;
* ``naive``: read everything into a list, decode and re-encode every image with PIL, build a DataFrame,
  ``to_parquet`` (what a one-off script does).

Each run is a fresh subprocess that reports its own peak RSS (``getrusage``; worker processes separately)
and samples/s over the conversion. Targets: streaming peak RSS at 20k <= 1.2x at 2k; throughput >= 2x naive.

    python bench/prep_scaling.py [--sizes 2000,20000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import random
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

IMPLS = ("stream-w1", "stream-w2", "naive")


# --------------------------------------------------------------------------------------------------
# Synthetic corpus
# --------------------------------------------------------------------------------------------------
def make_images(folder: Path, n: int, fmt: str = "png", seed: int = 0) -> list[Path]:
    """Distinct drawn pictures within the paper's pixel bounds (512x512 .. 640x640), a few KB each.

    As PNG they are already what the pipeline stores (kept byte for byte); as JPEG every one is re-encoded.
    """
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    paths = []
    for i in range(n):
        w, h = rng.randrange(512, 641), rng.randrange(512, 641)
        img = Image.new("RGB", (w, h), tuple(rng.randrange(256) for _ in range(3)))
        draw = ImageDraw.Draw(img)
        for _ in range(6):
            x, y = rng.randrange(w - 60), rng.randrange(h - 60)
            draw.rectangle((x, y, x + rng.randrange(20, 200), y + rng.randrange(20, 200)), fill=(i % 256, 90, 160))
        buf = io.BytesIO()
        if fmt == "png":
            img.save(buf, format="PNG", compress_level=1)
        else:
            img.save(buf, format="JPEG", quality=90)
        path = folder / f"img_{i:06d}.{fmt}"
        path.write_bytes(buf.getvalue())
        paths.append(path)
    return paths


def make_corpus(root: Path, n: int, pool: list[Path]) -> None:
    """``n`` samples in the three VLTrain split files; every third has its own image (hard-linked in)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from gr_vl_verl.protocol import INSTRUCTION, format_answer, format_user_content

    (root / "image").mkdir(parents=True)
    (root / "text_image").mkdir(parents=True)
    splits: dict[str, list] = {"Text": [], "Image": [], "TextImage": []}
    reasoning = "## Reasoning Step 1: " + "The request is examined in context. " * 12
    k = 0
    for i in range(n):
        p = "harmful" if i % 2 else "unharmful"
        request = f"Sample request number {i}: " + "please explain this topic in detail. " * 3
        response = None if i % 4 == 0 else "Here is a considered, careful answer. " * 4
        r = None if response is None else ("harmful" if i % 5 == 0 else "unharmful")
        images: list[str] = []
        if i % 3 == 2:
            sub = "image" if k % 2 == 0 else "text_image"
            name = f"{sub}/s{i:06d}{pool[k % len(pool)].suffix}"
            os.link(pool[k % len(pool)], root / name)
            images = ["./" + name]
            k += 1
            if sub == "image":
                request, response, r = "", None, None
            split = "Image" if sub == "image" else "TextImage"
        else:
            split = "Text"
        row = {
            "messages": [
                {"role": "system", "content": INSTRUCTION},
                {"role": "user", "content": format_user_content(request, response, len(images))},
                {"role": "assistant", "content": format_answer(reasoning, p, r)},
            ]
        }
        if images:
            row["images"] = images
        splits[split].append(row)
    for name, rows in splits.items():
        (root / f"GuardReasoner-VLTrain{name}.json").write_text(json.dumps(rows), encoding="utf-8")


# --------------------------------------------------------------------------------------------------
# One measured run (in a child process)
# --------------------------------------------------------------------------------------------------
def run_stream(root: Path, out: Path, workers: int) -> int:
    from gr_vl_verl.data.pipeline import PrepConfig, run_prep
    from gr_vl_verl.data.readers import read_vltrain_dir

    summary = run_prep(read_vltrain_dir(root), out, PrepConfig(formats=("rl",), workers=workers, progress=False))
    return summary.outputs["rl_train.parquet"].written


def run_naive(root: Path, out: Path) -> int:
    import pandas as pd
    from PIL import Image

    from gr_vl_verl.data.images import MAX_PIXELS, MIN_PIXELS, bound_size
    from gr_vl_verl.data.readers import read_vltrain_dir
    from gr_vl_verl.data.writers import RowOptions, rl_row

    samples = list(read_vltrain_dir(root))  # read all
    rows = []
    for index, sample in enumerate(samples):
        images = []
        for path in sample.images:
            img = Image.open(path).convert("RGB")
            size = bound_size(img.width, img.height, MIN_PIXELS, MAX_PIXELS)
            if size != img.size:
                img = img.resize(size)
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            images.append(buf.getvalue())
        rows.append(rl_row(dataclasses.replace(sample, images=tuple(images)), index, RowOptions()))
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(out / "rl_train.parquet")
    return len(rows)


def child(impl: str, root: Path, out: Path) -> None:
    # Import first: the timer measures the conversion, not start-up. pandas for both: pyarrow imports it on
    # the first Table.from_pylist anyway, so it is in the streaming process's memory too.
    import pandas  # noqa: F401
    import PIL.Image  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    import gr_vl_verl.data.pipeline  # noqa: F401
    import gr_vl_verl.data.readers  # noqa: F401
    import gr_vl_verl.data.writers  # noqa: F401

    start = time.perf_counter()
    if impl == "naive":
        n = run_naive(root, out)
    else:
        n = run_stream(root, out, workers=int(impl.rsplit("w", 1)[1]))
    seconds = time.perf_counter() - start
    kib = 1024  # ru_maxrss is KiB on Linux
    print(
        json.dumps(
            {
                "rows": n,
                "seconds": seconds,
                "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / kib,
                "worker_peak_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / kib,
            }
        )
    )


#: A measured child's time limit; it leads a process group (its worker pool included), killed whole on timeout.
CHILD_TIMEOUT_S = 3600


def measure(impl: str, root: Path, out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [sys.executable, __file__, "--child", impl, "--root", str(root), "--out", str(out)]
    from gr_vl_verl.process_group import run_in_group

    done = run_in_group(cmd, timeout=CHILD_TIMEOUT_S, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{impl} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="2000,20000")
    parser.add_argument("--image-format", choices=("png", "jpeg"), default="png", help="source image format")
    parser.add_argument("--keep", type=Path, default=None, help="build the corpora here and keep them")
    parser.add_argument("--child", choices=IMPLS, help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run of a few seconds (CI runs it): tiny sizes, the numbers mean nothing",
    )
    args = parser.parse_args()
    if args.quick:
        args.sizes = "30"
    if args.child:
        child(args.child, args.root, args.out)
        return

    sizes = [int(s) for s in args.sizes.split(",")]
    base = args.keep or Path(tempfile.mkdtemp(prefix="gr_vl_bench_"))
    try:
        t0 = time.perf_counter()
        pool = make_images(base / "pool", max(sizes) // 3 + 1, args.image_format)
        for n in sizes:
            make_corpus(base / f"corpus_{n}", n, pool)
        print(
            f"corpora built in {time.perf_counter() - t0:.1f}s under {base} "
            f"({args.image_format} images, cpus: {os.cpu_count()})"
        )
        results: dict[tuple[str, int], dict] = {}
        print(f"{'impl':<10} {'samples':>8} {'seconds':>8} {'samples/s':>10} {'peak RSS MiB':>13} {'worker MiB':>11}")
        for n in sizes:
            for impl in IMPLS:
                r = measure(impl, base / f"corpus_{n}", base / f"out_{impl}_{n}")
                assert r["rows"] == n, r
                results[(impl, n)] = r
                print(
                    f"{impl:<10} {n:>8} {r['seconds']:>8.2f} {n / r['seconds']:>10.0f} "
                    f"{r['peak_rss_mib']:>13.0f} {r['worker_peak_rss_mib']:>11.0f}"
                )
        lo, hi = min(sizes), max(sizes)
        print("\nratios")
        for impl in IMPLS:
            ratio = results[(impl, hi)]["peak_rss_mib"] / results[(impl, lo)]["peak_rss_mib"]
            print(f"  {impl}: peak RSS {hi} / {lo} = {ratio:.2f}x" + ("  (target <= 1.2x)" if impl != "naive" else ""))
        for impl in ("stream-w1", "stream-w2"):
            for n in sizes:
                speed = results[("naive", n)]["seconds"] / results[(impl, n)]["seconds"]
                print(f"  {impl} vs naive at {n}: throughput {speed:.2f}x  (target >= 2x)")
    finally:
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
