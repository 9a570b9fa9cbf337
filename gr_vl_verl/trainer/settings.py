"""The plugin's own settings: the top-level ``gr_vl:`` block of the trainer config.

verl builds its config sections into dataclasses and rejects unknown keys there, so the plugin keeps its
hyper-parameters beside them, under ``gr_vl.clip`` (:class:`ClipSchedule`) and ``gr_vl.reward``
(:class:`~gr_vl_verl.reward.score.RewardConfig`). Both are validated on the driver before Ray starts, so a
typo fails in seconds instead of after the workers have loaded a model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from gr_vl_verl.reward.score import RewardConfig
from gr_vl_verl.trainer.clip_schedule import ClipSchedule

SECTIONS: tuple[str, ...] = ("clip", "reward")
REWARD_KEYS: tuple[str, ...] = ("preset", *(f.name for f in dataclasses.fields(RewardConfig)))


@dataclass(frozen=True)
class PluginSettings:
    clip: ClipSchedule
    reward: RewardConfig


def _as_dict(node: Any, where: str) -> dict[str, Any]:
    if node is None:
        return {}
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=True)
    if not isinstance(node, Mapping):
        raise ValueError(f"{where} must be a mapping, got {type(node).__name__}")
    return dict(node)


def clip_schedule_from(config: DictConfig | Mapping[str, Any]) -> ClipSchedule:
    """The clip schedule of a run (``gr_vl.clip``; the paper's defaults where absent)."""
    gr_vl = _as_dict(select(config, "gr_vl"), "gr_vl")
    return ClipSchedule.from_mapping(_as_dict(gr_vl.get("clip"), "gr_vl.clip"))


def reward_config_from(config: DictConfig | Mapping[str, Any]) -> RewardConfig:
    """The reward settings of a run: ``gr_vl.reward`` keys that are not null, over the preset's values.

    ``max_length: null`` in token mode means ``actor_rollout_ref.rollout.response_length`` (the paper
    normalises by the rollout's maximum response length); character mode keeps the preset's 3072.
    """
    gr_vl = _as_dict(select(config, "gr_vl"), "gr_vl")
    block = _as_dict(gr_vl.get("reward"), "gr_vl.reward")
    unknown = sorted(set(block) - set(REWARD_KEYS))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in gr_vl.reward; expected some of {list(REWARD_KEYS)}")
    kwargs = {k: v for k, v in block.items() if v is not None}
    reward = RewardConfig.from_kwargs(**dict(kwargs))
    response_length = select(config, "actor_rollout_ref.rollout.response_length")
    if "max_length" not in kwargs and reward.length_unit == "tokens" and response_length is not None:
        reward = RewardConfig.from_kwargs(**kwargs, max_length=int(response_length))
    return reward


def validate_settings(config: DictConfig | Mapping[str, Any]) -> PluginSettings:
    """Check the whole ``gr_vl`` block; raise ``ValueError`` naming the bad key or value."""
    gr_vl = _as_dict(select(config, "gr_vl"), "gr_vl")
    unknown = sorted(set(gr_vl) - set(SECTIONS))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in gr_vl; expected some of {list(SECTIONS)}")
    return PluginSettings(clip=clip_schedule_from(config), reward=reward_config_from(config))


def select(config: Any, path: str) -> Any:
    """``OmegaConf.select`` for DictConfigs and plain nested dicts alike (None where absent)."""
    if isinstance(config, DictConfig):
        return OmegaConf.select(config, path, default=None)
    node: Any = config
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node
