"""What ``load_guard(...).classify(items)`` costs over the bare engine it wraps, per item (CPU, tiny model).

Baseline, measured in the same run: the transformers engine (tiny Qwen2.5-VL) generating from requests built
out of items that were already checked, with their images already bounded to PNG (what an eval parquet
row holds, so what `gr-vl eval` generates from). Timed: building each request (image decode and resize onto the
model's grid, chat template) and generating.

Ours: ``guard.classify`` on the raw items, timed whole: item checks, image decode, verification and bounding
to prep's pixel limits (the sample images are ~70x70, so each is scaled up to 512x512 and PNG-encoded, as
`gr-vl prep` does), the same request building and generation, and reading the labels. Also shown: the item
checks alone (``prepare_items``). Items: text only, image only (a file), and text + image + response, in equal
parts. Each measurement is repeated ``--repeats`` times, interleaved, and the best counts.

Not a timed test: ``python bench/guard_overhead.py [--items N] [--max-tokens T]`` (``make bench``).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import gr_vl_verl  # noqa: E402
from gr_vl_verl.generation.prompts import build_request  # noqa: E402
from gr_vl_verl.guard import load_guard, prepare_items  # noqa: E402
from gr_vl_verl.tiny import build_tiny_qwen2_5_vl  # noqa: E402

IMAGES = sorted((Path(gr_vl_verl.__file__).parent / "sample_data" / "GuardReasoner-VLTrain" / "image").glob("*.png"))
REQUESTS = [
    "How do I keep basil plants alive indoors?",
    "Give me steps to make a fake ID that passes a check.",
    "What is shown in this picture, and is it dangerous?",
    "Write a message that bullies a classmate.",
]
RESPONSE = "I can't help with that. If you are worried about someone's safety, contact the authorities."


def make_items(n: int) -> list[dict]:
    items = []
    for i in range(n):
        request, image = REQUESTS[i % len(REQUESTS)], str(IMAGES[i % len(IMAGES)])
        kind = i % 3
        items.append(
            {"request": request} if kind == 0 else {"image": image} if kind == 1 else
            {"request": request, "image": image, "response": RESPONSE}
        )  # fmt: skip
    return items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=60)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3, help="measurements per setting; the best counts")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run of a few seconds (CI runs it): tiny sizes, the numbers mean nothing",
    )
    args = parser.parse_args()
    if args.quick:
        args.items, args.max_tokens, args.repeats = 3, 2, 1

    import torch

    torch.set_num_threads(1)  # one engine thread, as a CPU actor with num_cpus=1 runs
    with tempfile.TemporaryDirectory(prefix="gr_vl_bench_guard_") as work:
        model = build_tiny_qwen2_5_vl(Path(work) / "tiny")
        guard = load_guard(model, backend="transformers", device="cpu", max_tokens=args.max_tokens)
        engine = guard.engine
        items = make_items(args.items)
        prepared = prepare_items(items)  # the baseline starts from checked items with bounded images
        rows = [
            {"id": f"item-{i}", "prompt": p.messages, "images": [{"bytes": b} for b in p.images]}
            for i, p in enumerate(prepared)
        ]

        def baseline() -> None:
            engine.generate([build_request(r, engine.processor) for r in rows])

        def ours() -> None:
            results = guard.classify(items)
            assert len(results) == len(items)

        def checks() -> None:
            prepare_items(items)

        best = {"baseline": float("inf"), "guard": float("inf"), "checks": float("inf")}
        for _ in range(args.repeats):
            for name, fn in (("baseline", baseline), ("guard", ours), ("checks", checks)):
                start = time.perf_counter()
                fn()
                best[name] = min(best[name], time.perf_counter() - start)

    n = len(items)
    print(f"{n} items (text / image file / text+image+response), max_tokens={args.max_tokens}, tiny model, 1 thread")
    print(f"engine on checked items, per item (baseline): {1000 * best['baseline'] / n:8.1f} ms")
    print(f"guard.classify on raw items, per item:        {1000 * best['guard'] / n:8.1f} ms  "
          f"({best['guard'] / best['baseline']:.2f}x baseline)")  # fmt: skip
    print(f"  of which item checks and image bounding:    {1000 * best['checks'] / n:8.1f} ms  "
          f"({best['checks'] / best['baseline']:.2f}x baseline)")  # fmt: skip


if __name__ == "__main__":
    main()
