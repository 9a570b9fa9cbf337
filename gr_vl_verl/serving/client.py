"""The guard over HTTP: ``load_guard("http://HOST:PORT/v1")`` asks a ``gr-vl serve`` server what the in-process
guard asks its engine, and reads the answers the same way.

Per item, one chat-completion request carrying what ``Guard.classify`` gives vLLM: the guard's messages (the
instruction as the system turn), each image checked and bounded as there (``guard.prepare_items``), then resized
onto the model's grid as ``generation.prompts`` resizes it (``qwen_vl_utils.process_vision_info``), sent as a
lossless PNG data URL (the server's processor, given the same pixel bounds, keeps it as it is). Decoding is
greedy with the guard's ``max_tokens``; the result dicts come from the same function as the local guard's.

Faults: a server that cannot be reached (refused or dropped connections, 502/503/504: stopped, restarting,
starting) is waited for up to ``retry_window`` seconds per request; other failures (5xx, a read timeout) are
retried ``retries`` times; a 4xx is the item's fault and is not retried. Answers come back in item order
(``classify_iter`` yields each as soon as the ones before it are in), so a caller that gives up keeps them.

The module imports neither torch nor vLLM until an item with an image is classified.
"""

from __future__ import annotations

import base64
import collections
import io
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from gr_vl_verl.data.images import ImagePolicy
from gr_vl_verl.generation.config import GenerationError
from gr_vl_verl.generation.engines import Completion
from gr_vl_verl.guard_items import GuardInput, _result, prepare_items
from gr_vl_verl.models.families import DEFAULT_FAMILY, get_family
from gr_vl_verl.models.families import image_policy as family_policy
from gr_vl_verl.protocol import PARSE_MODES, ParseMode

#: Qwen2.5-VL's vision patch (GuardReasoner-VL's base model): images are resized onto a grid of twice that.
#: Another family's (``model_family=``) comes from ``models.families``.
DEFAULT_PATCH_SIZE = DEFAULT_FAMILY.patch_size
#: How long a request waits for a server it cannot reach. A restart of ``gr-vl serve`` (vLLM's engine start) takes
#: tens of seconds on a small CPU machine and minutes for a large model on a GPU; this outlasts both.
DEFAULT_RETRY_WINDOW = 300.0
#: The longest pause between two tries: a server that is back is found within this.
MAX_BACKOFF = 2.0
#: Answers the server could not give because it went away, is starting or is overloaded: worth waiting for.
_UNREACHABLE_STATUS = (502, 503, 504)


class GuardServerError(GenerationError):
    """The server refused an item (4xx, named) or could not be reached within the retry window.

    ``index`` is the first item without an answer (None for the model list); ``answered`` the results of the items
    before it, in order (``classify`` fills it), so a caller can keep them and continue from ``index``."""

    def __init__(self, message: str, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index
        self.answered: list[dict[str, Any]] = []


class _Stopped(Exception):
    """The call was given up (another item failed, or the caller stopped reading): end the request quietly."""


@dataclass
class CallStats:
    """What one ``classify``/``classify_iter`` call took: items, answers, HTTP requests sent and how many of them
    were retries (``retries > 0`` after a server restart), and the wall time until the last answer."""

    items: int = 0
    answered: int = 0
    requests: int = 0
    retries: int = 0
    seconds: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def count(self, retry: bool) -> None:
        with self._lock:
            self.requests += 1
            self.retries += retry

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("items", "answered", "requests", "retries", "seconds")}


def is_server_url(value: object) -> bool:
    return isinstance(value, str) and value.startswith(("http://", "https://"))


class RemoteGuard:
    """A guard served by ``gr-vl serve``. Build it with ``load_guard(URL)``; ``classify`` as the local guard's.

    One HTTP connection pool per guard, kept open across calls (``close()`` or ``with`` ends it): a call pays
    no TCP handshake for connections an earlier call opened. ``model_family`` names the served model's family
    (default ``qwen2_5_vl``, the paper's), whose grid and evaluation bounds the images are resized to here.
    """

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
        retry_window: float = DEFAULT_RETRY_WINDOW,
        api_key: str | None = None,
        model: str | None = None,
        image_patch_size: int | None = None,
        model_family: str | None = None,
    ) -> None:
        if mode not in PARSE_MODES:
            raise ValueError(f"mode must be one of {PARSE_MODES}, got {mode!r}")
        for name, value in (("max_tokens", max_tokens), ("max_concurrency", max_concurrency)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if retries < 0 or timeout <= 0 or backoff < 0 or retry_window < 0:
            raise ValueError(
                "need retries >= 0, timeout > 0, backoff >= 0, retry_window >= 0; "
                f"got {retries}, {timeout}, {backoff}, {retry_window}"
            )
        self.base_url = base_url.rstrip("/")
        self.max_tokens = max_tokens
        self.mode = mode
        # The server's model is not at hand: its family (default the paper's) says the grid and the bounds.
        family = DEFAULT_FAMILY if model_family is None else get_family(model_family)
        self.image_policy = image_policy or family_policy(family)
        self.max_concurrency = max_concurrency
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.retry_window = retry_window
        self.image_patch_size = family.patch_size if image_patch_size is None else image_patch_size
        #: The statistics of the latest call (retries after a restart show here).
        self.last_call = CallStats()
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._model = model
        self._lock = threading.Lock()
        self._http: Any = None

    def __repr__(self) -> str:
        return f"RemoteGuard(url={self.base_url!r}, mode={self.mode!r}, max_tokens={self.max_tokens})"

    def __enter__(self) -> RemoteGuard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the guard's connections (a later call opens new ones)."""
        with self._lock:
            http, self._http = self._http, None
        if http is not None:
            http.close()

    def classify(
        self, items: Iterable[object], max_tokens: int | None = None, threshold: float | None = None
    ) -> list[dict[str, Any]]:
        """One result per item, in order, as ``Guard.classify``. Every item is checked before the first is sent:
        a bad one raises ``GuardInputError`` naming ``items[i]``. Up to ``max_concurrency`` requests are in
        flight. A failure raises :class:`GuardServerError` carrying the answers before the failed item
        (``.answered``, ``.index``). ``p_harmful`` is None through a server (see :func:`_remote_result`), so
        ``threshold`` relabels nothing."""
        results: list[dict[str, Any]] = []
        try:
            for result in self.classify_iter(items, max_tokens, threshold):
                results.append(result)
        except GuardServerError as e:
            e.answered = results
            raise
        return results

    def classify_iter(
        self, items: Iterable[object], max_tokens: int | None = None, threshold: float | None = None
    ) -> Iterator[dict[str, Any]]:
        """``classify`` one answer at a time, in item order, each as soon as it and those before it are in.
        Items are checked at the call (before any request); at most ``4 * max_concurrency`` requests are
        built ahead of the answer being read. Stop reading and the requests still out are given up."""
        if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)):
            raise ValueError(f"max_tokens must be an integer, got {max_tokens!r}")
        if max_tokens is not None and max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        prepared = prepare_items(items, self.image_policy)
        stats = self.last_call = CallStats(items=len(prepared))
        return self._answers(prepared, self.max_tokens if max_tokens is None else max_tokens, threshold, stats)

    # ----------------------------------------------------------------------------------------------
    def _answers(
        self, prepared: list[GuardInput], limit: int, threshold: float | None, stats: CallStats
    ) -> Iterator[dict[str, Any]]:
        if not prepared:
            return
        start = time.perf_counter()
        stop = threading.Event()
        http = self._client()
        model = self._served_model(http, stop, stats)
        pool = ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(prepared)), thread_name_prefix="guard")
        ahead: collections.deque[Future[dict[str, Any]]] = collections.deque()
        submitted = 0
        try:
            for item in prepared:
                # A bounded window of submitted items: memory stays flat however many items there are.
                while submitted < len(prepared) and len(ahead) < 4 * self.max_concurrency:
                    ahead.append(
                        pool.submit(self._ask, http, model, prepared[submitted], limit, submitted, stop, stats)
                    )
                    submitted += 1
                answer = ahead.popleft().result()
                stats.answered += 1
                stats.seconds = time.perf_counter() - start
                yield _remote_result(item, answer, self.mode, threshold)
        finally:
            stop.set()  # the requests still out (after a failure, or a caller that stopped reading) give up
            pool.shutdown(wait=True, cancel_futures=True)

    def _client(self) -> Any:
        import httpx

        with self._lock:
            if self._http is None:
                n = self.max_concurrency
                limits = httpx.Limits(max_connections=n, max_keepalive_connections=n, keepalive_expiry=60.0)
                self._http = httpx.Client(timeout=self.timeout, headers=self._headers, limits=limits)
            return self._http

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

    def _served_model(self, http: Any, stop: threading.Event, stats: CallStats) -> str:
        with self._lock:
            if self._model is not None:
                return self._model
        data = self._send(http, "GET", "/models", None, "the server's model list", stop, stats)
        with self._lock:
            self._model = self._model or str(data["data"][0]["id"])
            return self._model

    def _ask(
        self, http: Any, model: str, item: GuardInput, limit: int, index: int, stop: threading.Event, stats: CallStats
    ) -> dict[str, Any]:
        # Built here, in the pool, so encoding an item overlaps the requests of the others.
        body = {"model": model, **self._body(item, limit)}
        try:
            return self._send(http, "POST", "/chat/completions", body, f"items[{index}]", stop, stats)
        except GuardServerError as e:
            e.index = index
            raise

    def _send(
        self,
        http: Any,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        where: str,
        stop: threading.Event,
        stats: CallStats,
    ) -> dict[str, Any]:
        """One request until it is answered. Unreachable (connection refused or dropped, 502/503/504): tried
        again after ``backoff * 2**k`` seconds (at most ``MAX_BACKOFF``) until ``retry_window`` seconds have
        passed since its first failure. Other failures (5xx, timeouts): ``retries`` more tries. 4xx: raises."""
        import httpx

        url = self.base_url + path
        first_failure: float | None = None
        failed = attempts = 0
        last = ""
        while True:
            stats.count(retry=attempts > 0)
            attempts += 1
            unreachable = True
            try:
                r = http.request(method, url, json=body)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError, httpx.ReadError,
                    httpx.WriteError, httpx.PoolTimeout) as e:  # fmt: skip
                last = f"{type(e).__name__}: {e}"
            except httpx.TransportError as e:  # a read or write timeout: the server took the request and hung
                last, unreachable = f"{type(e).__name__}: {e}", False
            else:
                if r.status_code < 400:
                    answer = r.json()
                    finish = _finish_reason(answer)
                    if finish in (None, "stop", "length"):
                        return answer
                    # "abort": a server stopping aborts what it was generating; asked again after its restart
                    last, unreachable = f"the server ended the answer with {finish!r}", finish == "abort"
                elif r.status_code < 500:
                    raise GuardServerError(f"{where}: the server at {self.base_url} refused it "
                                           f"(HTTP {r.status_code}): {_message(r)}")  # fmt: skip
                else:
                    last, unreachable = f"HTTP {r.status_code}: {_message(r)}", r.status_code in _UNREACHABLE_STATUS
            now = time.monotonic()
            first_failure = now if first_failure is None else first_failure
            if not unreachable:
                failed += 1
                if failed > self.retries:
                    raise GuardServerError(f"{where}: no answer from {url} after {attempts} attempts ({last})")
            elif now - first_failure >= self.retry_window:
                raise GuardServerError(
                    f"{where}: no answer from {url} within the retry window of {self.retry_window:g} s "
                    f"({attempts} attempts; last: {last}); a longer window: retry_window= (--retry-window)"
                )
            delay = min(self.backoff * 2 ** (attempts - 1), MAX_BACKOFF)
            if unreachable:
                delay = min(delay, max(0.0, first_failure + self.retry_window - now))
            if stop.wait(delay):
                raise _Stopped


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


def _finish_reason(answer: Any) -> str | None:
    """A chat completion's finish reason; None for another answer (the model list)."""
    try:
        return answer["choices"][0].get("finish_reason")
    except (KeyError, IndexError, TypeError, AttributeError):
        return None


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
    known = {"max_tokens", "mode", "image_policy", "max_concurrency", "timeout", "retries", "backoff",
             "retry_window", "api_key", "model_family"}  # fmt: skip
    unknown = sorted(set(options) - known - {"model", "image_patch_size"})
    if unknown:
        raise ValueError(f"{url}: a served guard takes no {unknown}; its options are {sorted(known)}")
    return RemoteGuard(url, **options)
