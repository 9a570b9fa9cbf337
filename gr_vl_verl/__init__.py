"""GuardReasoner-VL reasoning safety guards trained with verl.

``from gr_vl_verl import load_guard`` gives the trained guard as a Python API (:mod:`gr_vl_verl.guard`). It is
loaded on first use, so ``import gr_vl_verl`` (which verl's plugin entry point and every ``gr-vl`` command
do) imports neither torch, transformers, verl nor Ray.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Public names served lazily, and the module each comes from.
_LAZY = {"load_guard": "gr_vl_verl.guard", "Guard": "gr_vl_verl.guard", "GuardInputError": "gr_vl_verl.guard"}

__all__ = ["Guard", "GuardInputError", "load_guard"]

if TYPE_CHECKING:
    from gr_vl_verl.guard import Guard, GuardInputError, load_guard


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip this hook
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
