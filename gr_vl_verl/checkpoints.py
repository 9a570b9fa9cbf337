"""verl's checkpoint tracker, read without verl: which step a run's checkpoint folder holds whole.

Core (no torch, verl or Ray): the trainer's launcher and the node watch both read it.
"""

from __future__ import annotations

from pathlib import Path

#: verl's checkpoint tracker (``verl.utils.checkpoint.checkpoint_manager.get_checkpoint_tracker_filename``):
#: written after a checkpoint is complete, so the step it names is whole even if a later save was cut off.
TRACKER = "latest_checkpointed_iteration.txt"


def last_checkpoint(checkpoints: str | Path | None) -> int | None:
    """The step of the last complete checkpoint under ``checkpoints`` (verl's tracker, its folder there), or None."""
    if not checkpoints:
        return None
    try:
        step = int((Path(checkpoints) / TRACKER).read_text().strip())
    except (OSError, ValueError):
        return None
    return step if (Path(checkpoints) / f"global_step_{step}").is_dir() else None
