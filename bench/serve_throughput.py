"""The guard over HTTP (``gr-vl serve`` + ``load_guard(URL)``) against the in-process vLLM guard, on this machine,
at 1, 8 and 32 items in flight, and where the served guard's time goes.

Baseline, measured in the same run on the same items (text / image / text+image+response in equal parts, the
tiny Qwen2.5-VL, greedy, the same max_tokens): ``load_guard(model, backend="vllm")`` in a process of its own,
``classify`` called with C items at a time (``batch_size=C``), so C items are in flight as on the server side.
An item's latency there is its batch's time.

Ours: ``gr-vl serve``'s server on the same model (a child process on 127.0.0.1) and ``load_guard(URL,
max_concurrency=C).classify(items)``: items/s of the whole call, latency of each HTTP request (the client's
image resize and encoding excluded; they are timed in the whole call). Both sides warm up on the items first
and start their engines outside the timing.

Where the time goes (the served side at each C): CPU seconds of the client process, of vLLM's API server process
(HTTP, JSON, chat rendering, image decoding and processing) and of its engine process(es), from ``psutil``; the
client's request building (image resize, PNG, base64) timed alone; and the same run at C=8 without keep-alive
(a new TCP connection per request) to show what reusing connections saves.

Not a timed test: ``python bench/serve_throughput.py [--items N] [--max-tokens T]``; ``--quick`` runs a few items.
Every child has a time limit and is killed with its process group.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


ENGINE_KWARGS = {"enforce_eager": True, "max_model_len": 2048}
CONCURRENCY = (1, 8, 32)
LOCAL_TIMEOUT_S = 900
# The same items as the in-process guard bench (guard_overhead.py, beside this file), numbered below.
from guard_overhead import IMAGES, REQUESTS, RESPONSE  # noqa: E402

_LOCAL = r"""
import json, sys, time, psutil
from gr_vl_verl.guard import load_guard
model, items, engine = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[5])
max_tokens, sizes = int(sys.argv[3]), json.loads(sys.argv[4])
guard = load_guard(model, backend="vllm", max_tokens=max_tokens, batch_size=max(sizes), engine_kwargs=engine)
guard.classify(items)  # warm-up
me = psutil.Process()
out = {}
for size in sizes:
    cpu = {p.pid: sum(p.cpu_times()[:2]) for p in [me, *me.children(recursive=True)]}
    latencies, start = [], time.perf_counter()
    for i in range(0, len(items), size):
        t = time.perf_counter()
        guard.classify(items[i : i + size])
        latencies += [time.perf_counter() - t] * len(items[i : i + size])
    seconds = time.perf_counter() - start
    after = {p.pid: sum(p.cpu_times()[:2]) for p in [me, *me.children(recursive=True)]}
    used = {"guard process": after[me.pid] - cpu[me.pid],
            "engine": sum(v - cpu.get(k, 0.0) for k, v in after.items() if k != me.pid)}
    out[size] = {"seconds": seconds, "latencies": latencies, "cpu": used}
print("@@" + json.dumps(out), flush=True)
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


def local(model: Path, items: list[dict], max_tokens: int) -> dict[int, dict]:
    argv = [sys.executable, "-c", _LOCAL, str(model), json.dumps(items), str(max_tokens), json.dumps(CONCURRENCY),
            json.dumps(ENGINE_KWARGS)]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=LOCAL_TIMEOUT_S)
    finally:
        if proc.poll() is None:  # the engine's processes are in its group
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    lines = [x for x in out.splitlines() if x.startswith("@@")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"the in-process guard failed:\n{err[-3000:]}")
    return {int(k): v for k, v in json.loads(lines[-1][2:]).items()}


def served(model: Path, items: list[dict], max_tokens: int) -> dict[object, dict]:
    import psutil

    from gr_vl_verl.guard_items import prepare_items
    from gr_vl_verl.serving.client import RemoteGuard
    from gr_vl_verl.serving.server import start_server

    class TimedGuard(RemoteGuard):
        latencies: list[float] = []

        def _send(self, http, method, path, body, where, stop, stats):  # type: ignore[no-untyped-def]
            t = time.perf_counter()
            answer = super()._send(http, method, path, body, where, stop, stats)
            self.latencies.append(time.perf_counter() - t)
            return answer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = start_server(str(model), port=port, max_tokens=max_tokens, engine_kwargs=ENGINE_KWARGS)
    me = psutil.Process()

    def cpu() -> dict[str, float]:
        api = psutil.Process(server.proc.pid)
        return {
            "client": sum(me.cpu_times()[:2]),
            "API server": sum(api.cpu_times()[:2]),
            "engine": sum(sum(p.cpu_times()[:2]) for p in api.children(recursive=True)),
        }

    def timed(guard: TimedGuard) -> dict:
        guard.latencies.clear()
        before = cpu()
        start = time.perf_counter()
        results = guard.classify(items)
        seconds = time.perf_counter() - start
        after = cpu()
        assert len(results) == len(items) and guard.last_call.retries == 0
        used = {k: after[k] - before[k] for k in before}
        return {"seconds": seconds, "latencies": list(guard.latencies), "cpu": used}

    out: dict[object, dict] = {}
    try:
        server.wait_ready(600)
        prepared = prepare_items(items)
        with TimedGuard(server.base_url, max_tokens=max_tokens, max_concurrency=8) as warm:
            warm.classify(items)  # warm-up
            start = time.perf_counter()
            for item in prepared:
                warm._body(item, max_tokens)
            out["encode"] = {"seconds": time.perf_counter() - start}
        for c in CONCURRENCY:
            with TimedGuard(server.base_url, max_tokens=max_tokens, max_concurrency=c) as guard:
                guard.classify(items[: 2 * c])  # its connections open outside the timing
                out[c] = timed(guard)
        # A new connection per request: the client's pool keeps none alive.
        with TimedGuard(server.base_url, max_tokens=max_tokens, max_concurrency=8) as guard:
            import httpx

            limits = httpx.Limits(max_connections=8, max_keepalive_connections=0)
            guard._http = httpx.Client(timeout=guard.timeout, limits=limits)
            out["no keep-alive, 8"] = timed(guard)
        return out
    finally:
        server.stop()


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _cpu_line(used: dict[str, float], n: int) -> str:
    return ", ".join(f"{k} {1000 * v / n:.1f}" for k, v in used.items())


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
          f"vLLM {'CPU' if _cpu() else 'GPU'} build, {os.cpu_count()} CPUs")  # fmt: skip
    print(
        f"client request building (resize, PNG, base64), one thread: {1000 * ours['encode']['seconds'] / n:.2f} ms/item"
    )
    for c in CONCURRENCY:
        b, o = base[c], ours[c]
        for name, m in ((f"in-process vLLM guard, batch {c}", b), (f"gr-vl serve + load_guard(URL), {c} in flight", o)):
            lat = m["latencies"]
            print(f"  {name:44s} {n / m['seconds']:7.2f} items/s  p50 {1000 * _pct(lat, 0.5):7.1f} ms  "
                  f"p95 {1000 * _pct(lat, 0.95):7.1f} ms  CPU ms/item: {_cpu_line(m['cpu'], n)}")  # fmt: skip
        print(f"concurrency {c:2d}: served vs in-process {b['seconds'] / o['seconds']:.2f}x items/s")
    k = ours["no keep-alive, 8"]
    print(f"  without keep-alive, 8 in flight: {n / k['seconds']:7.2f} items/s, CPU ms/item: {_cpu_line(k['cpu'], n)}")


def _cpu() -> bool:
    from gr_vl_verl.cpu.vllm_dist import vllm_is_cpu_build

    return vllm_is_cpu_build()


if __name__ == "__main__":
    main()
