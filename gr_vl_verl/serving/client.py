"""The guard over HTTP: ``load_guard("http://HOST:PORT/v1")`` asks a ``gr-vl serve`` server what the in-process
guard asks its engine, and reads the answers the same way.

Per item, one chat-completion request carrying what ``Guard.classify`` gives vLLM: the guard's messages (the
instruction as the system turn), each image checked and bounded as there (``guard.prepare_items``), then resized
onto the model's grid as ``generation.prompts`` resizes it (``qwen_vl_utils.process_vision_info``), sent as a
lossless PNG data URL (the server's processor, given the same pixel bounds, keeps it as it is). Decoding is
greedy with the guard's ``max_tokens``; the result dicts come from the same function as the local guard's.

The module imports neither torch nor vLLM until an item with an image is classified.
"""

from __future__ import annotations

import base64
import io
import threading
import time
from collections.abc import Iterable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any

from gr_vl_verl.data.images import ImagePolicy
from gr_vl_verl.generation.config import GenerationError
from gr_vl_verl.generation.engines import Completion
from gr_vl_verl.guard_items import GuardInput, _result, prepare_items
from gr_vl_verl.protocol import PARSE_MODES, ParseMode

#: Qwen2.5-VL's vision patch (GuardReasoner-VL's base model): images are resized onto a grid of twice that.
DEFAULT_PATCH_SIZE = 14


class GuardServerError(GenerationError):
    """The server refused an item (4xx, named) or could not be reached after the retries."""


def is_server_url(value: object) -> bool:
    return isinstance(value, str) and value.startswith(("http://", "https://"))


class RemoteGuard:
    """A guard served by ``gr-vl serve``. Build it with ``load_guard(URL)``; ``classify`` as the local guard's."""

    def __init__(
        self,
        base_url: str,
        *,
        max_tokens: int = 4096,
        mode: ParseMode = "strict",
        image_policy: ImagePolicy | None = None,
        max_concurrency: int = 8,
        timeout: float = 600.0,
        retries: int = 3,
        backoff: float = 0.5,
        api_key: str | None = None,
        model: str | None = None,
        image_patch_size: int = DEFAULT_PATCH_SIZE,
    ) -> None:
        if mode not in PARSE_MODES:
            raise ValueError(f"mode must be one of {PARSE_MODES}, got {mode!r}")
        for name, value in (("max_tokens", max_tokens), ("max_concurrency", max_concurrency)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if retries < 0 or timeout <= 0 or backoff < 0:
            raise ValueError(f"need retries >= 0, timeout > 0, backoff >= 0; got {retries}, {timeout}, {backoff}")
        self.base_url = base_url.rstrip("/")
        self.max_tokens = max_tokens
        self.mode = mode
        self.image_policy = image_policy or ImagePolicy.evaluation()
        self.max_concurrency = max_concurrency
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.image_patch_size = image_patch_size
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._model = model
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"RemoteGuard(url={self.base_url!r}, mode={self.mode!r}, max_tokens={self.max_tokens})"

    def classify(
        self, items: Iterable[object], max_tokens: int | None = None, threshold: float | None = None
    ) -> list[dict[str, Any]]:
        """One result per item, in order, as ``Guard.classify``. Every item is checked (and its request built)
        before the first is sent: a bad one raises ``GuardInputError`` naming ``items[i]``. Up to
        ``max_concurrency`` requests are in flight; the first failure stops the call. ``p_harmful`` is None
        through a server (see :func:`_remote_result`), so ``threshold`` relabels nothing."""
        import httpx

        if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)):
            raise ValueError(f"max_tokens must be an integer, got {max_tokens!r}")
        if max_tokens is not None and max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        prepared = prepare_items(items, self.image_policy)
        limit = self.max_tokens if max_tokens is None else max_tokens
        bodies = [self._body(item, limit) for item in prepared]
        if not bodies:
            return []
        limits = httpx.Limits(max_connections=self.max_concurrency, max_keepalive_connections=self.max_concurrency)
        with httpx.Client(timeout=self.timeout, headers=self._headers, limits=limits) as http:
            model = self._served_model(http)
            with ThreadPoolExecutor(max_workers=self.max_concurrency) as pool:
                futures = [pool.submit(self._ask, http, model, body, f"items[{i}]") for i, body in enumerate(bodies)]
                done, pending = wait(futures, return_when=FIRST_EXCEPTION)
                for f in pending:
                    f.cancel()
                for f in futures:  # the first failure in item order, if any
                    if f in done and f.exception() is not None:
                        raise f.exception()  # type: ignore[misc]
                answers = [f.result() for f in futures]
        return [
            _remote_result(item, answer, self.mode, threshold) for item, answer in zip(prepared, answers, strict=True)
        ]

    # ----------------------------------------------------------------------------------------------
    def _body(self, item: GuardInput, max_tokens: int) -> dict[str, Any]:
        """The chat request of one checked item: greedy (as the guard's default), its limit, its messages."""
        return {
            "messages": chat_messages(item, self.image_patch_size),
            "temperature": 0.0,
            "top_p": 1.0,
            "max_tokens": max_tokens,
            "skip_special_tokens": True,
            # Seam for a harm probability read from log-probs: ask for "logprobs" here and read them in
            # _remote_result, where the local result's keys are filled.
        }

    def _served_model(self, http: Any) -> str:
        with self._lock:
            if self._model is None:
                data = self._send(http, "GET", "/models", None, "the server's model list")
                self._model = str(data["data"][0]["id"])
            return self._model

    def _ask(self, http: Any, model: str, body: dict[str, Any], where: str) -> dict[str, Any]:
        return self._send(http, "POST", "/chat/completions", {"model": model, **body}, where)

    def _send(self, http: Any, method: str, path: str, body: dict[str, Any] | None, where: str) -> dict[str, Any]:
        """One request with retries: connection errors, timeouts and 5xx wait ``backoff * 2**k`` and try again;
        a 4xx is the item's fault and raises at once, naming it."""
        import httpx

        url = self.base_url + path
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                r = http.request(method, url, json=body)
            except httpx.TransportError as e:
                last = f"{type(e).__name__}: {e}"
                continue
            if r.status_code >= 500:
                last = f"HTTP {r.status_code}: {_message(r)}"
                continue
            if r.status_code >= 400:
                raise GuardServerError(f"{where}: the server at {self.base_url} refused it (HTTP {r.status_code}): "
                                       f"{_message(r)}")  # fmt: skip
            return r.json()
        raise GuardServerError(f"{where}: no answer from {url} after {self.retries + 1} attempts ({last})")


def chat_messages(item: GuardInput, patch_size: int = DEFAULT_PATCH_SIZE) -> list[dict[str, Any]]:
    """The item's messages in OpenAI's form, each ``<image>`` an image part at its place (as ``generation.prompts``
    places it for the local guard), each image the pixels the local guard gives vLLM, as a PNG data URL."""
    from gr_vl_verl.generation.prompts import decode_images, image_messages

    row_id = "item"
    images = decode_images(row_id, [{"bytes": b} for b in item.images])
    messages = image_messages(row_id, item.messages, images)
    if not images:
        return messages
    from qwen_vl_utils import process_vision_info

    resized, _ = process_vision_info(messages, image_patch_size=patch_size, return_video_metadata=True)
    urls = iter([_data_url(im) for im in resized or []])
    out = []
    for m in messages:
        content = m["content"]
        if isinstance(content, list):
            content = [
                {"type": "image_url", "image_url": {"url": next(urls)}} if p["type"] == "image" else p for p in content
            ]
        out.append({**m, "content": content})
    return out


def _data_url(image: Any) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _message(response: Any) -> str:
    try:
        data = response.json()
        error = data.get("error", data) if isinstance(data, dict) else data
        return str(error.get("message", error) if isinstance(error, dict) else error)[:500]
    except ValueError:
        return response.text[:500]


def _remote_result(
    item: GuardInput, answer: dict[str, Any], mode: ParseMode, threshold: float | None = None
) -> dict[str, Any]:
    """The local guard's result from one chat completion: its text and its generated tokens (vLLM's
    ``completion_tokens``: the output's token ids, the end-of-sequence token included, as the engine counts).

    ``p_harmful`` stays None: the harm probability needs the log-probs of both label tokens at the verdict
    (``SamplingParams.logprob_token_ids``), which vLLM 0.24's OpenAI-compatible server does not expose (only the
    top-k), so labels come from the text whatever ``threshold`` says."""
    choice = answer["choices"][0]
    finish = choice.get("finish_reason")
    if finish not in ("stop", "length"):
        raise GuardServerError(f"the server finished an answer with {finish!r}")
    text = choice["message"].get("content") or ""
    return _result(item, Completion(text, int(answer["usage"]["completion_tokens"]), finish), mode, threshold)


def connect(url: str, *, temperature: float = 0.0, **options: Any) -> RemoteGuard:
    """``load_guard(URL)``: the server decodes greedily, as the guard is evaluated; other settings are refused."""
    if temperature != 0.0:
        raise ValueError(f"a served guard decodes greedily (temperature 0), got temperature={temperature}")
    known = {"max_tokens", "mode", "image_policy", "max_concurrency", "timeout", "retries", "backoff", "api_key"}
    unknown = sorted(set(options) - known - {"model", "image_patch_size"})
    if unknown:
        raise ValueError(f"{url}: a served guard takes no {unknown}; its options are {sorted(known)}")
    return RemoteGuard(url, **options)
