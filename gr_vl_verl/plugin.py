"""What verl's ``verl.plugins`` entry point imports, in every process that imports verl.

verl (0.9+) loads entry points while ``verl/__init__`` is still running, and swallows their errors at DEBUG
level. So this module imports nothing heavy and never fails: it registers the reward manager under the name
``gr_vl`` in verl's reward-loop registry the moment that registry is imported (importing it eagerly would add
about a second to every ``import verl``). Driver, Ray reward workers and actor workers all import verl, so all
of them get the registration without any user setting. ``gr-vl check`` verifies it.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types

_REGISTRY_PACKAGE = "verl.experimental.reward_loop.reward_manager"
_MANAGER_MODULE = "gr_vl_verl.reward.manager"
REGISTRATION_ERRORS: list[str] = []


def register_reward_manager() -> None:
    """Put :class:`GuardRewardManager` into verl's reward-loop registry (idempotent).

    Importing :mod:`gr_vl_verl.reward.manager` registers it; if that module is itself the one importing
    verl's registry right now, it finishes the registration when its own import completes.
    """
    module = sys.modules.get(_MANAGER_MODULE)
    if module is not None and not hasattr(module, "GuardRewardManager"):
        return  # mid-import: the manager registers itself at the end of its module
    importlib.import_module(_MANAGER_MODULE)


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs :func:`register_reward_manager` right after verl's registry package finishes importing."""

    def find_spec(self, fullname, path, target=None):  # noqa: ANN001 - importlib protocol
        if fullname != _REGISTRY_PACKAGE:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _RegisteringLoader(spec.loader)
                return spec
        return None


class _RegisteringLoader(importlib.abc.Loader):
    def __init__(self, inner: importlib.abc.Loader) -> None:
        self._inner = inner

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return self._inner.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        self._inner.exec_module(module)
        _uninstall_hook()
        try:
            register_reward_manager()
        except Exception as e:  # never break verl's own import; `gr-vl check` reports this
            REGISTRATION_ERRORS.append(f"{type(e).__name__}: {e}")


_HOOK = _AfterImport()


def _uninstall_hook() -> None:
    if _HOOK in sys.meta_path:
        sys.meta_path.remove(_HOOK)


def _install() -> None:
    if _REGISTRY_PACKAGE in sys.modules:
        try:
            register_reward_manager()
        except Exception as e:
            REGISTRATION_ERRORS.append(f"{type(e).__name__}: {e}")
    elif _HOOK not in sys.meta_path:
        sys.meta_path.insert(0, _HOOK)


_install()
