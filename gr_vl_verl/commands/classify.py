"""Classify requests (text, image or both) and AI responses with a trained guard; one JSON object per item.

    gr-vl classify --model ckpt/gr_vl_3b --request "How do I pick a lock?"
    gr-vl classify --model ckpt/gr_vl_3b --image meme.png --request "Explain the joke." --response "It mocks..."
    gr-vl classify --model ckpt/gr_vl_3b --input items.jsonl > verdicts.jsonl
    gr-vl classify --server http://127.0.0.1:8000/v1 --input items.jsonl      # a `gr-vl serve` server
    gr-vl classify --server URL --input items.jsonl --out verdicts.jsonl      # again: continues where it stopped

Prints ``{"request", "response", "reasoning", "output", "output_tokens", "p_harmful", "label_source"}`` for the
item, or one such line per
``--input`` line, in order. An input line is ``{"request": ..., "image": ..., "response": ...}``, each optional
but a request or an image; an image path there is relative to the file's folder. Every item is checked before
the model loads. The Python API behind it: ``gr_vl_verl.load_guard`` (docs/guard.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from gr_vl_verl.commands import UsageError, WorkError, results_stream
from gr_vl_verl.commands._generation import add_engine_kwargs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from gr_vl_verl.protocol import PARSE_MODES

    p = parser
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--model", help="guard checkpoint folder (model, tokenizer, processor)")
    where.add_argument("--server", metavar="URL", help="a `gr-vl serve` server instead, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--api-key", default=None, help="--server: the key the server requires")
    p.add_argument(
        "--model-family",
        default=None,
        help="--server: the served model's family, which sets the image grid (default qwen2_5_vl; docs/models.md)",
    )
    p.add_argument("--backend", choices=("vllm", "transformers"), default="vllm", help="default vllm")
    p.add_argument("--max-tokens", type=int, default=4096, help="new tokens per answer (default 4096)")
    p.add_argument(
        "--mode",
        choices=PARSE_MODES,
        default="strict",
        help="strict: labels only from a well-formed answer's <result> (default); compat: the first label anywhere",
    )
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="transformers: default cuda if available")
    p.add_argument("--batch-size", type=int, default=64, help="items per engine call (default 64)")
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="label harmful iff p_harmful >= this (0..1) where the answer gives a probability; default: the text",
    )
    add_engine_kwargs(p)
    one = p.add_argument_group("one item (instead of --input)")
    one.add_argument("--request", default=None, help="the user's request text")
    one.add_argument("--image", type=Path, default=None, help="the user's image file")
    one.add_argument("--response", default=None, help="the AI response to judge (default: none)")
    p.add_argument("--input", type=Path, default=None, help="JSON lines with request / image / response per item")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="append the answers to this file instead of stdout; run again with the same file to continue after "
        "the last answer it holds",
    )
    p.add_argument("--max-concurrency", type=int, default=8, help="--server: requests in flight (default 8)")
    p.add_argument(
        "--retry-window",
        type=float,
        default=300.0,
        help="--server: seconds to wait for a server that cannot be reached, e.g. restarting (default 300)",
    )


def run(args: argparse.Namespace) -> int:
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise UsageError(f"--threshold must be in [0, 1], got {args.threshold}")
    items = _input_items(args) if args.input is not None else [_single_item(args)]
    from gr_vl_verl.generation import GenerationError
    from gr_vl_verl.guard_items import GuardInputError, write_answers

    try:  # answers as they come, in order; with --out, after those the file already holds
        done = write_answers(
            lambda: _load(args),
            items,
            args.out,
            threshold=args.threshold,
            chunk=args.batch_size,
            stream=results_stream(),
        )
    except GuardInputError as e:
        raise UsageError(str(e)) from None
    except GenerationError as e:
        raise WorkError(str(e)) from None
    if args.out is not None or args.server is not None:
        retried = "" if done["retries"] is None else f", {done['retries']} requests retried"
        print(f"classify: {done['answered']} answered, {done['already']} already in --out, "
              f"of {done['items']} items{retried}", file=sys.stderr)  # fmt: skip
    return 0


def _single_item(args: argparse.Namespace) -> Any:
    from gr_vl_verl.guard import GuardInputError, prepare_item

    if args.request is None and args.image is None and args.response is None:
        raise UsageError("give --request and/or --image (one item), or --input FILE.jsonl")
    item = {"request": args.request, "image": args.image, "response": args.response}
    try:
        return prepare_item({k: v for k, v in item.items() if v is not None}, "the item")
    except GuardInputError as e:
        raise UsageError(str(e)) from None


def _input_items(args: argparse.Namespace) -> list[Any]:
    """The checked items of ``--input``; any line that cannot be used stops here, naming the file and line."""
    from gr_vl_verl.guard import GuardInputError, prepare_item

    path: Path = args.input
    if any(v is not None for v in (args.request, args.image, args.response)):
        raise UsageError("--input cannot be combined with --request, --image or --response")
    if not path.is_file():
        raise UsageError(f"--input: file not found: {path}")
    items = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            where = f"{path} line {lineno}"
            try:
                obj = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                raise UsageError(f"{where}: not UTF-8 text") from None
            except json.JSONDecodeError as e:
                raise UsageError(f"{where}: not JSON ({e.msg} at column {e.colno})") from None
            if isinstance(obj, dict) and isinstance(obj.get("image"), str):
                obj = {**obj, "image": path.parent / obj["image"]}  # an absolute path stays as it is
            try:
                items.append(prepare_item(obj, where))
            except GuardInputError as e:
                raise UsageError(str(e)) from None
    if not items:
        raise UsageError(f"--input {path}: no items (the file is empty)")
    return items


def _load(args: argparse.Namespace) -> Any:
    from gr_vl_verl.generation import GenerationError
    from gr_vl_verl.guard import load_guard

    if args.server is not None:
        from gr_vl_verl.serving.client import is_server_url

        if not is_server_url(args.server):
            raise UsageError(f"--server {args.server}: not an http(s) URL")
        try:
            return load_guard(args.server, max_tokens=args.max_tokens, mode=args.mode, api_key=args.api_key,
                              max_concurrency=args.max_concurrency, retry_window=args.retry_window,
                              model_family=args.model_family)  # fmt: skip
        except ValueError as e:
            raise UsageError(str(e)) from None
    if args.model_family is not None:
        raise UsageError("--model-family goes with --server; a --model folder's config.json names its family")
    try:
        return load_guard(
            args.model,
            backend=args.backend,
            max_tokens=args.max_tokens,
            mode=args.mode,
            batch_size=args.batch_size,
            device=args.device,
            engine_kwargs=args.engine_kwargs,
        )
    except (ValueError, ImportError) as e:  # a bad setting, a missing model folder, vLLM not installed
        raise UsageError(str(e)) from None
    except (GenerationError, OSError) as e:
        raise WorkError(f"--model {args.model}: {e}") from None
