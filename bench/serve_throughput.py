"""The guard over HTTP (``gr-vl serve`` + ``load_guard(URL)``) against the in-process vLLM guard, on this machine.

Baseline, measured in the same run on the same items (text / image / text+image+response in equal parts, the
tiny Qwen2.5-VL, greedy, the same max_tokens): ``load_guard(model, backend="vllm")`` in a process of its own,
``classify`` called with 8 items at a time (``batch_size=8``), so 8 items are in flight as on the server side.
An item's latency there is its batch's time.

Ours: ``gr-vl serve`` on the same model (a child process on 127.0.0.1), and ``load_guard(URL,
max_concurrency=8).classify(items)``: items/s of the whole call, latency of each HTTP request (the client's
image resize and encoding excluded; they are timed in the whole call). Both sides warm up on the items first
and start their engines outside the timing. The goal: items/s through the server >= 0.9x the baseline's.

Not a timed test: ``python bench/serve_throughput.py [--items N] [--max-tokens T]``; ``--quick`` runs a few items
(``make test`` runs it so a broken bench fails CI).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


ENGINE_KWARGS = {"enforce_eager": True, "max_model_len": 2048}
CONCURRENCY = 8
# The same items as the in-process guard bench (guard_overhead.py, beside this file), numbered below.
from guard_overhead import IMAGES, REQUESTS, RESPONSE  # noqa: E402

_LOCAL = r"""
import json, sys, time
from gr_vl_verl.guard import load_guard
model, items, engine = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[5])
max_tokens, size = int(sys.argv[3]), int(sys.argv[4])
guard = load_guard(model, backend="vllm", max_tokens=max_tokens, batch_size=size, engine_kwargs=engine)
guard.classify(items)  # warm-up
latencies, start = [], time.perf_counter()
for i in range(0, len(items), size):
    t = time.perf_counter()
    guard.classify(items[i : i + size])
    latencies += [time.perf_counter() - t] * len(items[i : i + size])
print("@@" + json.dumps({"seconds": time.perf_counter() - start, "latencies": latencies}), flush=True)
"""


def make_items(n: int) -> list[dict]:
    items = []
    for i in range(n):
        request, image = REQUESTS[i % len(REQUESTS)], str(IMAGES[i % len(IMAGES)])
        kind = i % 3
        items.append(
            {"request": f"{i}. {request}"} if kind == 0 else {"image": image} if kind == 1 else
            {"request": request, "image": image, "response": RESPONSE}
        )  # fmt: skip
    return items


def local(model: Path, items: list[dict], max_tokens: int) -> dict:
    argv = [sys.executable, "-c", _LOCAL, str(model), json.dumps(items), str(max_tokens), str(CONCURRENCY),
            json.dumps(ENGINE_KWARGS)]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=800)
    lines = [x for x in done.stdout.splitlines() if x.startswith("@@")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"the in-process guard failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][2:])


def served(model: Path, items: list[dict], max_tokens: int) -> dict:
    from gr_vl_verl.serving.client import RemoteGuard
    from gr_vl_verl.serving.server import start_server

    class TimedGuard(RemoteGuard):
        latencies: list[float] = []

        def _ask(self, http, model, body, where):  # type: ignore[no-untyped-def]
            t = time.perf_counter()
            answer = super()._ask(http, model, body, where)
            self.latencies.append(time.perf_counter() - t)
            return answer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = start_server(str(model), port=port, max_tokens=max_tokens, engine_kwargs=ENGINE_KWARGS)
    try:
        server.wait_ready(600)
        guard = TimedGuard(server.base_url, max_tokens=max_tokens, max_concurrency=CONCURRENCY)
        guard.classify(items)  # warm-up
        guard.latencies.clear()
        start = time.perf_counter()
        results = guard.classify(items)
        seconds = time.perf_counter() - start
        assert len(results) == len(items)
        return {"seconds": seconds, "latencies": list(guard.latencies)}
    finally:
        server.stop()


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=96)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--quick", action="store_true", help="a few items (CI runs it): the numbers mean little")
    args = parser.parse_args()
    if args.quick:
        args.items, args.max_tokens = 8, 4
    from gr_vl_verl.tiny import build_tiny_qwen2_5_vl

    items = make_items(args.items)
    with tempfile.TemporaryDirectory(prefix="gr_vl_bench_serve_") as work:
        model = build_tiny_qwen2_5_vl(Path(work) / "tiny")
        base = local(model, items, args.max_tokens)
        ours = served(model, items, args.max_tokens)
    n = len(items)
    print(f"{n} items (text / image / text+image+response), max_tokens={args.max_tokens}, tiny model, "
          f"{CONCURRENCY} in flight, vLLM {'CPU' if _cpu() else 'GPU'} build")  # fmt: skip
    rows = [("in-process vLLM guard (baseline)", base), ("gr-vl serve + load_guard(URL)", ours)]
    for name, m in rows:
        lat = m["latencies"]
        print(f"{name:34s} {n / m['seconds']:7.2f} items/s  p50 {1000 * _pct(lat, 0.5):7.1f} ms  "
              f"p95 {1000 * _pct(lat, 0.95):7.1f} ms")  # fmt: skip
    ratio = base["seconds"] / ours["seconds"]
    p50 = _pct(ours["latencies"], 0.5) / _pct(base["latencies"], 0.5)
    p95 = _pct(ours["latencies"], 0.95) / _pct(base["latencies"], 0.95)
    print(f"served vs baseline: {ratio:.2f}x items/s (goal >= 0.90x), {p50:.2f}x p50, {p95:.2f}x p95 latency")


def _cpu() -> bool:
    from gr_vl_verl.cpu.vllm_dist import vllm_is_cpu_build

    return vllm_is_cpu_build()


if __name__ == "__main__":
    main()
