"""Reading the metrics files of verl's ``file`` logger: one JSON object per line, ``{"step": N, "data": {...}}``.

verl's ``FileLogger`` (``verl/utils/tracking.py``, 0.9.1) writes one line per ``log`` call to
``$VERL_FILE_LOGGER_PATH`` and opens it with ``"wb"``, so a resumed run starts a new file: the plugin's launchers
give each launch its own file name, and a run folder may hold several, merged here by step in name order (a
later file's value for a step wins). A run still in progress may have a half-written last line: it is left out.
Pure: no torch, no verl.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: File names the plugin's launchers give verl's file logger inside a run folder.
METRICS_GLOB = "*metrics*.jsonl"


class MetricsFileError(ValueError):
    """A metrics file or folder that cannot be read; the message names the file and line."""


def read_metrics(path: Path) -> dict[int, dict[str, Any]]:
    """Metrics per step from one file (later lines for a step update earlier ones); {} if the file is absent."""
    path = Path(path)
    steps: dict[int, dict[str, Any]] = {}
    if not path.exists():
        return steps
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            step, data = int(record["step"]), record["data"]
            if not isinstance(data, dict):
                raise TypeError("`data` is not an object")
        except (ValueError, KeyError, TypeError) as e:
            if number == len(lines):  # the line a running trainer is writing
                break
            raise MetricsFileError(f"{path}:{number}: not a verl metrics line ({e})") from None
        steps.setdefault(step, {}).update(data)
    return steps


def metrics_files(path: Path) -> list[Path]:
    """A metrics file itself, or the metrics files of a run folder (its own, else any below it), in name order."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise MetricsFileError(f"{path}: no such file or folder")
    found = sorted(path.glob(METRICS_GLOB)) or sorted(path.rglob(METRICS_GLOB))
    if not found:
        raise MetricsFileError(f"{path}: no metrics file ({METRICS_GLOB}) in this folder or below it")
    return found


def read_run(path: Path) -> dict[int, dict[str, Any]]:
    """Every metrics file of a run (file or folder), merged by step."""
    steps: dict[int, dict[str, Any]] = {}
    for file in metrics_files(path):
        for step, data in read_metrics(file).items():
            steps.setdefault(step, {}).update(data)
    return steps
