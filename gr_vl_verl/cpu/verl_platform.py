"""verl's ``cpu`` platform: what ``verl.plugin.platform.get_platform()`` answers on a CPU-only machine.

verl 0.9.1 registers ``nvidia``, ``huawei`` and ``amd`` platforms and falls back to ``nvidia`` when none is
found, so on a CPU every worker asks for NCCL and CUDA. This platform answers for the CPU: gloo collectives,
``torch.device("cpu")`` as the current device (verl moves modules with ``.to(get_device_id())``, and an int
means a CUDA ordinal), a device module with the memory and RNG calls verl makes (:mod:`.device`), no CUDA IPC
(verl then syncs weights to vLLM through shared memory), and a Ray resource of its own for worker placement.

It is never auto-detected: ``is_platform_available`` is False, so only ``VERL_PLATFORM=cpu`` selects it, which
the plugin sets when the run says ``trainer.device=cpu`` (:func:`gr_vl_verl.cpu.selection.choose`).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from types import ModuleType
from typing import Any

from verl.plugin.platform.platform_base import PlatformBase
from verl.plugin.platform.platform_manager import PlatformRegistry

from gr_vl_verl.cpu.device import CPU_DEVICE

logger = logging.getLogger(__name__)

NAME = "cpu"
#: The Ray resource each CPU "device" (one FSDP rank, one vLLM server slot) takes. Not ``GPU``: Ray is never
#: told there are GPUs. The plugin gives the local Ray cluster as many of these as the run has ranks.
RAY_RESOURCE = "gr_vl_cpu_device"
#: verl writes the rollout server's device ids into this variable; on a CPU nothing reads it.
VISIBLE_DEVICES_ENV = "GR_VL_CPU_VISIBLE_DEVICES"


class CPUPlatform(PlatformBase):
    """verl's platform interface answered for the CPU (verl 0.9.1, ``verl/plugin/platform/platform_base.py``)."""

    @property
    def device_name(self) -> str:
        return "cpu"

    @property
    def vendor_name(self) -> str:
        return "cpu"

    @property
    def device_module(self) -> ModuleType:
        return CPU_DEVICE  # type: ignore[return-value]

    def is_available(self) -> bool:
        return True

    def is_platform_available(self, use_smi_check: bool = False) -> bool:
        return False  # never auto-detected: only VERL_PLATFORM=cpu (set from trainer.device=cpu) selects it

    def current_device(self) -> Any:
        return CPU_DEVICE.current_device()

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index: int) -> None:
        return None

    def synchronize(self, device_index: int | None = None) -> None:
        return None

    def manual_seed(self, seed: int) -> None:
        CPU_DEVICE.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        CPU_DEVICE.manual_seed_all(seed)

    def set_allocator_settings(self, settings: str) -> None:
        return None  # no caching allocator (expandable segments are a CUDA setting)

    def empty_cache(self) -> None:
        return None

    def get_device_capability(self, device_index: int = 0) -> tuple[int | None, int | None]:
        return None, None

    def communication_backend_name(self) -> str:
        return "gloo"

    def visible_devices_envvar(self) -> str:
        return VISIBLE_DEVICES_ENV

    @contextmanager
    def nvtx_range(self, msg: str):
        yield

    def profiler_start(self) -> None:
        return None

    def profiler_stop(self) -> None:
        return None

    def ray_resource_name(self) -> str:
        return RAY_RESOURCE

    def ray_noset_envvars(self) -> list[str]:
        return []

    def is_ipc_supported(self) -> bool:
        return False

    def cudart(self) -> Any:
        return None


def register() -> None:
    """Add the platform to verl's registry under ``cpu`` (idempotent; selecting it is separate)."""
    if PlatformRegistry.get(NAME) is not CPUPlatform:
        PlatformRegistry.register(platform=NAME)(CPUPlatform)
