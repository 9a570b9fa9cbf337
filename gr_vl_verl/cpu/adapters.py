"""The six places where verl 0.9.1 (with Ray and vLLM's CPU build) cannot run on a CPU through its platform alone.

Each adapter replaces one verl behaviour, names the line it replaces, and is applied only when the CPU platform
is on, right after the module it changes is imported. ``tests/test_cpu_platform.py`` holds each quoted line
against the installed verl (a pin guard), so an upgrade that moves them fails a test instead of a run.
"""

from __future__ import annotations

import logging
import types
from collections.abc import Callable
from typing import Any

from gr_vl_verl import import_hooks

logger = logging.getLogger(__name__)

#: verl's default process-group backend, ``verl/utils/distributed.py`` (both initialisers). With the platform's
#: ``device_name`` "cpu" and backend "gloo" it reads ``cpu:gloo,cpu:gloo``, which torch refuses ("Duplicate
#: device type cpu"). On the CPU the backend is plain ``gloo``.
VERL_BACKEND_LINE = 'backend = f"cpu:gloo,{get_device_name()}:{get_nccl_backend()}"'
#: verl registers its FSDP engines for cuda and npu only (``verl/workers/engine/fsdp/transformer_impl.py``);
#: ``EngineRegistry.get_engine_cls`` then raises "No engine registered for device='cpu'". FSDP2 runs on CPU
#: tensors with gloo, so the same classes are registered for ``cpu`` too.
VERL_ENGINE_LINE = (
    '@EngineRegistry.register(model_type="language_model", backend=["fsdp", "fsdp2"], device=["cuda", "npu"])'
)
#: verl's rollout replica reads each worker's device id from Ray
#: (``verl/workers/rollout/vllm_rollout/vllm_async_server.py``, ``launch_servers``), which only knows ids of
#: Ray's own accelerators; the CPU platform's resource gets id "0" (the value ends up in
#: ``GR_VL_CPU_VISIBLE_DEVICES``, which nothing reads).
VERL_ACCELERATOR_IDS_LINE = "ray.get_runtime_context().get_accelerator_ids()[get_resource_name()][0],"

#: verl counts only ``GPU`` or ``NPU`` Ray resources before placing workers
#: (``verl/single_controller/ray/base.py``, ``ResourcePoolManager._check_resource_available``) and refuses with
#: "Total available GPUs 0 is less than total desired GPUs"; on the CPU it counts the platform's resource.
VERL_RESOURCE_CHECK_LINE = 'node: node_info.get("GPU", 0) if "GPU" in node_info else node_info.get("NPU", 0)'

#: verl's SFT entry point (``verl/trainer/sft_trainer.py``, ``main``, run as ``__main__`` by torchrun) hands the
#: composed config to ``auto_set_device`` and then ``run_sft``; ``auto_set_device`` is its one call into another
#: module, so on the CPU it also writes the plugin's SFT settings (:func:`gr_vl_verl.cpu.config.sft_settings`)
#: into the config, as ``gr_vl_verl.trainer.main_ppo`` does for GRPO.
VERL_SFT_LINE = "    auto_set_device(config)\n    run_sft(config)"

#: vLLM's CPU build packs each linear layer's weight for oneDNN after loading and then empties the parameter
#: (``vllm/model_executor/layers/utils.py``, ``dispatch_cpu_unquantized_gemm``). verl syncs the actor's weights
#: into those parameters every step (``model.load_weights``): the load fails on the emptied weight ("Attempted
#: to load weight ... into parameter (torch.Size([0]))"), and a packed copy would go stale anyway. In the
#: rollout servers of a CPU run the layers use ``torch.nn.functional.linear`` on the live weight instead.
VLLM_GEMM_LINE = "layer.weight = torch.nn.Parameter(torch.empty(0), requires_grad=False)"

FSDP_ENGINE_MODULE = "verl.workers.engine.fsdp.transformer_impl"
_ENGINES = {"language_model": "FSDPEngineWithLMHead", "value_model": "FSDPEngineWithValueHead"}


def _gloo_initialisers(module: types.ModuleType) -> None:
    """``initialize_global_process_group[_ray]`` with ``gloo`` as the default backend."""
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
    """verl's FSDP engines, also registered for device ``cpu``."""
    from verl.workers.engine.base import EngineRegistry

    for model_type, name in _ENGINES.items():
        backends = EngineRegistry._engines.get(model_type, {})
        engine = getattr(module, name)
        missing = [b for b in ("fsdp", "fsdp2") if "cpu" not in backends.get(b, {})]
        if missing:
            EngineRegistry.register(model_type=model_type, backend=missing, device="cpu")(engine)
    logger.info("gr_vl cpu: verl's FSDP engines registered for device cpu")


def _accelerator_ids(module: types.ModuleType) -> None:
    """Ray's ``get_accelerator_ids`` also answers for the CPU platform's resource."""
    from gr_vl_verl.cpu.platform import RAY_RESOURCE

    def build(original: Callable[..., Any]) -> Callable[..., Any]:
        def get_accelerator_ids(self: Any) -> dict[str, list[str]]:
            ids = dict(original(self))
            ids.setdefault(RAY_RESOURCE, ["0"])
            return ids

        return get_accelerator_ids

    import_hooks.replace(module.RuntimeContext, "get_accelerator_ids", build)


def _resource_check(module: types.ModuleType) -> None:
    """``ResourcePoolManager._check_resource_available`` counting the CPU platform's Ray resource."""
    import ray

    from gr_vl_verl.cpu.platform import RAY_RESOURCE

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


def _sft_settings(module: types.ModuleType) -> None:
    """``verl.utils.device.auto_set_device`` that also applies the CPU settings to an SFT config."""

    def build(original: Callable[..., Any]) -> Callable[..., Any]:
        def auto_set_device(config: Any) -> None:
            original(config)
            is_sft = config is not None and "engine" in config and "actor_rollout_ref" not in config
            if is_sft and str(config.trainer.get("device", "")) == "cpu":
                from gr_vl_verl.cpu import config as cpu_config

                cpu_config.apply(config, cpu_config.sft_settings(config))

        return auto_set_device

    import_hooks.replace(module, "auto_set_device", build)


def _live_weight_gemm(module: types.ModuleType) -> None:
    """vLLM's CPU linear layers read their weight at call time, so verl's weight sync reaches them."""
    import torch

    def build(original: Callable[..., Any]) -> Callable[..., Any]:
        def dispatch_cpu_unquantized_gemm(layer: Any, remove_weight: bool) -> None:
            if layer.weight.is_meta or layer.weight.ndim != 2:
                return original(layer, remove_weight)
            layer.cpu_linear = lambda x, weight, bias: torch.nn.functional.linear(x, weight, bias)

        return dispatch_cpu_unquantized_gemm

    import_hooks.replace(module, "dispatch_cpu_unquantized_gemm", build)


_INSTALLED = False


def install() -> None:
    """Apply each adapter when (or if already) its module is imported; once per process."""
    global _INSTALLED
    if _INSTALLED:
        return
    _INSTALLED = True
    import_hooks.after_import("verl.utils.distributed", _gloo_initialisers)
    import_hooks.after_import(FSDP_ENGINE_MODULE, _cpu_engines)
    import_hooks.after_import("ray.runtime_context", _accelerator_ids)
    import_hooks.after_import("verl.single_controller.ray.base", _resource_check)
    import_hooks.after_import("verl.utils.device", _sft_settings)
    import_hooks.after_import("vllm.model_executor.layers.utils", _live_weight_gemm)
