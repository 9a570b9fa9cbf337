"""The one reader of the plugin's ``gr_vl:`` block in a verl config.

verl builds its own config sections into dataclasses and rejects unknown keys there, so the plugin keeps its
hyper-parameters beside them, one section per concern (``gr_vl.clip``, ``gr_vl.reward``). This module finds
the block and hands each section over as a plain dict; the dataclass of each section lives beside the pure
module it configures and validates its own keys (``ClipSchedule.from_mapping``,
``RewardConfig.from_settings``). Takes DictConfigs or nested dicts; imports neither torch nor verl,
nor any other part of the package.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf

T = TypeVar("T")

#: Sections the ``gr_vl`` block may hold.
SECTIONS: tuple[str, ...] = ("clip", "reward", "node_watch", "replay_buffer")


def select(config: Any, path: str) -> Any:
    """The value at a dotted ``path`` of a DictConfig or nested dict (None where absent)."""
    if isinstance(config, DictConfig):
        return OmegaConf.select(config, path, default=None)
    node: Any = config
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def as_dict(node: Any, where: str) -> dict[str, Any]:
    """A config node as a plain dict (resolved), ``{}`` for None; anything but a mapping is an error."""
    if node is None:
        return {}
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=True)
    if not isinstance(node, Mapping):
        raise ValueError(f"{where} must be a mapping, got {type(node).__name__}")
    return dict(node)


def check_keys(values: Mapping[str, Any], known: Sequence[str], where: str) -> None:
    """Unknown keys in a block are an error naming them and the known ones (in ``known``'s order), not ignored."""
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in {where}; expected some of {list(known)}")


def is_seconds(value: Any) -> bool:
    """Whether ``value`` is a finite number of seconds > 0 (not a bool)."""
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value) and value > 0


def from_block(cls: type[T], values: Mapping[str, Any] | None, where: str) -> T:
    """A settings dataclass from its block: unknown keys are an error naming ``where``; absent keys default."""
    values = dict(values or {})
    check_keys(values, sorted(f.name for f in dataclasses.fields(cls)), where)  # type: ignore[arg-type]
    return cls(**values)


def gr_vl_block(config: Any) -> dict[str, Any]:
    """The whole ``gr_vl`` block; an unknown section is an error naming it."""
    block = as_dict(select(config, "gr_vl"), "gr_vl")
    check_keys(block, SECTIONS, "gr_vl")
    return block


def section(config: Any, name: str) -> dict[str, Any]:
    """``gr_vl.<name>`` as a plain dict (``{}`` where absent)."""
    if name not in SECTIONS:
        raise ValueError(f"unknown gr_vl section {name!r}; expected one of {list(SECTIONS)}")
    return as_dict(gr_vl_block(config).get(name), f"gr_vl.{name}")
