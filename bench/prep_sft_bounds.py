"""Image cost of giving the SFT parquet its own pixel bounds: one decode for both outputs vs one decode each.

``gr-vl prep --formats sft,rl`` bounds each image twice (RL: 262,144-4,194,304 pixels; SFT: LLaMA-Factory's
1,024-589,824). It decodes and verifies each image once and scales that decode for each bound
(``normalize_image_bounds``). The baseline, ``two-decodes``, calls ``normalize_image`` once per bound, as a
pipeline that normalises per output would. ``rl-only`` is the cost of the RL output alone, for scale.

Inputs: synthetic photos-like JPEGs of 1-4 MP (the sizes that fall between the two caps and must be scaled for
SFT only). Prints seconds per 100 images and the ratio against ``two-decodes``.

    python bench/prep_sft_bounds.py [--images 20] [--repeat 2]
"""

from __future__ import annotations

import argparse
import io
import random
import time

from gr_vl_verl.data.images import (
    MAX_PIXELS,
    MIN_PIXELS,
    SFT_MAX_PIXELS,
    SFT_MIN_PIXELS,
    ImagePolicy,
    normalize_image,
    normalize_image_bounds,
)

RL = (MIN_PIXELS, MAX_PIXELS)
SFT = (SFT_MIN_PIXELS, SFT_MAX_PIXELS)


def make_jpegs(n: int, seed: int = 0) -> list[bytes]:
    from PIL import Image, ImageDraw, ImageFilter

    rng = random.Random(seed)
    out = []
    for i in range(n):
        w, h = rng.randrange(1000, 2400), rng.randrange(900, 1700)
        img = Image.effect_noise((w, h), 40).convert("RGB").filter(ImageFilter.GaussianBlur(2))
        draw = ImageDraw.Draw(img)
        for _ in range(12):
            x, y = rng.randrange(w - 200), rng.randrange(h - 200)
            draw.ellipse((x, y, x + rng.randrange(40, 400), y + rng.randrange(40, 400)), fill=(i % 256, 120, 60))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=88)
        out.append(buf.getvalue())
    return out


def one_decode(images: list[bytes], policy: ImagePolicy) -> None:
    for raw in images:
        normalize_image_bounds(raw, policy, (RL, SFT))


def two_decodes(images: list[bytes], policy: ImagePolicy) -> None:
    for raw in images:
        normalize_image(raw, policy)
        normalize_image(raw, ImagePolicy(min_pixels=SFT[0], max_pixels=SFT[1]))


def rl_only(images: list[bytes], policy: ImagePolicy) -> None:
    for raw in images:
        normalize_image(raw, policy)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run of a few seconds (CI runs it): tiny sizes, the numbers mean nothing",
    )
    args = parser.parse_args()
    if args.quick:
        args.images, args.repeat = 3, 1
    images = make_jpegs(args.images)
    policy = ImagePolicy()
    # the two paths must give the same bytes, or the comparison is meaningless
    assert normalize_image_bounds(images[0], policy, (RL, SFT)) == (
        normalize_image(images[0], policy),
        normalize_image(images[0], ImagePolicy(min_pixels=SFT[0], max_pixels=SFT[1])),
    )
    impls = {"two-decodes": two_decodes, "one-decode": one_decode, "rl-only": rl_only}
    best = {}
    for name, fn in impls.items():
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            fn(images, policy)
            times.append(time.perf_counter() - t0)
        best[name] = min(times)
    base = best["two-decodes"]
    print(f"{args.images} JPEGs of 1-4 MP, best of {args.repeat}; baseline: two-decodes")
    for name, t in best.items():
        print(f"  {name:12s} {100 * t / args.images:7.2f} s/100 images   x{t / base:.2f} of two-decodes")


if __name__ == "__main__":
    main()
