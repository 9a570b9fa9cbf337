"""The five places where verl 0.9.1 (with Ray and vLLM's CPU build) cannot run on a CPU through its platform alone.

Each adapter replaces one verl (or vLLM, or Ray) behaviour, and is applied only when the CPU platform is on,
right after the module it changes is imported. The line each one is written against is in the one pin table,
:mod:`gr_vl_verl.cpu.pins`; an adapter checks its line before it applies, and the adapters are *strict*: one
that cannot apply makes the import fail with one line naming the adapter, the package version and the line.
:func:`verify` checks all of them before a CPU run starts Ray (or the SFT trainer).
"""

from __future__ import annotations

import functools
import logging
import types
from collections.abc import Callable
from typing import Any

from gr_vl_verl import import_hooks
from gr_vl_verl.cpu import pins

logger = logging.getLogger(__name__)

FSDP_ENGINE_MODULE = pins.CPU_ENGINES.module
_ENGINES = {"language_model": "FSDPEngineWithLMHead", "value_model": "FSDPEngineWithValueHead"}


def _gloo_initialisers(module: types.ModuleType) -> None:
    """``initialize_global_process_group[_ray]`` with ``gloo`` as the default backend.

    A patch: verl builds the backend string in code from the platform's names; no config key reaches it.
    """
    import torch.distributed as dist

    def ray_version(original: Callable[..., Any]) -> Callable[..., Any]:
        def initialize_global_process_group_ray(timeout_second: Any = None, backend: Any = None) -> Any:
            return original(timeout_second=timeout_second, backend=backend or "gloo")

        return initialize_global_process_group_ray

    def torchrun_version(original: Callable[..., Any]) -> Callable[..., Any]:
        def initialize_global_process_group(timeout_second: int = 36000) -> tuple[int, int, int]:
            import os
            from datetime import timedelta

            dist.init_process_group(
                backend="gloo",
                timeout=timedelta(seconds=timeout_second),
                init_method=os.environ.get("DIST_INIT_METHOD", None),
            )
            return int(os.environ["LOCAL_RANK"]), int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])

        return initialize_global_process_group

    import_hooks.replace(module, "initialize_global_process_group_ray", ray_version)
    import_hooks.replace(module, "initialize_global_process_group", torchrun_version)
    logger.info("gr_vl cpu: process groups use the gloo backend (verl would ask for cpu:gloo,cpu:gloo)")


def _cpu_engines(module: types.ModuleType) -> None:
    """verl's FSDP engines, also registered for device ``cpu``.

    A registration, through verl's own ``EngineRegistry.register``; verl's decorator lists the devices in code.
    """
    from verl.workers.engine.base import EngineRegistry

    for model_type, name in _ENGINES.items():
        backends = EngineRegistry._engines.get(model_type, {})
        engine = getattr(module, name)
        missing = [b for b in ("fsdp", "fsdp2") if "cpu" not in backends.get(b, {})]
        if missing:
            EngineRegistry.register(model_type=model_type, backend=missing, device="cpu")(engine)
    logger.info("gr_vl cpu: verl's FSDP engines registered for device cpu")


def _accelerator_ids(module: types.ModuleType) -> None:
    """Ray's ``get_accelerator_ids`` also answers for the CPU platform's resource.

    A patch: verl indexes Ray's answer by the platform's resource name in code, and Ray only reports ids of its
    own accelerator types; no config of verl or Ray adds one.
    """
    from gr_vl_verl.cpu.verl_platform import RAY_RESOURCE

    def build(original: Callable[..., Any]) -> Callable[..., Any]:
        def get_accelerator_ids(self: Any) -> dict[str, list[str]]:
            ids = dict(original(self))
            ids.setdefault(RAY_RESOURCE, ["0"])
            return ids

        return get_accelerator_ids

    import_hooks.replace(module.RuntimeContext, "get_accelerator_ids", build)


def _resource_check(module: types.ModuleType) -> None:
    """``ResourcePoolManager._check_resource_available`` counting the CPU platform's Ray resource.

    A patch: verl counts ``GPU``/``NPU`` in code, not the platform's ``ray_resource_name()``; no config reaches it.
    """
    import ray

    from gr_vl_verl.cpu.verl_platform import RAY_RESOURCE

    def _check_resource_available(self: Any) -> None:
        available = sum(
            node.get(RAY_RESOURCE, 0) for node in ray._private.state.available_resources_per_node().values()
        )
        required = sum(n for nodes in self.resource_pool_spec.values() for n in nodes)
        if available < required:
            raise ValueError(
                f"the Ray cluster has {available} '{RAY_RESOURCE}' resources for {required} CPU ranks "
                "(trainer.n_gpus_per_node x nnodes); the plugin sets them when it starts Ray itself"
            )

    module.ResourcePoolManager._check_resource_available = _check_resource_available


def _live_weight_gemm(module: types.ModuleType) -> None:
    """vLLM's CPU linear layers read their weight at call time, so verl's weight sync reaches them.

    A patch: vLLM chooses the oneDNN path whenever its build supports it (``ops._supports_onednn``) and always
    empties the weight then; no engine argument or environment variable turns that off.
    """
    import torch

    def build(original: Callable[..., Any]) -> Callable[..., Any]:
        def dispatch_cpu_unquantized_gemm(layer: Any, remove_weight: bool) -> None:
            if layer.weight.is_meta or layer.weight.ndim != 2:
                return original(layer, remove_weight)
            layer.cpu_linear = lambda x, weight, bias: torch.nn.functional.linear(x, weight, bias)

        return dispatch_cpu_unquantized_gemm

    import_hooks.replace(module, "dispatch_cpu_unquantized_gemm", build)


def _pinned(name: str, fn: Callable[[types.ModuleType], None]) -> Callable[[types.ModuleType], None]:
    """``fn`` behind its pin: the line must be there, and any failure becomes one line naming the adapter."""

    @functools.wraps(fn)
    def apply(module: types.ModuleType) -> None:
        pins.require(name)
        try:
            fn(module)
        except Exception as e:
            pin = pins.PINS[name]
            raise pins.PinError(
                f"adapter '{name}': could not apply to {module.__name__} ({pin.package} {pins.version(pin.package)}, "
                f"written against the line {pin.line!r}): {type(e).__name__}: {e}"
            ) from e

    return apply


#: Adapter name (the key of :data:`gr_vl_verl.cpu.pins.PINS`) -> the module it changes and the change.
ADAPTERS: dict[str, tuple[str, Callable[[types.ModuleType], None]]] = {
    pins.GLOO_BACKEND.adapter: ("verl.utils.distributed", _gloo_initialisers),
    pins.CPU_ENGINES.adapter: (FSDP_ENGINE_MODULE, _cpu_engines),
    pins.ACCELERATOR_IDS.adapter: ("ray.runtime_context", _accelerator_ids),
    pins.RESOURCE_CHECK.adapter: ("verl.single_controller.ray.base", _resource_check),
    pins.LIVE_WEIGHT_GEMM.adapter: ("vllm.model_executor.layers.utils", _live_weight_gemm),
}

_INSTALLED = False


def install() -> None:
    """Apply each adapter when (or if already) its module is imported; once per process.

    An adapter whose line is gone does not apply, and makes the import of its module fail with that line.
    """
    global _INSTALLED
    if _INSTALLED:
        return
    _INSTALLED = True
    for name, (module, fn) in ADAPTERS.items():
        import_hooks.after_import(module, _pinned(name, fn), strict=True, name=name)


def verify() -> None:
    """Before a CPU run starts anything: every pinned line holds (read from the installed files), and every
    adapter whose module this process has imported has applied. :class:`~gr_vl_verl.cpu.pins.PinError`
    otherwise, one line (the first problem; the count of the others)."""
    import sys

    found = pins.problems()
    for name, (module, _fn) in ADAPTERS.items():
        if name in import_hooks.FAILED:
            found.append(import_hooks.FAILED[name])
        elif _INSTALLED and module in sys.modules and name not in import_hooks.APPLIED:
            found.append(f"adapter '{name}': {module} is imported but the adapter did not apply")
    fix = pins.TEXT_ONLY_FORWARD.adapter
    if fix in import_hooks.FAILED:
        found.append(f"adapter '{fix}': {import_hooks.FAILED[fix]}")
    if found:
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise pins.PinError(found[0] + more)
