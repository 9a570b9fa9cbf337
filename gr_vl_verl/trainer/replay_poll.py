"""How often verl's sync V1 trainer looks for finished rollouts (verl 0.9.1): ``gr_vl.replay_buffer.poll_s``.

verl's V1 trainer waits for a step's rollouts in ``ReplayBuffer.sample``: it lists TransferQueue's keys, and
while fewer than a batch of groups are finished it sleeps ``poll_interval`` seconds, which
``PPOTrainer._build_replay_buffer`` leaves at the constructor's default, 2.0 (no config key reaches it). So a
step's generation, and each validation, takes a whole number of 2-second polls: a step whose rollouts are ready
after 1.2 s waits until 2.0 s, one ready after 2.1 s until 4.0 s. On a GPU run with minutes of generation a step
loses under 2 s; on this project's CPU runs ``timing_s/gen`` read 2.0 or 4.0 s in every step (the demo's GRPO,
16 steps: mean 3.9 s of an 8.1 s step). At 0.25 s it read 2.3-3.8 s (mean 2.9 s of a 7.1 s step).

The trainer classes the plugin builds (:func:`gr_vl_verl.trainer.dynamic_clip.v1_trainer_cls`) set the sync
replay buffer's ``poll_interval`` to ``poll_s`` right after verl builds it (:class:`ReplayPollMixin`). Only the
``sync`` mode's own ``ReplayBuffer``: the ``separate_async`` trainer also reads ``poll_interval`` as its idle
threshold when it adapts its rollout/trainer switch, so the asynchronous modes and user samplers
(``trainer.v1.sampler.custom_sampler``) keep verl's value. ``poll_s: null`` keeps verl's 2.0 everywhere.

Each poll is one ``kv_list`` call to TransferQueue's controller (a few ms with thousands of keys), so 0.25 s
costs the controller little and the step at most 0.25 s.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gr_vl_verl.cpu import pins
from gr_vl_verl.settings import from_block, is_seconds, section

logger = logging.getLogger(__name__)

#: verl's class name for the sync mode's replay buffer (``verl/trainer/ppo/v1/replay_buffer.py``).
SYNC_BUFFER = "ReplayBuffer"


@dataclass(frozen=True)
class ReplayPollSettings:
    """``gr_vl.replay_buffer``: ``poll_s``, seconds between the sync replay buffer's looks for finished
    rollouts; None keeps verl's (2.0)."""

    poll_s: float | None = 0.25

    def __post_init__(self) -> None:
        if self.poll_s is not None and not is_seconds(self.poll_s):
            raise ValueError(f"gr_vl.replay_buffer.poll_s must be a number of seconds > 0 or null, got {self.poll_s!r}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> ReplayPollSettings:
        """From the ``gr_vl.replay_buffer`` block; unknown keys are an error."""
        return from_block(cls, values, "gr_vl.replay_buffer")


def apply(buffer: Any, settings: ReplayPollSettings) -> bool:
    """Set ``buffer``'s poll interval when it is verl's own sync ``ReplayBuffer``; whether it was set."""
    if settings.poll_s is None or type(buffer).__name__ != SYNC_BUFFER:
        return False
    pins.require(pins.REPLAY_POLL.adapter)
    before = buffer.poll_interval
    buffer.poll_interval = float(settings.poll_s)
    logger.info("gr_vl: the replay buffer looks for finished rollouts every %s s (verl's %s)", settings.poll_s, before)
    return True


class ReplayPollMixin:
    """A V1 trainer whose sync replay buffer polls every ``gr_vl.replay_buffer.poll_s`` seconds."""

    config: Any

    def _build_replay_buffer(self) -> Any:
        buffer = super()._build_replay_buffer()  # type: ignore[misc]
        apply(buffer, ReplayPollSettings.from_mapping(section(self.config, "replay_buffer")))
        return buffer
