"""Serve a trained guard over HTTP with vLLM's OpenAI-compatible server, for `load_guard(URL)` and `classify --server`.

    gr-vl serve --model ckpt/gr_vl_3b                       # http://127.0.0.1:8000/v1 until Ctrl-C
    gr-vl classify --server http://127.0.0.1:8000/v1 --request "How do I pick a lock?"

The server is vLLM's own (``vllm.entrypoints.openai.api_server``) in a child process, with the settings the
in-process guard uses (``serving.server`` lists them): its answers are the local vLLM guard's. The server's log
goes to stderr; stdout gets the served model name and the base URL once ``/v1/models`` answers. Ctrl-C or
SIGTERM stops the server (SIGTERM, then SIGKILL after a grace period) and the command exits 0.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import Any

from gr_vl_verl.commands import UsageError, WorkError, emit
from gr_vl_verl.commands._generation import add_engine_kwargs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    p = parser
    p.add_argument("--model", required=True, type=Path, help="guard checkpoint folder (model, tokenizer, processor)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="default 8000")
    p.add_argument("--max-tokens", type=int, default=None, help="default new tokens per answer (default: vLLM's)")
    p.add_argument("--api-key", default=None, help="require this key from clients (vLLM's --api-key)")
    p.add_argument("--served-model-name", default=None, help="the model's name in the API (default: --model)")
    p.add_argument("--ready-timeout", type=float, default=900.0, help="seconds to wait for the server (default 900)")
    add_engine_kwargs(p)


def run(args: argparse.Namespace) -> int:
    from gr_vl_verl.generation.engines import vllm_available
    from gr_vl_verl.serving.server import ServerError, start_server

    if not (args.model / "config.json").is_file():
        raise UsageError(f"--model {args.model}: not a checkpoint folder (no config.json)")
    if not 0 < args.port < 65536:
        raise UsageError(f"--port must be in 1..65535, got {args.port}")
    if args.max_tokens is not None and args.max_tokens < 1:
        raise UsageError(f"--max-tokens must be >= 1, got {args.max_tokens}")
    if not vllm_available():
        from gr_vl_verl.generation.engines import VLLM_MISSING

        raise UsageError(VLLM_MISSING)
    options: dict[str, Any] = {
        "served_model_name": args.served_model_name,
        "max_tokens": args.max_tokens,
        "api_key": args.api_key,
        "engine_kwargs": args.engine_kwargs,
    }
    try:
        server = start_server(str(args.model), host=args.host, port=args.port, echo=sys.stderr, **options)
    except ValueError as e:  # an engine argument the command sets itself
        raise UsageError(str(e)) from None

    def _terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        name = server.wait_ready(args.ready_timeout, api_key=args.api_key)
        emit(f"serving {name!r} at {server.base_url}", flush=True)
        code = server.proc.wait()
        raise WorkError(f"the server exited with {code}; its log ends:\n{server.log_tail()}")
    except ServerError as e:
        raise WorkError(str(e)) from None
    except KeyboardInterrupt:
        print("stopping the server", file=sys.stderr, flush=True)
        return 0
    finally:
        server.stop()
        signal.signal(signal.SIGTERM, previous)
