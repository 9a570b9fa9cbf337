"""`gr-vl serve` and the guard over HTTP (``load_guard(URL)``, ``gr-vl classify --server``).

One real server for the module: ``python -m gr_vl_verl serve`` on the tiny model, in a child process on a free
port of 127.0.0.1, stopped with SIGTERM by the last test (which checks that stop) or by the fixture. The local
guard it is compared with runs in a child process too (``vllm_drivers.guard_results``).
"""

from __future__ import annotations

import io
import json
import os
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
from gr_vl_verl.serving.client import GuardServerError, chat_messages
from gr_vl_verl.serving.server import ServerError, ServerProcess, server_argv

pytestmark = pytest.mark.timeout(1500)

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
    assert argv[argv.index("--max-model-len") + 1] == "64" and "--enforce-eager" in argv
    assert argv[argv.index("--api-key") + 1] == "k"
    with pytest.raises(ValueError, match="'port' is set by the serve command"):
        server_argv("/m", engine_kwargs={"port": 1})


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
    def __init__(self, model: Path) -> None:
        self.port = _free_port()
        argv = [sys.executable, "-m", "gr_vl_verl", "serve", "--model", str(model), "--port", str(self.port),
                "--max-tokens", str(MAX_TOKENS), "--engine-kwargs", json.dumps(ENGINE)]  # fmt: skip
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        for stream, sink in ((self.proc.stdout, self.stdout), (self.proc.stderr, self.stderr)):
            threading.Thread(target=lambda s=stream, k=sink: k.extend(s), daemon=True).start()
        self.url = f"http://127.0.0.1:{self.port}/v1"

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
                self.proc.kill()
                self.proc.wait(timeout=30)
        return self.proc.returncode


@pytest.fixture(scope="module")
def served(tiny_model_dir):
    server = Served(tiny_model_dir)
    try:
        server.wait(600)
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
    one_by_one = load_guard(served.url, max_tokens=8, max_concurrency=1).classify(items[:4])
    assert len(together) == 16 and all(r["output_tokens"] > 0 for r in together)
    assert together[:4] == one_by_one


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


def test_a_stopped_server_gives_a_clear_error_after_the_retries(served):
    """Last, as it stops the module's server: SIGTERM stops `gr-vl serve` cleanly, then the client gives up."""
    guard = load_guard(served.url, max_tokens=4, retries=2, backoff=0.2, timeout=10)
    assert len(guard.classify([{"request": "hi"}])) == 1
    assert served.stop() == 0
    assert "stopping the server" in "".join(served.stderr)
    with pytest.raises(httpx.ConnectError):  # the vLLM child is gone with it
        httpx.get(f"{served.url}/models", timeout=5)
    start = time.monotonic()
    with pytest.raises(GuardServerError, match=r"items\[[01]\]: no answer from .* after 3 attempts"):
        guard.classify([{"request": "hello"}, {"request": "again"}])
    assert time.monotonic() - start < 30
