"""Run a function right after a given module finishes importing (or now, if it already has).

The plugin is imported by verl's ``verl.plugins`` entry point while ``verl/__init__`` is still running, so it
cannot import verl's heavier modules itself (a second of start-up in every process, and import cycles). Instead
it asks to be called when those modules load, in whichever process loads them: the driver, the Ray reward
workers, the actor workers.

A callback is *strict* or not. A strict one (the CPU platform's adapters, which a CPU run cannot do without)
that raises makes the import that triggered it fail with its error: the process stops there, naming the
adapter, instead of crashing later inside verl. A failure of any other callback never breaks the import; it is
logged as a warning and kept in :data:`ERRORS` for ``gr-vl check``. :data:`APPLIED` and :data:`FAILED` record
each callback's outcome by name, so a run can check before it starts that its adapters applied.

The finder this installs on ``sys.meta_path`` leaves it as soon as no callback is waiting.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import logging
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

#: Failures of non-strict callbacks, one line each (``gr-vl check`` reports them).
ERRORS: list[str] = []
#: Callback name -> the module it was applied to.
APPLIED: dict[str, str] = {}
#: Callback name -> why it failed (strict and non-strict).
FAILED: dict[str, str] = {}


@dataclass(frozen=True)
class _Callback:
    name: str
    fn: Callable[[types.ModuleType], None]
    strict: bool


_PENDING: dict[str, list[_Callback]] = {}


def _call(callback: _Callback, module: types.ModuleType) -> None:
    try:
        callback.fn(module)
    except Exception as e:
        reason = str(e) if callback.strict else f"{module.__name__}: {callback.name}: {type(e).__name__}: {e}"
        FAILED[callback.name] = reason
        if callback.strict:
            raise
        logger.warning("gr_vl: %s", reason)
        ERRORS.append(reason)
    else:
        APPLIED[callback.name] = module.__name__


def after_import(
    module_name: str,
    callback: Callable[[types.ModuleType], None],
    *,
    strict: bool = False,
    name: str | None = None,
) -> None:
    """Call ``callback(module)`` once ``module_name`` is imported: now if it is, else right after its import.

    ``name`` (default: the callback's ``__name__``) is the key of :data:`APPLIED` and :data:`FAILED`.
    """
    entry = _Callback(name or getattr(callback, "__name__", repr(callback)), callback, strict)
    module = sys.modules.get(module_name)
    if _ready(module):
        _call(entry, module)
        return
    _PENDING.setdefault(module_name, []).append(entry)
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)


def pending() -> list[str]:
    """The modules whose callbacks are still waiting for their import."""
    return list(_PENDING)


def finder_installed() -> bool:
    return _FINDER in sys.meta_path


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


def _ready(module: types.ModuleType | None) -> bool:
    """Whether ``module`` is imported and done executing (not a package whose ``__init__`` is running)."""
    if module is None or getattr(module, "__spec__", None) is None:
        return False
    return not getattr(module.__spec__, "_initializing", False)


def _run_pending(name: str, module: types.ModuleType) -> None:
    callbacks = _PENDING.pop(name, [])
    try:
        for callback in callbacks:
            _call(callback, module)
    finally:
        _retire()


def _retire() -> None:
    """Leave ``sys.meta_path`` once no callback is waiting: nothing is left for the finder to do."""
    if not _PENDING and _FINDER in sys.meta_path:
        sys.meta_path.remove(_FINDER)


def _sweep() -> None:
    """Run the callbacks of targets imported without passing the finder (being imported already when the
    callback was registered, e.g. a package whose ``__init__`` was running)."""
    for name in [n for n in _PENDING if _ready(sys.modules.get(n))]:
        _run_pending(name, sys.modules[name])


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):  # noqa: ANN001 - importlib protocol
        _sweep()
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
        _run_pending(self._name, module)


_FINDER = _Finder()
