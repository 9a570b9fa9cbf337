"""Streaming JSON: the elements of a top-level JSON array, or the lines of a JSON Lines file, one at a time.

The released GuardReasoner-VL files come in both shapes (``datasets``' ``to_json`` writes JSON Lines; the
benchmark files are indented JSON arrays) and reach gigabytes, so neither is ever loaded whole.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gr_vl_verl.data.records import SampleError


def iter_json_rows(path: Path, chunk_size: int = 1 << 20) -> Iterator[Any]:
    """Yield the elements of a top-level JSON array, or the lines of a JSONL file, without loading it all.

    A JSONL line that does not parse is yielded as a :class:`SampleError` instance so the caller can count
    it; a broken JSON array cannot be resynchronised and raises.
    """
    with open(path, encoding="utf-8") as f:
        head = f.read(chunk_size)
        while head and not head.strip():
            chunk = f.read(chunk_size)
            if not chunk:
                break
            head += chunk
        stripped = head.lstrip()
        if stripped[:1] == "[":
            yield from _iter_json_array(f, stripped[1:], chunk_size, path)
            return
        f.seek(0)
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as e:
                    yield SampleError("bad_json", f"{path}:{lineno}: not valid JSON: {e.msg}")


def _iter_json_array(f: Any, buf: str, chunk_size: int, path: Path) -> Iterator[Any]:
    decoder = json.JSONDecoder()
    pos, first = 0, True

    def more() -> str:
        chunk = f.read(max(chunk_size, len(buf) - pos))
        if not chunk:
            raise ValueError(f"{path}: JSON array is truncated (no closing ']')")
        return chunk

    while True:
        while True:  # next non-blank character
            while pos < len(buf) and buf[pos] in " \t\r\n":
                pos += 1
            if pos < len(buf):
                break
            buf, pos = more(), 0
        if buf[pos] == "]":
            return
        if not first:
            if buf[pos] != ",":
                raise ValueError(f"{path}: expected ',' or ']' between array elements, got {buf[pos]!r}")
            pos += 1
            while True:
                while pos < len(buf) and buf[pos] in " \t\r\n":
                    pos += 1
                if pos < len(buf):
                    break
                buf, pos = more(), 0
        while True:
            try:
                value, end = decoder.raw_decode(buf, pos)
            except json.JSONDecodeError:
                buf, pos = buf[pos:] + more(), 0  # the element continues in the next chunk (or is broken)
                continue
            if end == len(buf):  # a number may go on in the next chunk
                chunk = f.read(chunk_size)
                if chunk:
                    buf, pos = buf[pos:] + chunk, 0
                    continue
            break
        yield value
        buf, pos, first = buf[end:], 0, False
