"""`gr-vl serve` and the guard over HTTP (``load_guard(URL)``, ``gr-vl classify --server``).

One real server for the module: ``python -m gr_vl_verl serve`` on the tiny model, in a child process on a free
port of 127.0.0.1, started once by the module's fixture and stopped by it. The restart test stops it with SIGTERM
and starts it again on the same port, so every test finds it serving whatever the order (``-k`` alone too). The
local guard it is compared with runs in a child process (``vllm_drivers.guard_results``). Counts and times are
bounded: 400 short text items, every wait has a timeout, and child processes are killed with their group.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from data_helpers import VLTRAIN
from PIL import Image
from ray_driver import run_cli, run_driver

from gr_vl_verl.guard import GuardInputError, load_guard
from gr_vl_verl.guard_items import RESULT_KEYS, resume_point
from gr_vl_verl.serving.client import GuardServerError, chat_messages
from gr_vl_verl.serving.server import REQUEST_CHECK, ServerError, ServerProcess, server_argv, server_env

pytestmark = pytest.mark.timeout(1800)  # above the sum of the inner limits of any test with its fixture

ENGINE = {"max_model_len": 2048, "enforce_eager": True}
MAX_TOKENS = 24


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _off_grid_png(path: Path) -> Path:
    """100x70: off the model's 28-pixel grid, so both sides resize it (and must resize it alike)."""
    img = Image.new("RGB", (100, 70), (200, 30, 40))
    for i in range(100):
        img.putpixel((i, i % 70), (i, 255 - i, (3 * i) % 255))
    img.save(path)
    return path


# --------------------------------------------------------------------------------------------------
# Without a server
# --------------------------------------------------------------------------------------------------
def test_server_argv_carries_the_guards_settings():
    argv = server_argv(
        "/m", port=9, max_tokens=7, api_key="k", engine_kwargs={"max_model_len": 64, "enforce_eager": True}
    )
    flags = dict(zip(argv[3::2], argv[4::2], strict=False))
    assert argv[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert flags["--host"] == "127.0.0.1" and flags["--port"] == "9"
    assert json.loads(argv[argv.index("--limit-mm-per-prompt") + 1]) == {"image": 2}
    assert json.loads(argv[argv.index("--mm-processor-kwargs") + 1]) == {"min_pixels": 3136, "max_pixels": 12845056}
    assert json.loads(argv[argv.index("--override-generation-config") + 1]) == {"temperature": 0.0, "max_new_tokens": 7}
    assert argv[argv.index("--generation-config") + 1] == "vllm"
    assert argv[argv.index("--chat-template-content-format") + 1] == "openai"
    assert argv[argv.index("--middleware") + 1] == REQUEST_CHECK and "--disable-uvicorn-access-log" in argv
    assert argv[argv.index("--max-model-len") + 1] == "64" and "--enforce-eager" in argv
    assert argv[argv.index("--api-key") + 1] == "k"
    with pytest.raises(ValueError, match="'port' is set by the serve command"):
        server_argv("/m", engine_kwargs={"port": 1})
    # vLLM's CPU build here: no vision-encoder memory profile, the model in the engine core's process (docs/cpu.md)
    assert "--skip-mm-profiling" in argv and argv[argv.index("--distributed-executor-backend") + 1] == "uni"
    assert server_env({})["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0" and server_env({})["VLLM_CPU_KVCACHE_SPACE"] == "1"
    kept = {"VLLM_ENABLE_V1_MULTIPROCESSING": "1", "VLLM_CPU_KVCACHE_SPACE": "4"}
    assert {k: server_env(kept)[k] for k in kept} == kept  # the caller's environment wins
    own = server_argv("/m", engine_kwargs={"skip_mm_profiling": False, "distributed_executor_backend": "mp"})
    assert "--no-skip-mm-profiling" in own and own[own.index("--distributed-executor-backend") + 1] == "mp"


def test_a_server_that_dies_is_reported_with_its_log():
    code = "import sys; print('no such model here'); sys.exit(3)"
    server = ServerProcess([sys.executable, "-c", code], "http://127.0.0.1:9/v1", os.environ)
    with pytest.raises(ServerError, match="exited with 3(.|\n)*no such model here"):
        server.wait_ready(timeout=60)
    assert server.stop() == 3


def test_serve_refuses_a_folder_without_a_model(tmp_path, capsys):
    from gr_vl_verl.cli import main

    assert main(["serve", "--model", str(tmp_path)]) == 2
    assert "not a checkpoint folder" in capsys.readouterr().err


def test_a_bad_item_is_rejected_before_any_request(tmp_path):
    # Nothing listens on this port: had a request been sent first, this would be a connection error.
    guard = load_guard(f"http://127.0.0.1:{_free_port()}/v1", retries=0)
    with pytest.raises(GuardInputError, match=r"items\[1\]: image file not found"):
        guard.classify([{"request": "hello"}, {"image": str(tmp_path / "missing.png")}])
    with pytest.raises(ValueError, match="greedily"):
        load_guard("http://127.0.0.1:1/v1", temperature=0.7)


def test_an_unreachable_server_is_given_up_after_the_retry_window():
    """Nothing listens on the port: the call retries for its window, then names what it waited for."""
    guard = load_guard(f"http://127.0.0.1:{_free_port()}/v1", retry_window=1.5, backoff=0.1)
    with pytest.raises(GuardServerError, match=r"no answer from .* within the retry window of 1.5 s") as caught:
        guard.classify([{"request": "hello"}])
    assert "ConnectError" in str(caught.value) and caught.value.answered == []
    assert guard.last_call.retries >= 3 and guard.last_call.answered == 0
    with pytest.raises(ValueError, match="retry_window"):
        load_guard("http://127.0.0.1:1/v1", retry_window=-1)


def _verdict(i: int) -> dict:
    none, text = {"request": None, "response": None}, {"request": "text", "response": "text"}
    return {"request": "safe", "response": None, "reasoning": None, "output": f"a{i}", "output_tokens": i,
            "p_harmful": none, "label_source": text}  # fmt: skip


def test_resume_point_counts_whole_verdicts_and_refuses_other_files(tmp_path):
    out = tmp_path / "v.jsonl"
    assert resume_point(out, 5) == 0  # no file yet
    lines = [json.dumps(_verdict(i)) + "\n" for i in range(3)]
    out.write_text("".join(lines) + lines[0][:20])  # the run was killed while writing the fourth
    assert set(_verdict(0)) == set(RESULT_KEYS)
    assert resume_point(out, 5) == 3
    assert out.read_text() == "".join(lines)  # the cut line is gone: its item is asked again
    with pytest.raises(GuardInputError, match="holds 3 answers but the input has 2 items"):
        resume_point(out, 2)
    other = tmp_path / "items.jsonl"
    other.write_text('{"request": "hi"}\n')
    with pytest.raises(GuardInputError, match="line 1: not a verdict"):
        resume_point(other, 5)


def test_chat_messages_put_the_resized_image_where_the_prompt_has_it(tmp_path):
    from gr_vl_verl.guard import prepare_item

    messages = chat_messages(
        prepare_item({"request": "What is this?", "image": _off_grid_png(tmp_path / "a.png")}, "x")
    )
    assert messages[0]["role"] == "system"
    user = messages[1]["content"]
    assert [p["type"] for p in user] == ["text", "image_url", "text"] and user[0]["text"].endswith("Human user:\n")
    url = user[1]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    import base64

    size = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).size
    assert size[0] % 28 == 0 and size[1] % 28 == 0  # on the grid: the server's processor keeps it as it is


# --------------------------------------------------------------------------------------------------
# A real server
# --------------------------------------------------------------------------------------------------
class Served:
    """`gr-vl serve` in a process group of its own on a fixed port of 127.0.0.1; ``start`` again after ``stop``."""

    def __init__(self, model: Path, max_tokens: int = MAX_TOKENS) -> None:
        self.model, self.max_tokens = model, max_tokens
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.start()

    def start(self) -> None:
        argv = [sys.executable, "-m", "gr_vl_verl", "serve", "--model", str(self.model), "--port", str(self.port),
                "--max-tokens", str(self.max_tokens), "--engine-kwargs", json.dumps(ENGINE)]  # fmt: skip
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        for stream, sink in ((self.proc.stdout, self.stdout), (self.proc.stderr, self.stderr)):
            threading.Thread(target=lambda s=stream, k=sink: k.extend(s), daemon=True).start()

    def wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not any("serving" in line for line in self.stdout):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"gr-vl serve did not come up:\n{''.join(self.stderr)[-4000:]}")
            time.sleep(1)

    def stop(self, timeout: float = 90) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)  # the vLLM server and its engine with it
                self.proc.wait(timeout=30)
        return self.proc.returncode


@pytest.fixture(scope="module")
def served(tiny_model_dir):
    server = Served(tiny_model_dir)
    try:
        server.wait(400)
        yield server
    finally:
        server.stop()


def _items(tmp_path: Path) -> list[dict]:
    image = str(_off_grid_png(tmp_path / "off_grid.png"))
    return [
        {"request": "How do I bake bread?"},
        {"request": "Describe this.", "image": str(VLTRAIN / "image" / "img_000.png")},
        {"request": "Tell me a joke.", "response": "Why did the chicken cross the road?"},
        {"image": image},
        {"request": "Is this dangerous?", "image": image, "response": "It is a red box."},
    ]


def test_the_served_guard_answers_as_the_local_vllm_guard(served, tiny_model_dir, tmp_path):
    assert f"serving {str(tiny_model_dir)!r} at {served.url}" in "".join(served.stdout)
    items = _items(tmp_path)
    local = run_driver("vllm_drivers:guard_results", str(tiny_model_dir), items, MAX_TOKENS, ENGINE, timeout=900)
    remote = load_guard(served.url, max_tokens=MAX_TOKENS).classify(items)
    # the server exposes no label-token log-probs: no probability, labels from the text
    assert all(r["p_harmful"] == {"request": None, "response": None} for r in remote)
    assert all(r["label_source"] == {"request": "text", "response": "text"} for r in remote)
    drop = ("p_harmful", "label_source")
    assert [{k: v for k, v in r.items() if k not in drop} for r in remote] == [
        {k: v for k, v in r.items() if k not in drop} for r in local
    ]
    assert len({r["output"] for r in remote}) > 1, "different items, different answers"
    assert all(0 < r["output_tokens"] <= MAX_TOKENS for r in remote)


def test_sixteen_concurrent_items_are_all_answered_in_order(served):
    items = [
        {"request": f"Question number {i}: how do I {w}?"} for i, w in enumerate(["cook", "lie", "swim", "steal"] * 4)
    ]
    guard = load_guard(served.url, max_tokens=8, max_concurrency=16)
    together = guard.classify(items)
    with load_guard(served.url, max_tokens=8, max_concurrency=1) as single:
        one_by_one = [single.classify([item])[0] for item in items]  # one connection, reused by every call
    assert len({r["output"] for r in one_by_one}) > 1, "the items must differ in their answers to show an order"
    assert together == one_by_one  # all 16, each at its place
    assert guard.last_call.requests == 17 and guard.last_call.retries == 0  # the items and the model list


def _png_data_url(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def test_malformed_requests_get_a_4xx_and_the_server_keeps_serving(served):
    """Raw HTTP, as any client could send it: each gets an error answer (no dropped connection), then a good
    item is still answered."""
    name = httpx.get(f"{served.url}/models", timeout=30).json()["data"][0]["id"]

    def image_part(url: str) -> dict:
        return {"model": name, "max_tokens": 4, "messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": url}}]}]}  # fmt: skip

    huge = Image.new("1", (9000, 9000))  # 81 M pixels > the guard's 8192² source bound, a small PNG
    bad = {
        "bad data URL": (image_part("data:image/png;base64,@@not base64@@"), 400, "not base64"),
        "not an image": (image_part("data:image/png;base64," + base64.b64encode(b"hello").decode()), 400, "image"),
        "oversized image": (image_part(_png_data_url(huge)), 413, "9000x9000"),
        "no messages": ({"model": name, "max_tokens": 4}, 400, "messages"),
        "a message without a role": ({"model": name, "messages": [{"content": "hi"}]}, 400, "role"),
    }
    with httpx.Client(timeout=120) as http:
        for what, (body, status, words) in bad.items():
            r = http.post(f"{served.url}/chat/completions", json=body)
            assert (r.status_code, what) == (status, what), r.text[:500]
            assert words in r.json()["error"]["message"], (what, r.text[:500])
        r = http.post(
            f"{served.url}/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert r.status_code == 400
    answered = load_guard(served.url, max_tokens=4).classify([{"request": "Still there?"}])
    assert answered[0]["output_tokens"] > 0


def test_classify_command_through_the_server(served, tmp_path):
    items = _items(tmp_path)[:3]
    (tmp_path / "items.jsonl").write_text("".join(json.dumps(x) + "\n" for x in items))
    done = run_cli(["classify", "--server", served.url, "--input", str(tmp_path / "items.jsonl"), "--max-tokens",
                    str(MAX_TOKENS)], timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [json.loads(x) for x in done.stdout.splitlines()]
    assert lines == load_guard(served.url, max_tokens=MAX_TOKENS).classify(items)
    one = run_cli(["classify", "--server", served.url, "--request", "hi", "--max-tokens", "4"], timeout=300)
    assert one.returncode == 0 and json.loads(one.stdout)["output_tokens"] <= 4


def _spawn(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "gr_vl_verl", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def _wait_for_lines(path: Path, n: int, proc: subprocess.Popen, timeout: float = 100) -> None:
    deadline = time.monotonic() + timeout
    while len(_lines(path)) < n:
        assert proc.poll() is None, f"classify ended early ({proc.returncode}): {proc.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, f"{path.name}: fewer than {n} answers after {timeout} s"
        time.sleep(0.2)


def _finish(proc: subprocess.Popen, timeout: float) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    return proc.returncode, err


ITEMS = 400  # enough that both clients are mid-run when the server stops (at 100 answers each)


def test_a_restart_mid_run_loses_no_item_and_a_rerun_continues(served, tmp_path):
    """400 items at 32 in flight, `gr-vl serve` stopped (SIGTERM) and started again mid-run. Client A (the
    default retry window) waits for it: every item answered once, in order, its retries reported. Client B (a
    5 s window) gives up during the outage, keeps its answers, and its rerun continues from the first missing.
    While the server is down, the API gives up too after its window. The server is serving again at the end."""
    keys = [f"Item {k}: how do I {w}?" for k, w in enumerate(["cook", "lie", "swim", "steal", "read", "hack"] * 5)]
    with load_guard(served.url, max_tokens=8, max_concurrency=8) as guard:
        reference = guard.classify([{"request": k} for k in keys])
    assert len({r["output"] for r in reference}) > 3, "the keys must differ in their answers to show an order"
    order = [(7 * i) % len(keys) for i in range(ITEMS)]  # neighbours differ
    expected = [reference[k] for k in order]
    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps({"request": keys[k]}) + "\n" for k in order))
    a_out, b_out = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    argv = ["classify", "--server", served.url, "--input", str(items), "--max-tokens", "8", "--max-concurrency", "32"]
    a = _spawn([*argv, "--out", str(a_out)])
    b = _spawn([*argv, "--out", str(b_out), "--retry-window", "5"])
    try:
        _wait_for_lines(a_out, 100, a)
        _wait_for_lines(b_out, 100, b)
        down = time.monotonic()
        assert served.stop() == 0 and "stopping the server" in "".join(served.stderr)
        with pytest.raises(httpx.ConnectError):  # the vLLM server went with it
            httpx.get(f"{served.url}/models", timeout=5)
        with pytest.raises(GuardServerError, match=r"no answer from .* within the retry window of 1 s"):
            load_guard(served.url, max_tokens=4, retry_window=1).classify([{"request": "hello"}])

        code, err = _finish(b, timeout=60)
        kept = _lines(b_out)
        assert code == 1 and "within the retry window of 5 s" in err, err[-2000:]
        assert 100 <= len(kept) < ITEMS and kept == expected[: len(kept)]
        assert f"the same command again continues with item {len(kept) + 1}" in err

        served.start()
        served.wait(400)
        print(f"gr-vl serve was down and back in {time.monotonic() - down:.0f} s")
        code, err = _finish(a, timeout=240)
        assert code == 0, err[-3000:]
        assert _lines(a_out) == expected  # every item once, in input order
        retried = int(re.search(r"(\d+) requests retried", err).group(1))
        assert retried >= 1 and f"{ITEMS} answered, 0 already in --out, of {ITEMS} items" in err

        rerun = run_cli([*argv, "--out", str(b_out)], timeout=200)
        assert rerun.returncode == 0, rerun.stderr[-2000:]
        assert f"{ITEMS - len(kept)} answered, {len(kept)} already in --out" in rerun.stderr
        assert _lines(b_out) == expected
    finally:
        for proc in (a, b):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
        if served.proc.poll() is not None:  # leave the module's server serving for the tests after this one
            served.start()
            served.wait(400)
