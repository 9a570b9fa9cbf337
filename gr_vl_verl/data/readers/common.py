"""What every source reader shares: safe image paths, message turns, user-turn fields, row ids, and the
wrapper that turns a row's :class:`SampleError` into a counted :class:`Rejected` naming the row."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gr_vl_verl.data.records import GuardSample, ImageData, Rejected, SampleError
from gr_vl_verl.protocol import USER_HEADER, parse_user_content

Item = GuardSample | Rejected


def resolve_image_path(root: Path, rel: str) -> Path:
    """``./image/x.png`` → ``root/image/x.png``; refuse anything that resolves outside ``root``."""
    if not isinstance(rel, str) or not rel.strip():
        raise SampleError("bad_field", f"image path must be a non-empty string, got {rel!r}")
    root = root.resolve()
    candidate = Path(rel)
    path = (candidate if candidate.is_absolute() else root / candidate).resolve()
    if not path.is_relative_to(root):
        raise SampleError("path_escape", f"image path {rel!r} resolves outside the data root {root}")
    return path


def role_contents(messages: object, allowed: tuple[str, ...]) -> dict[str, str]:
    if not isinstance(messages, list) or not messages:
        raise SampleError("missing_field", "`messages` must be a non-empty list")
    out: dict[str, str] = {}
    for m in messages:
        if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
            raise SampleError("missing_field", f"each message needs `role` and `content`, got {m!r:.80}")
        role, content = m["role"], m["content"]
        if role not in allowed:
            raise SampleError("unknown_field", f"unknown message role {role!r}; expected one of {allowed}")
        if role in out:
            raise SampleError("bad_field", f"more than one {role!r} message")
        if not isinstance(content, str):
            raise SampleError("bad_field", f"{role} content must be a string, got {type(content).__name__}")
        out[role] = content
    return out


def user_fields(content: str) -> tuple[str, str | None, int]:
    """Request, response and placeholder count from a user turn (an instruction prefix is dropped)."""
    at = content.find(USER_HEADER)
    if at < 0:
        raise SampleError("bad_format", f"user content has no {USER_HEADER!r}: {content[:60]!r}")
    try:
        uc = parse_user_content(content[at:])
    except ValueError as e:
        raise SampleError("bad_format", str(e)) from None
    return uc.request, uc.response, uc.n_images


@dataclass
class ExtraKeys:
    """What readers do with keys a row carries beside the ones they read.

    Real exports carry more than the readers use: the GuardReasoner text benchmarks have ``instruction``
    beside ``input`` and ``output`` (the original evaluator reads only those two), and ``datasets``'
    ``to_json`` can add keys another split has. By default such keys are ignored and counted per key (the
    prep summary reports them); ``strict=True`` rejects the row as ``unknown_field`` instead.
    """

    strict: bool = False
    ignored: Counter[str] = field(default_factory=Counter)

    def check(self, row: Mapping, used: Iterable[str]) -> None:
        unknown = sorted(set(row) - set(used))
        if not unknown:
            return
        if self.strict:
            raise SampleError("unknown_field", f"unknown field(s) {unknown}; expected only {sorted(used)}")
        self.ignored.update(unknown)


def row_id(row: Mapping, default: str) -> str:
    rid = row.get("id")
    if rid is None:
        return default
    if not isinstance(rid, str | int) or isinstance(rid, bool) or not str(rid).strip():
        raise SampleError("bad_field", f"id must be a non-empty string or int, got {rid!r}")
    return str(rid)


def guard_rows(rows: Iterable[Any], source: str, build: Callable[[Any, str, int], GuardSample]) -> Iterator[Item]:
    """Apply ``build`` to each row; turn its SampleError into a Rejected that names the row."""
    for index, row in enumerate(rows):
        default_id = f"{source}-{index:06d}"
        if isinstance(row, SampleError):
            yield Rejected(default_id, row.reason, str(row))
            continue
        try:
            yield build(row, default_id, index)
        except SampleError as e:
            rid = default_id
            if isinstance(row, Mapping) and isinstance(row.get("id"), str | int):
                rid = str(row["id"])
            yield Rejected(rid, e.reason, f"{rid}: {e}")


def image_bytes(value: object, data_root: Path | None = None) -> ImageData:
    """Bytes or a safe path from the ways tables store an image: dict with bytes/path, bytes, path string."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, Mapping):
        if value.get("bytes"):
            return bytes(value["bytes"])
        value = value.get("path")
    if isinstance(value, str) and data_root is not None:
        return resolve_image_path(data_root, value)
    raise SampleError("image_missing", f"image has neither bytes nor a path under a data root: {value!r:.80}")
