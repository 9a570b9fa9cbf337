"""Run a function right after a given module finishes importing (or now, if it already has).

The plugin is imported by verl's ``verl.plugins`` entry point while ``verl/__init__`` is still running, so it
cannot import verl's heavier modules itself (a second of start-up in every process, and import cycles). Instead
it asks to be called when those modules load, in whichever process loads them: the driver, the Ray reward
workers, the actor workers. Errors in a callback never break the import; they are kept for ``gr-vl check``.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import sys
import types
from collections.abc import Callable
from typing import Any

ERRORS: list[str] = []
_PENDING: dict[str, list[Callable[[types.ModuleType], None]]] = {}


def _call(callback: Callable[[types.ModuleType], None], module: types.ModuleType) -> None:
    try:
        callback(module)
    except Exception as e:  # never break the import that triggered it; `gr-vl check` reports this
        ERRORS.append(f"{module.__name__}: {getattr(callback, '__name__', callback)}: {type(e).__name__}: {e}")


def after_import(module_name: str, callback: Callable[[types.ModuleType], None]) -> None:
    """Call ``callback(module)`` once ``module_name`` is imported: now if it is, else right after its import."""
    module = sys.modules.get(module_name)
    if module is not None and getattr(module, "__spec__", None) is not None and not _initialising(module):
        _call(callback, module)
        return
    _PENDING.setdefault(module_name, []).append(callback)
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)


def replace(owner: Any, name: str, build: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
    """Set ``owner.name`` to ``build(original)``, once: a second call (a hook run again) changes nothing.

    The replacement keeps the original's name and docstring and reaches it as ``__wrapped__``.
    """
    original = getattr(owner, name)
    if getattr(original, "_gr_vl_replaced", False):
        return
    replacement = functools.wraps(original)(build(original))
    replacement._gr_vl_replaced = True  # type: ignore[attr-defined]
    setattr(owner, name, replacement)


def module_source(name: str) -> str | None:
    """The source text of module ``name`` without importing it or its parent packages (importing
    ``vllm.…`` or ``verl.workers.…`` starts logging and takes seconds); None where it cannot be found."""
    from importlib.util import find_spec
    from pathlib import Path

    top, _, rest = name.partition(".")
    spec = find_spec(top)
    if spec is None:
        return None
    if not rest:
        return Path(spec.origin).read_text() if spec.origin else None
    for root in spec.submodule_search_locations or []:
        base = Path(root, *rest.split("."))
        for path in (base.with_suffix(".py"), base / "__init__.py"):
            if path.is_file():
                return path.read_text()
    return None


def _initialising(module: types.ModuleType) -> bool:
    return bool(getattr(module.__spec__, "_initializing", False))


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):  # noqa: ANN001 - importlib protocol
        if fullname not in _PENDING:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _Loader(spec.loader, fullname)
                return spec
        return None


class _Loader(importlib.abc.Loader):
    def __init__(self, inner: importlib.abc.Loader, name: str) -> None:
        self._inner = inner
        self._name = name

    def __getattr__(self, name: str):  # get_code, get_source, ... (runpy's `python -m` asks for them)
        return getattr(self._inner, name)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return self._inner.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        self._inner.exec_module(module)
        for callback in _PENDING.pop(self._name, []):
            _call(callback, module)
        if not _PENDING and _FINDER in sys.meta_path:
            sys.meta_path.remove(_FINDER)


_FINDER = _Finder()
