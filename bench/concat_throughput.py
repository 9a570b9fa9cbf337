"""Throughput and peak memory of safety-aware concatenation: streaming `run_augment` vs an in-memory script.

Builds synthetic RL parquets (2k and 20k rows by default; half of the rows carry an image of 512-640 pixels a
side, as prepared images are) and augments each at the paper's ratio (20 % of the output) with

* ``stream``: ``gr_vl_verl.data.concat.run_augment`` (copies rows as it reads them, spills the rows a pair
  needs to bucket files, merges one bucket at a time);
* ``naive``: read the whole table into Python, build the concatenated rows with the same ``concat_row``, write
  one table (what a one-off script does). Same rows out, so the difference is the data handling.

Each run is a fresh subprocess that reports its peak RSS (``getrusage``), its wall time and its CPU time (all
threads; steadier than wall time on a shared machine). Printed: rows/s (input rows + concatenated rows per
second of wall time), concatenated rows/s, and the ratios peak RSS at the largest size / at the smallest
(target for ``stream``: <= 1.2x) and ``stream`` vs ``naive`` time.

    python bench/concat_throughput.py [--sizes 2000,20000] [--ratio 0.2] [--keep DIR]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import resource
import shutil
import sys
import tempfile
import time
import zlib
from pathlib import Path

IMPLS = ("stream", "naive")
ROOT = Path(__file__).resolve().parents[1]


def make_images(n: int, seed: int = 0) -> list[bytes]:
    """Distinct PNGs within the paper's pixel bounds (512x512 .. 640x640), about 100 KB each (a noisy patch
    keeps them from compressing away, as photos do not)."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    out = []
    for i in range(n):
        w, h = rng.randrange(512, 641), rng.randrange(512, 641)
        img = Image.new("RGB", (w, h), tuple(rng.randrange(256) for _ in range(3)))
        draw = ImageDraw.Draw(img)
        for _ in range(6):
            x, y = rng.randrange(w - 60), rng.randrange(h - 60)
            draw.rectangle((x, y, x + rng.randrange(20, 200), y + rng.randrange(20, 200)), fill=(i % 256, 90, 160))
        img.paste(Image.effect_noise((180, 180), 60).convert("RGB"), (rng.randrange(w - 180), rng.randrange(h - 180)))
        buf = io.BytesIO()
        img.save(buf, format="PNG", compress_level=6)
        out.append(buf.getvalue())
    return out


def unique_png(png: bytes, tag: int) -> bytes:
    """The same picture with a distinct byte string: a private ancillary chunk after IHDR (decoders skip it).

    Without it, rows sharing a pool image would be dictionary-encoded by parquet and the files would not
    grow with the row count as real data does.
    """
    body = b"grVl" + tag.to_bytes(8, "big")  # chunk type (lower-case first letter: ancillary) + data
    chunk = len(body[4:]).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")
    at = 8 + 25  # signature + IHDR (length, type, 13 data bytes, CRC)
    return png[:at] + chunk + png[at:]


def make_rl(path: Path, n: int, pool: list[bytes]) -> None:
    """``n`` RL rows: text, image-only and text-image, both labels, with and without responses."""
    sys.path.insert(0, str(ROOT))
    from gr_vl_verl.data.records import GuardSample, infer_modality
    from gr_vl_verl.data.schemas import RL_SCHEMA
    from gr_vl_verl.data.writers import AtomicParquetWriter, RowOptions, rl_row

    with AtomicParquetWriter(path, RL_SCHEMA) as writer:
        for i in range(n):
            images = (unique_png(pool[i % len(pool)], i),) if i % 2 else ()
            request = "" if i % 4 == 1 else f"Sample request number {i}: " + "please explain this topic. " * 3
            response = None if i % 3 == 0 else "Here is a considered, careful answer. " * 4
            p, r = ("harmful" if i % 5 == 0 else "unharmful"), None
            if response is not None:
                r = "harmful" if i % 7 == 0 else "unharmful"
            sample = GuardSample(f"s{i:06d}", "bench", infer_modality(request, len(images)), request, response,
                                 images, p, r)  # fmt: skip
            writer.write(rl_row(sample, i, RowOptions()))


# --------------------------------------------------------------------------------------------------
# One measured run (in a child process)
# --------------------------------------------------------------------------------------------------
def run_stream(data: Path, out: Path, ratio: float) -> tuple[int, int]:
    from gr_vl_verl.data.concat import ConcatConfig, run_augment

    summary = run_augment(data, out, ConcatConfig(ratio=ratio))
    return summary.rows_in, summary.concat_rows


def run_naive(data: Path, out: Path, ratio: float) -> tuple[int, int]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from gr_vl_verl.data.concat import ConcatConfig, concat_id, concat_row, part_from_row, plan_pairs
    from gr_vl_verl.data.schemas import RL_SCHEMA

    config = ConcatConfig(ratio=ratio)
    rows = pq.read_table(data).to_pylist()  # everything, images included
    parts = [part_from_row(r) for r in rows]
    n = len(rows)
    new = [
        concat_row(parts[a], parts[b], concat_id(config.seed, j), n + j, config)
        for j, (a, b) in enumerate(plan_pairs(n, config))
    ]
    pq.write_table(pa.Table.from_pylist(rows + new, schema=RL_SCHEMA), out, compression="zstd")
    return n, len(new)


def _cpu_seconds() -> float:
    """User + system time of this process, all threads: less sensitive than wall time to a busy machine."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def child(impl: str, data: Path, out: Path, ratio: float) -> None:
    # Import first: the timer measures the work, not start-up.
    import PIL.Image  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    import gr_vl_verl.data.concat  # noqa: F401

    start, cpu_start = time.perf_counter(), _cpu_seconds()
    rows_in, concat = (run_naive if impl == "naive" else run_stream)(data, out, ratio)
    seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu_start
    print(
        json.dumps(
            {
                "rows_in": rows_in,
                "concat": concat,
                "seconds": seconds,
                "cpu_seconds": cpu,
                "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # KiB on Linux
            }
        )
    )


#: A measured child's time limit; it leads a process group (its worker pool included), killed whole on timeout.
CHILD_TIMEOUT_S = 3600


def measure(impl: str, data: Path, out: Path, ratio: float) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, __file__, "--child", impl, "--data", str(data), "--out", str(out), "--ratio", str(ratio)]
    from gr_vl_verl.process_group import run_in_group

    done = run_in_group(cmd, timeout=CHILD_TIMEOUT_S, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{impl} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="2000,20000")
    parser.add_argument("--ratio", type=float, default=0.2)
    parser.add_argument("--impls", default=",".join(IMPLS), help=f"comma list of {', '.join(IMPLS)}")
    parser.add_argument("--keep", type=Path, default=None, help="build the inputs here and keep them")
    parser.add_argument("--child", choices=IMPLS, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run of a few seconds (CI runs it): tiny sizes, the numbers mean nothing",
    )
    args = parser.parse_args()
    if args.quick:
        args.sizes = "40"
    if args.child:
        child(args.child, args.data, args.out, args.ratio)
        return

    sizes = [int(s) for s in args.sizes.split(",")]
    impls = [i for i in args.impls.split(",") if i]
    base = args.keep or Path(tempfile.mkdtemp(prefix="gr_vl_bench_concat_"))
    base.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        pool = make_images(200)
        for n in sizes:
            make_rl(base / f"rl_{n}.parquet", n, pool)
        mib = {n: (base / f"rl_{n}.parquet").stat().st_size / 2**20 for n in sizes}
        print(f"inputs built in {time.perf_counter() - t0:.1f}s under {base} (cpus: {os.cpu_count()})")
        print("  " + ", ".join(f"{n} rows: {mib[n]:.0f} MiB" for n in sizes))
        results: dict[tuple[str, int], dict] = {}
        head = (
            f"{'impl':<8} {'rows in':>8} {'concat':>7} {'seconds':>8} {'cpu s':>7} {'rows/s':>8} {'concat/s':>9} "
            f"{'peak MiB':>9}"
        )
        print(head)
        for n in sizes:
            for impl in impls:
                r = measure(impl, base / f"rl_{n}.parquet", base / f"out_{impl}_{n}.parquet", args.ratio)
                results[(impl, n)] = r
                total = r["rows_in"] + r["concat"]
                print(
                    f"{impl:<8} {r['rows_in']:>8} {r['concat']:>7} {r['seconds']:>8.1f} {r['cpu_seconds']:>7.1f} "
                    f"{total / r['seconds']:>8.0f} "
                    f"{r['concat'] / r['seconds']:>9.1f} {r['peak_rss_mib']:>9.0f}"
                )
        lo, hi = min(sizes), max(sizes)
        print("\nratios")
        for impl in impls:
            ratio = results[(impl, hi)]["peak_rss_mib"] / results[(impl, lo)]["peak_rss_mib"]
            target = "  (target <= 1.2x)" if impl == "stream" else ""
            print(f"  {impl}: peak RSS {hi} / {lo} = {ratio:.2f}x{target}")
        if set(IMPLS) <= set(impls):
            for n in sizes:
                naive, stream = results[("naive", n)], results[("stream", n)]
                speed = naive["seconds"] / stream["seconds"]
                cpu = naive["cpu_seconds"] / stream["cpu_seconds"]
                mem = naive["peak_rss_mib"] / stream["peak_rss_mib"]
                print(
                    f"  stream vs naive at {n}: throughput {speed:.2f}x (wall), {cpu:.2f}x (cpu); "
                    f"peak RSS naive / stream {mem:.2f}x"
                )
    finally:
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
