"""vLLM's OpenAI-compatible server, started as a child process with the guard's settings (``gr-vl serve``).

The server must answer what the in-process guard answers (``guard.load_guard(..., backend="vllm")``), so its
flags mirror ``generation.engines.vllm_engine_kwargs`` and the guard's decoding:

- ``--limit-mm-per-prompt {"image": 2}``: the images per prompt generation reserves room for;
- ``--mm-processor-kwargs``: the evaluation pixel bounds the guard hands its processor;
- ``--generation-config vllm`` and ``--override-generation-config {"temperature": 0}``: a checkpoint's own
  ``generation_config.json`` (Qwen2.5-VL's has ``repetition_penalty``, ``top_k`` and ``temperature``) would
  otherwise become the server's default sampling; the guard's is plain greedy;
- ``--chat-template-content-format openai``: images stay where the guard's prompt puts them (after
  ``Human user:``); vLLM's ``string`` format would move every image placeholder to the start of the turn;
- ``--middleware gr_vl_verl.serving.server.RequestCheck``: a malformed request gets a 4xx and an answer
  (vLLM 0.24 drops the connection on some, e.g. an image data URL that is not an image);
- ``--disable-uvicorn-access-log``: no log line per request on a server that answers hundreds a second.

This module imports neither torch nor vLLM: the server runs in its own interpreter.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from typing import IO, Any

from gr_vl_verl.data.images import ImagePolicy
from gr_vl_verl.generation.engines import DEFAULT_IMAGE_LIMIT

SERVER_MODULE = "vllm.entrypoints.openai.api_server"
#: Flags the guard's answers depend on; --engine-kwargs may not replace them.
FIXED_FLAGS = ("model", "host", "port", "served_model_name", "generation_config", "chat_template_content_format",
               "middleware")  # fmt: skip
#: The ASGI middleware the server runs in front of vLLM's routes (below).
REQUEST_CHECK = "gr_vl_verl.serving.server.RequestCheck"
#: The largest request body the server reads (an image over the pixel bound is refused long before).
MAX_BODY_BYTES = 64 * 1024 * 1024


class ServerError(RuntimeError):
    """The server did not come up, or died; the message carries the end of its log."""


def server_argv(
    model: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    served_model_name: str | None = None,
    max_tokens: int | None = None,
    api_key: str | None = None,
    engine_kwargs: Mapping[str, Any] | None = None,
    image_policy: ImagePolicy | None = None,
) -> list[str]:
    """The server's command line. ``engine_kwargs`` are vLLM engine arguments by their Python names
    (``{"max_model_len": 2048, "enforce_eager": True}``), as ``--engine-kwargs`` gives them to ``vllm.LLM``."""
    from gr_vl_verl.models.detect import family_or_default
    from gr_vl_verl.models.families import image_policy as family_policy

    policy = image_policy or family_policy(family_or_default(model))
    override: dict[str, Any] = {"temperature": 0.0}
    if max_tokens is not None:
        override["max_new_tokens"] = max_tokens
    options: dict[str, Any] = {
        "limit_mm_per_prompt": {"image": DEFAULT_IMAGE_LIMIT},
        "mm_processor_kwargs": {"min_pixels": policy.min_pixels, "max_pixels": policy.max_pixels},
        "seed": 0,
        "override_generation_config": override,
    }
    from gr_vl_verl.cpu.vllm_dist import cpu_engine_defaults, vllm_is_cpu_build

    if vllm_is_cpu_build():
        # vLLM's server keeps its engine core in a process of its own; with ``server_env``'s
        # VLLM_ENABLE_V1_MULTIPROCESSING=0 the model runs in that process instead of a third one (docs/cpu.md).
        options.update(cpu_engine_defaults(int((engine_kwargs or {}).get("tensor_parallel_size", 1))))
    for key, value in (engine_kwargs or {}).items():
        if key in FIXED_FLAGS or key == "api_key":
            raise ValueError(f"engine_kwargs: {key!r} is set by the serve command itself")
        options[key] = value
    argv = [sys.executable, "-m", SERVER_MODULE, "--model", model, "--host", host, "--port", str(port)]
    argv += ["--served-model-name", served_model_name or model, "--generation-config", "vllm"]
    argv += ["--chat-template-content-format", "openai", "--middleware", REQUEST_CHECK, "--disable-uvicorn-access-log"]
    for key, value in options.items():
        argv += _flag(key, value)
    if api_key:
        argv += ["--api-key", api_key]
    return argv


def _flag(key: str, value: Any) -> list[str]:
    """One engine argument as vLLM's CLI spells it: ``--max-model-len 2048``, ``--enforce-eager``, JSON dicts."""
    name = "--" + key.replace("_", "-")
    if value is True:
        return [name]
    if value is False:
        return ["--no-" + key.replace("_", "-")]
    if value is None:
        return []
    if isinstance(value, dict | list):
        return [name, json.dumps(value)]
    return [name, str(value)]


def server_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The child's environment: on vLLM's CPU build a 1 GiB KV cache unless ``VLLM_CPU_KVCACHE_SPACE`` is set
    (vLLM's own default, most of the machine's memory, refuses to start beside anything else), and the model in the
    engine core's process (``cpu_engine_env``) unless ``VLLM_ENABLE_V1_MULTIPROCESSING`` is set."""
    from gr_vl_verl.cpu.vllm_dist import cpu_engine_env, vllm_is_cpu_build

    env = dict(os.environ if base is None else base)
    if vllm_is_cpu_build():
        env.update(cpu_engine_env(env))
    return env


class ServerProcess:
    """A running server: its output goes to ``echo`` (if any) and its last lines are kept for errors."""

    def __init__(self, argv: list[str], base_url: str, env: Mapping[str, str], echo: IO[str] | None = None) -> None:
        self.base_url = base_url
        self.tail: collections.deque[str] = collections.deque(maxlen=40)
        # A session of its own: a Ctrl-C in the terminal reaches us, and we stop the server in order.
        self.proc = subprocess.Popen(
            argv, env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        self._reader = threading.Thread(target=self._pump, args=(echo,), daemon=True)
        self._reader.start()

    def _pump(self, echo: IO[str] | None) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.tail.append(line.rstrip("\n"))
            if echo is not None:
                echo.write(line)
                echo.flush()

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(list(self.tail)[-lines:])

    def wait_ready(self, timeout: float = 600.0, api_key: str | None = None) -> str:
        """Poll ``/v1/models`` until it answers; the served model name. A dead or silent server raises
        :class:`ServerError` with the end of its log."""
        import httpx

        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._reader.join(timeout=5)
                raise ServerError(f"the server exited with {self.proc.returncode}; its log ends:\n{self.log_tail()}")
            try:
                r = httpx.get(f"{self.base_url}/models", headers=headers, timeout=5.0)
                if r.status_code == 200:
                    return str(r.json()["data"][0]["id"])
            except httpx.TransportError:
                pass
            time.sleep(1.0)
        raise ServerError(f"the server did not answer within {timeout:.0f} s; its log ends:\n{self.log_tail()}")

    def stop(self, grace: float = 30.0) -> int:
        """SIGTERM (vLLM shuts its engine down on it), then SIGKILL to the whole group after ``grace`` seconds."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        self._reader.join(timeout=5)
        return self.proc.returncode


def start_server(
    model: str, *, host: str = "127.0.0.1", port: int = 8000, echo: IO[str] | None = None, **options: Any
) -> ServerProcess:
    """Start the server (it is not ready yet: call :meth:`ServerProcess.wait_ready`)."""
    argv = server_argv(model, host=host, port=port, **options)
    url_host = f"[{host}]" if ":" in host else host
    return ServerProcess(argv, f"http://{url_host}:{port}/v1", server_env(), echo=echo)


# --------------------------------------------------------------------------------------------------
# In the server's process
# --------------------------------------------------------------------------------------------------
class RequestCheck:
    """ASGI middleware in front of vLLM's routes (``--middleware``): a malformed chat request gets a JSON 4xx.

    vLLM 0.24 answers most malformed requests with a 400, but a data URL that decodes to no image raises out of
    its route and the connection is dropped without an answer (a client then cannot tell a bad request from a
    server that went away). So a chat request's body is read here first (at most ``MAX_BODY_BYTES``: 413), each
    ``data:`` image is decoded and its size read from its header (a corrupt one: 400; one over the guard's
    ``max_source_pixels``: 413, before vLLM decodes its pixels), and an exception that still escapes a route
    before it answered gets an answer naming it: 400 for what a malformed request raises (ValueError, TypeError,
    KeyError, OSError), 503 for the rest (vLLM shutting down raises RuntimeError), which clients retry.
    Other routes pass untouched."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.max_pixels = ImagePolicy.evaluation().max_source_pixels

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].endswith("/chat/completions"):
            await self.app(scope, receive, send)
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > MAX_BODY_BYTES:
                await _answer(send, 413, f"the request body is over {MAX_BODY_BYTES} bytes")
                return
        body = b"".join(chunks)
        problem = self._check(body)
        if problem is not None:
            await _answer(send, *problem)
            return
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        started = False

        async def watch(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, replay, watch)
        except Exception as e:
            if started:
                raise
            if isinstance(e, ValueError | TypeError | KeyError | OSError):  # what a malformed request raises
                await _answer(send, 400, f"the request could not be read: {type(e).__name__}: {e}")
            else:  # the server's state, e.g. a RuntimeError from vLLM's executors while it shuts down: try again
                await _answer(send, 503, f"the server cannot serve it now: {type(e).__name__}: {e}")

    def _check(self, body: bytes) -> tuple[int, str] | None:
        """(status, message) for a body vLLM would fail on; None lets vLLM judge the rest (missing fields...)."""
        import base64
        import binascii
        import io

        from PIL import Image

        try:
            request = json.loads(body)
        except ValueError:
            return None  # vLLM's own 400 names the JSON error
        messages = request.get("messages") if isinstance(request, dict) else None
        for m, message in enumerate(messages if isinstance(messages, list) else []):
            content = message.get("content") if isinstance(message, dict) else None
            for k, part in enumerate(content if isinstance(content, list) else []):
                url = part.get("image_url") if isinstance(part, dict) else None
                url = url.get("url") if isinstance(url, dict) else None
                if not isinstance(url, str) or not url.startswith("data:"):
                    continue
                where = f"messages[{m}].content[{k}]"
                head, sep, data = url.partition(",")
                if not sep or not head.endswith(";base64"):
                    return 400, f"{where}: an image data URL is data:image/...;base64,<data>"
                try:
                    with Image.open(io.BytesIO(base64.b64decode(data, validate=True))) as image:
                        w, h = image.size
                except (binascii.Error, ValueError):
                    return 400, f"{where}: the image data URL is not base64"
                except Image.DecompressionBombError as e:
                    return 413, f"{where}: {e}"
                except OSError as e:
                    return 400, f"{where}: not a readable image ({type(e).__name__}: {e})"
                if w * h > self.max_pixels:
                    return 413, f"{where}: image {w}x{h} = {w * h} pixels > {self.max_pixels}"
        return None


async def _answer(send: Any, status: int, message: str) -> None:
    """An error in the form of vLLM's own (``{"error": {"message", "type", "code"}}``)."""
    kind = {400: "BadRequestError", 413: "RequestTooLarge", 503: "ServiceUnavailable"}.get(status, "Error")
    body = json.dumps({"error": {"message": message, "type": kind, "param": None, "code": status}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
