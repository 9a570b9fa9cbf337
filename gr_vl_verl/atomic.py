"""Publishing files atomically: write a temp file beside the target, fsync it, then ``os.replace``.

Every output of the package (parquets, shards, summaries, predictions, reports) goes through here, so an
interrupted run never leaves a half-written file under a final name, and a file that was there before stays
untouched until the new one is complete. Pure standard library.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def temp_beside(path: Path) -> tuple[int, Path]:
    """An open temp file in ``path``'s folder (so ``os.replace`` is atomic), with the usual permissions.

    ``mkstemp`` makes files 0600; a published output should get what the umask gives any new file.
    """
    fd, tmp = tempfile.mkstemp(dir=Path(path).parent, prefix=f".{Path(path).name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    return fd, Path(tmp)


def publish(tmp: Path, path: Path) -> None:
    """Make a finished temp file ``path``: flush it to disk, then rename it over ``path`` in one step."""
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temp path to write ``path``'s new contents to (by any library); published when the block succeeds.

    Leaving the block by an exception deletes the temp file and keeps what was at ``path``.
    """
    path = Path(path)
    fd, tmp = temp_beside(path)
    os.close(fd)
    try:
        yield tmp
        publish(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: Path, chunks: Iterable[bytes]) -> None:
    """Write ``chunks`` (produced lazily, if the caller likes) as ``path``'s new contents, atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        for chunk in chunks:
            f.write(chunk)


def write_json_atomic(path: Path, payload: Any) -> None:
    """A summary, manifest or stats file: indented, sorted keys, one trailing newline."""
    text = json.dumps(payload, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    atomic_write(path, [text.encode("utf-8")])
