"""The verl settings a CPU GRPO run needs, set by ``gr_vl_verl.trainer.main_ppo`` when ``trainer.device=cpu``.

Each entry names the key, the value and the reason; :func:`apply` writes them into the composed config and logs
one line each, so a run's log says what the plugin changed. None of them is a size: batch, lengths and model
stay the caller's. Sources are in ``docs/cpu.md``. (An SFT run's two CPU settings are in ``gr_vl_sft.yaml``.)
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from gr_vl_verl.cpu.verl_platform import RAY_RESOURCE
from gr_vl_verl.cpu.vllm_dist import CPU_DTYPE, CPU_KVCACHE_GIB, IN_PROCESS_ENV, cpu_engine_defaults

logger = logging.getLogger(__name__)

#: Logical CPUs Ray schedules at least: verl places the task runner, reward-loop workers, TransferQueue
#: controller and storage, the agent loop and vLLM server actors, each asking for a CPU; a 2-core machine must
#: still fit them all (they mostly wait).
MIN_RAY_CPUS = 16
#: FSDP's compute in float32 (verl's default is bf16 parameters over fp32 master weights): on a CPU without bf16
#: arithmetic (AVX2 only) torch's bf16 matrix product is ~100x slower than fp32 (docs/cpu.md, "Precision").
#: ``gr_vl_sft.yaml`` sets the same for SFT on a CPU.
FP32_COMPUTE = {"param_dtype": "fp32", "reduce_dtype": "fp32", "buffer_dtype": "fp32"}
FP32_WHY = "fp32 compute: a CPU without bf16 arithmetic runs verl's bf16 matrix products on a slow path"


@dataclass(frozen=True)
class Setting:
    key: str
    value: Any
    why: str


def joins_existing_cluster(config: DictConfig, environ: dict[str, str] | None = None) -> bool:
    """Whether verl's ``ray.init`` will connect to a running Ray cluster instead of starting one.

    Ray's rule (``ray.init``, Ray 2.60): ``ray_kwargs.ray_init.address`` when it names a cluster (``auto`` or
    an address), else ``RAY_ADDRESS`` when set and not empty; ``local`` (from either) starts a new one.
    """
    environ = os.environ if environ is None else environ
    address = OmegaConf.select(config, "ray_kwargs.ray_init.address")
    if address is None or address == "auto":
        address = environ.get("RAY_ADDRESS") or address
    return address is not None and address != "local"


def settings(config: DictConfig) -> list[Setting]:
    """What a CPU run sets, from the run's own config (ranks, user's Ray and env choices).

    A run that joins a running cluster (:func:`joins_existing_cluster`: ``RAY_ADDRESS``, ``ray_init.address``)
    gets no ``ray_init.num_cpus`` or ``ray_init.resources``: Ray refuses both when connecting ("When connecting
    to an existing cluster, num_cpus and num_gpus must not be provided"; the same for resources), because a
    cluster's resources are its nodes'. There each node offers its own ``gr_vl_cpu_device`` per rank it hosts
    and the CPUs verl's actors ask for (``ray start --resources``, ``gr-vl cluster --cpu-devices``).
    """
    trainer = config.trainer
    ranks = int(trainer.n_gpus_per_node) * int(trainer.nnodes)
    num_cpus = OmegaConf.select(config, "ray_kwargs.ray_init.num_cpus")
    env = {
        "VERL_PLATFORM": "cpu",
        "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", CPU_KVCACHE_GIB),
    }
    rollout_engine = _rollout_engine_kwargs(config)
    if rollout_engine.get("distributed_executor_backend") == "uni":
        env[IN_PROCESS_ENV] = os.environ.get(IN_PROCESS_ENV, "0")
    dashboard = OmegaConf.select(config, "ray_kwargs.ray_init.include_dashboard")
    own_cluster = [
        Setting(
            "ray_kwargs.ray_init.resources",
            {RAY_RESOURCE: ranks},
            f"one '{RAY_RESOURCE}' Ray resource per rank (trainer.n_gpus_per_node x nnodes), no GPUs",
        ),
        Setting(
            "ray_kwargs.ray_init.num_cpus",
            max(int(num_cpus or 0), MIN_RAY_CPUS, os.cpu_count() or 1),
            "logical CPUs enough for verl's helper actors on a small machine",
        ),
        Setting(
            "ray_kwargs.ray_init.include_dashboard",
            bool(dashboard) if dashboard is not None else False,
            "no dashboard processes for a local run (its own value wins): Ray starts ~2.5 s sooner on 2 cores",
        ),
    ]
    out = [
        Setting(
            "ray_kwargs.ray_init.runtime_env.env_vars",
            env,
            "every Ray worker selects the cpu platform; vLLM's CPU KV cache is bounded (GiB)",
        ),
        *([] if joins_existing_cluster(config) else own_cluster),
        Setting(
            "transfer_queue.backend.SimpleStorage.num_data_storage_units",
            1,
            "one TransferQueue storage actor (verl's default 8 each take a CPU)",
        ),
        Setting(
            "actor_rollout_ref.model.override_config.attn_implementation",
            "sdpa",
            "no flash-attn on a CPU (verl's default is flash_attention_2)",
        ),
        Setting("actor_rollout_ref.model.use_remove_padding", False, "padding-free attention needs flash-attn"),
        Setting("actor_rollout_ref.model.use_fused_kernels", False, "fused log-prob kernels are Triton (GPU)"),
        Setting("actor_rollout_ref.actor.fsdp_config.mixed_precision", FP32_COMPUTE, FP32_WHY),
        Setting("actor_rollout_ref.ref.fsdp_config.mixed_precision", FP32_COMPUTE, FP32_WHY),
        Setting("actor_rollout_ref.rollout.dtype", CPU_DTYPE, "the rollout engine in fp32, as the actor computes"),
        Setting(
            "actor_rollout_ref.rollout.enable_sleep_mode",
            False,
            "vLLM's CPU platform has no sleep mode (its config check refuses it)",
        ),
        Setting("actor_rollout_ref.rollout.free_cache_engine", False, "freeing the KV cache needs sleep mode"),
        Setting("actor_rollout_ref.rollout.enforce_eager", True, "no CUDA graphs on a CPU; skips compilation"),
        Setting(
            "actor_rollout_ref.rollout.engine_kwargs.vllm",
            rollout_engine,
            "the rollout model in vLLM's engine-core process (no third process) and no vision-encoder memory "
            "profile (a CPU's KV cache has a set size): each server starts ~40 s sooner on 2 cores (docs/cpu.md)",
        ),
        Setting(
            "actor_rollout_ref.rollout.agent.num_workers",
            1,
            "one agent-loop worker (verl's default 8 each load the tokenizer and processor)",
        ),
        Setting("reward.num_workers", 1, "one reward-loop worker (verl's default 8 each load the tokenizer)"),
    ]
    return out


def _rollout_engine_kwargs(config: DictConfig) -> dict[str, Any]:
    """verl's rollout engine arguments with the CPU defaults under them: the run's own keys win.

    verl starts each rollout replica as vLLM's ``AsyncLLM`` with ``distributed_executor_backend="mp"`` and then
    ``**engine_kwargs`` (``vllm_async_server.py``), so these reach vLLM. With ``uni`` the workers get
    ``VLLM_ENABLE_V1_MULTIPROCESSING=0``, without which vLLM's CPU platform turns ``uni`` back into ``mp``. The
    dtype is not among them: verl passes its own ``rollout.dtype``, which :func:`settings` sets.
    """
    node = OmegaConf.select(config, "actor_rollout_ref.rollout.engine_kwargs.vllm")
    own = OmegaConf.to_container(node) if node is not None else {}
    tp = int(OmegaConf.select(config, "actor_rollout_ref.rollout.tensor_model_parallel_size") or 1)
    defaults = {k: v for k, v in cpu_engine_defaults(tp).items() if k != "dtype"}
    return {**defaults, **{k: v for k, v in own.items() if v is not None}}


def apply(config: DictConfig, chosen: list[Setting] | None = None) -> list[Setting]:
    """Write ``chosen`` (default :func:`settings`) into ``config``, adding keys verl's schema lacks; log each."""
    applied = settings(config) if chosen is None else chosen
    if chosen is None and joins_existing_cluster(config):
        logger.warning(
            "gr_vl cpu: joining a running Ray cluster: ray_init.num_cpus and ray_init.resources left unset, the "
            "nodes offer their own CPUs and '%s' resources",
            RAY_RESOURCE,
        )
    with open_dict(config):
        for s in applied:
            if isinstance(s.value, dict):
                node = OmegaConf.select(config, s.key)
                merged = {**(OmegaConf.to_container(node) if node is not None else {}), **s.value}
                OmegaConf.update(config, s.key, merged, force_add=True, merge=False)
            else:
                OmegaConf.update(config, s.key, s.value, force_add=True)
            logger.warning("gr_vl cpu: %s=%s (%s)", s.key, s.value, s.why)
    return applied
