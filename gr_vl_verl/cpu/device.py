"""The ``torch.cuda``-shaped module verl's CPU platform hands out as ``get_torch_device()``.

verl calls memory, RNG and stream functions on the device module of its platform (``verl/utils/memory_utils.py``,
``flops_counter.py``, the checkpoint manager). ``torch.cpu`` has streams and ``synchronize`` but no memory
statistics, RNG state or device name, so those answer here: memory figures are 0 (nothing is reserved apart
from the process heap), the RNG is torch's global one, the name is ``"cpu"``. Anything else falls through to
``torch.cpu``.
"""

from __future__ import annotations

from typing import Any

import torch


class CPUDeviceModule:
    """What verl 0.9.1 asks of ``get_torch_device()``, answered for the CPU."""

    def __getattr__(self, name: str) -> Any:
        return getattr(torch.cpu, name)

    # -- device -----------------------------------------------------------------------------------
    @staticmethod
    def is_available() -> bool:
        return True

    @staticmethod
    def device_count() -> int:
        return 1

    @staticmethod
    def current_device() -> torch.device:
        return torch.device("cpu")

    @staticmethod
    def set_device(device: Any) -> None:
        return None

    @staticmethod
    def get_device_name(device: Any = None) -> str:
        return "cpu"

    @staticmethod
    def synchronize(device: Any = None) -> None:
        return None

    # -- memory: the CPU has no caching allocator to report on -----------------------------------
    @staticmethod
    def empty_cache() -> None:
        return None

    @staticmethod
    def ipc_collect() -> None:
        return None

    @staticmethod
    def memory_allocated(device: Any = None) -> int:
        return 0

    @staticmethod
    def memory_reserved(device: Any = None) -> int:
        return 0

    @staticmethod
    def max_memory_allocated(device: Any = None) -> int:
        return 0

    @staticmethod
    def max_memory_reserved(device: Any = None) -> int:
        return 0

    @staticmethod
    def reset_peak_memory_stats(device: Any = None) -> None:
        return None

    @staticmethod
    def set_per_process_memory_fraction(fraction: float, device: Any = None) -> None:
        return None

    @staticmethod
    def mem_get_info(device: Any = None) -> tuple[int, int]:
        """(free, total) bytes of system memory, as verl reads a GPU's."""
        import psutil

        memory = psutil.virtual_memory()
        return int(memory.available), int(memory.total)

    # -- RNG: the CPU generator is torch's global one -------------------------------------------
    @staticmethod
    def get_rng_state(device: Any = None) -> torch.Tensor:
        return torch.get_rng_state()

    @staticmethod
    def set_rng_state(state: torch.Tensor, device: Any = None) -> None:
        torch.set_rng_state(state)

    @staticmethod
    def manual_seed(seed: int) -> None:
        torch.manual_seed(seed)

    @staticmethod
    def manual_seed_all(seed: int) -> None:
        torch.manual_seed(seed)


CPU_DEVICE = CPUDeviceModule()
