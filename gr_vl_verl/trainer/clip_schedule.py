"""Dynamic clipping: the PPO/GRPO clip range as a function of the training step. Pure Python.

GuardReasoner-VL (paper §2.3.2, eq. 6-7) decays the clip range during RL: ``B_s = eps * (S - s) / S`` with
``eps = 0.2``. The released code instead multiplied the ratio in place every step, which compounds into
``eps_s = eps * prod_{k<=s} (1 - k/S)``. Both are offered, plus cosine and constant (the "w/o Dyn." ablation).

**Step convention.** ``step`` is verl's ``trainer.global_steps`` at the time of the actor update: verl 0.9.1
sets it to 1 before the first training step (``fit`` starts from 0, or from the checkpoint's step on resume,
and increments before the loop), so ``step = 1`` is the first update and ``step = S`` the last. With S = 23
the linear schedule gives 0.191, 0.183, 0.174 at steps 1-3 and 0 at step 23; the product schedule gives
0.191, 0.175, 0.152. Steps past ``S`` (a run extended after the fact) keep the step-``S`` value.

Low and high bounds decay by the same factor from their own starting values (``eps_high > eps_low`` is
DAPO's clip-higher); ``floor`` is a lower bound on both. Nothing here imports torch or verl.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from gr_vl_verl.settings import check_keys

ScheduleKind = Literal["linear", "product", "cosine", "constant"]
KINDS: tuple[str, ...] = ("linear", "product", "cosine", "constant")


def decay_factor(kind: str, step: int, total_steps: int) -> float:
    """Multiplier in [0, 1] applied to the starting clip range at ``step`` of ``total_steps`` (1-based)."""
    _check_steps(step, total_steps)
    s = min(step, total_steps)
    if kind == "linear":  # paper eq. 7 as read in docs/method.md §3
        return (total_steps - s) / total_steps
    if kind == "product":  # the released code: clip_ratio *= 1 - step/S, once per step
        return math.prod(1.0 - k / total_steps for k in range(1, s + 1))
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * s / total_steps))
    if kind == "constant":
        return 1.0
    raise ValueError(f"unknown clip schedule kind {kind!r}; expected one of {list(KINDS)}")


def _check_steps(step: int, total_steps: int) -> None:
    if not _is_int(total_steps) or total_steps < 1:
        raise ValueError(
            f"total training steps must be an integer >= 1, got {total_steps!r} "
            "(check data.train_batch_size against the dataset size, or set gr_vl.clip.total_steps)"
        )
    if not _is_int(step) or step < 1:
        raise ValueError(f"step must be an integer >= 1 (verl's first training step is 1), got {step!r}")


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


@dataclass(frozen=True)
class ClipSchedule:
    """The clip-range schedule; defaults are the paper's (linear decay from a symmetric 0.2 to 0).

    ``eps_high=None`` means "same as ``eps_low``". ``total_steps=None`` means "the trainer's total training
    steps"; set it to decay over a different horizon.
    """

    kind: ScheduleKind = "linear"
    eps_low: float = 0.2
    eps_high: float | None = None
    floor: float = 0.0
    total_steps: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"gr_vl.clip.kind must be one of {list(KINDS)}, got {self.kind!r}")
        if not _is_number(self.eps_low) or not 0 <= self.eps_low < 1:
            raise ValueError(
                f"gr_vl.clip.eps_low must be a number in [0, 1) (the ratio is clipped at 1 - eps_low), "
                f"got {self.eps_low!r}"
            )
        if self.eps_high is not None and (not _is_number(self.eps_high) or self.eps_high < 0):
            raise ValueError(f"gr_vl.clip.eps_high must be a finite number >= 0 or null, got {self.eps_high!r}")
        if not _is_number(self.floor) or self.floor < 0:
            raise ValueError(f"gr_vl.clip.floor must be a finite number >= 0, got {self.floor!r}")
        if self.floor > min(self.eps_low, self.high_start):
            raise ValueError(
                f"gr_vl.clip.floor ({self.floor}) is above the starting clip range "
                f"(eps_low={self.eps_low}, eps_high={self.high_start}); the floor must not exceed either"
            )
        if self.total_steps is not None and (not _is_int(self.total_steps) or self.total_steps < 1):
            raise ValueError(f"gr_vl.clip.total_steps must be an integer >= 1 or null, got {self.total_steps!r}")

    @property
    def high_start(self) -> float:
        return self.eps_low if self.eps_high is None else self.eps_high

    def horizon(self, trainer_total_steps: int) -> int:
        """The S of the schedule: ``total_steps`` if set, else the trainer's."""
        return self.total_steps if self.total_steps is not None else trainer_total_steps

    def eps(self, step: int, trainer_total_steps: int) -> tuple[float, float]:
        """``(eps_low, eps_high)`` to use for the update at verl step ``step`` (1 = first update)."""
        f = decay_factor(self.kind, step, self.horizon(trainer_total_steps))
        return max(self.floor, self.eps_low * f), max(self.floor, self.high_start * f)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> ClipSchedule:
        """Build from the ``gr_vl.clip`` block; unknown keys are an error, not silently ignored."""
        values = dict(values or {})
        check_keys(values, sorted(f.name for f in dataclasses.fields(cls)), "gr_vl.clip")
        return cls(**values)
