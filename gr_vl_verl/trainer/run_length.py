"""How many steps a GRPO run really takes: the configured ``trainer.total_training_steps`` capped by what the
data gives (batches per epoch x ``trainer.total_epochs``).

verl 0.9.1 takes ``trainer.total_training_steps`` as given even when the data runs out first: the epoch loop then
ends early, the last step's checkpoint and validation never happen (``is_last_step`` is never true), the LR
schedule and the clip schedule are laid out for steps that never come, and ε stops above its end value. The
plugin's trainers cap the count where verl computes it, so every schedule and the last-step save use the steps the
run will take, and say so. Pure: no torch, no verl.
"""

from __future__ import annotations


def planned_steps(configured: int | None, batches_per_epoch: int, epochs: int) -> tuple[int, str | None]:
    """(steps the run takes, a warning when the configured count asks for more than the data gives)."""
    if batches_per_epoch < 1 or epochs < 1:
        raise ValueError(f"a run needs at least one batch and one epoch, got {batches_per_epoch} x {epochs}")
    available = batches_per_epoch * epochs
    if configured is None or configured <= available:
        return (available if configured is None else configured), None
    return available, (
        f"trainer.total_training_steps={configured} asks for more steps than the data gives: {batches_per_epoch} "
        f"batches per epoch x trainer.total_epochs={epochs} = {available}. The run takes {available} steps, and the "
        f"clip and learning-rate schedules and the last step's checkpoint and validation follow that; for more "
        f"steps raise trainer.total_epochs or give more data."
    )
