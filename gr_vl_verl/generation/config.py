"""The settings of one generation run, their checks, and the seed of every (row, sample).

Pure Python: no torch, no Ray, no vLLM (whether vLLM is its CPU build is read from package metadata), so a
bad setting fails before anything heavy starts.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gr_vl_verl.cpu.vllm_dist import vllm_is_cpu_build
from gr_vl_verl.models.families import DEFAULT_FAMILY, ModelFamily

BACKENDS: tuple[str, ...] = ("vllm", "transformers")

#: Settings that decide what a shard holds. A folder made with other values of these refuses to be resumed;
#: the others (batch size, actors, GPUs, Ray address, progress) only decide how the work is spread.
OUTPUT_SETTINGS: tuple[str, ...] = (
    "model",
    "backend",
    "n",
    "temperature",
    "top_p",
    "max_tokens",
    "seed",
    "shard_size",
    "engine_kwargs",
    "min_pixels",
    "max_pixels",
)


class GenerationError(RuntimeError):
    """The work failed: a bad input row, an engine that would not start, a failed actor."""


@dataclass(frozen=True)
class GenerationConfig:
    """How to generate: model and backend, sampling, and how to spread the rows over Ray actors.

    Defaults are the evaluation protocol's decoding (greedy, top_p 1, 4096 new tokens; method §7); rejection
    sampling uses ``n=4, temperature=1.0, top_p=0.95`` (method §4).
    """

    model: str
    backend: str = "vllm"
    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 4096
    seed: int = 0
    batch_size: int = 64
    concurrency: int = 1
    shard_size: int = 1000
    # GPUs per actor; None: one per actor for vLLM (tensor_parallel_size with TP), none for transformers or
    # vLLM's CPU build.
    num_gpus: float | None = None
    num_cpus: float = 1.0
    tensor_parallel_size: int = 1
    # Passed to ``vllm.LLM(...)`` or ``AutoModelForImageTextToText.from_pretrained(...)``; JSON values only.
    engine_kwargs: dict[str, Any] = field(default_factory=dict)
    # The processor's image bounds (both or neither). None: those of the input's stage (input_pixels): the
    # released evaluator's for an eval parquet, the RL config's for an RL parquet, as verl's rollout passes them.
    min_pixels: int | None = None
    max_pixels: int | None = None
    ray_address: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "model", str(self.model))
        object.__setattr__(self, "engine_kwargs", dict(self.engine_kwargs or {}))
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        _at_least("n (samples per row)", self.n, 1)
        _at_least("max_tokens", self.max_tokens, 1)
        _at_least("batch_size", self.batch_size, 1)
        _at_least("concurrency", self.concurrency, 1)
        _at_least("shard_size", self.shard_size, 1)
        _at_least("tensor_parallel_size", self.tensor_parallel_size, 1)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        if not self.temperature >= 0:  # also refuses NaN
            raise ValueError(f"temperature must be >= 0 (0 is greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.num_gpus is not None and not self.num_gpus >= 0:
            raise ValueError(f"num_gpus must be >= 0, got {self.num_gpus}")
        if not self.num_cpus > 0:
            raise ValueError(f"num_cpus must be > 0, got {self.num_cpus}")
        if self.backend == "transformers" and self.tensor_parallel_size != 1:
            raise ValueError("tensor_parallel_size > 1 needs the vllm backend (transformers runs on one device)")
        if self.backend == "transformers" and (self.num_gpus or 0) > 1:
            raise ValueError(f"the transformers backend uses at most one GPU per actor, got num_gpus={self.num_gpus}")
        if self.backend == "vllm" and self.num_gpus == 0 and not vllm_is_cpu_build():
            raise ValueError("this vLLM build runs on GPUs: num_gpus must be > 0 (or left unset)")
        if self.backend == "vllm" and self.tensor_parallel_size > 1 and vllm_is_cpu_build():
            raise ValueError("tensor_parallel_size > 1 needs vLLM's GPU build; its CPU build runs one engine per actor")
        if self.backend == "vllm" and (self.num_gpus or 0) > 0 and vllm_is_cpu_build():
            raise ValueError(f"vLLM here is its CPU build, which uses no GPUs; got num_gpus={self.num_gpus}")
        try:
            json.dumps(self.engine_kwargs, sort_keys=True)
        except TypeError as e:
            raise ValueError(f"engine_kwargs must hold JSON values only: {e}") from None
        if (self.min_pixels is None) != (self.max_pixels is None):
            raise ValueError("min_pixels and max_pixels go together: give both or neither")
        if self.min_pixels is not None:
            _at_least("min_pixels", self.min_pixels, 1)
            _at_least("max_pixels", self.max_pixels, self.min_pixels)
        if not Path(self.model).expanduser().exists():
            raise ValueError(f"model path not found: {self.model}")

    @property
    def pixels(self) -> dict[str, int]:
        """The processor's call-time image bounds; empty when unset (the processor's own config then applies).

        Qwen2-VL's image processor in transformers 5.x applies call-time bounds only when both are given."""
        if self.min_pixels is None:
            return {}
        return {"min_pixels": self.min_pixels, "max_pixels": self.max_pixels}

    @property
    def greedy(self) -> bool:
        """Temperature 0: every sample of a row is the same, so it is generated once."""
        return self.temperature == 0

    @property
    def gpus_per_actor(self) -> float:
        if self.num_gpus is not None:
            return float(self.num_gpus)
        if self.backend == "vllm" and not vllm_is_cpu_build():
            return float(self.tensor_parallel_size)
        return 0.0

    def output_settings(self) -> dict[str, Any]:
        """The settings a finished shard depends on (what the manifest of an output folder records)."""
        values = asdict(self)
        out = {k: values[k] for k in OUTPUT_SETTINGS}
        out["model"] = str(Path(self.model).expanduser().resolve())
        out["temperature"] = float(self.temperature)
        out["top_p"] = float(self.top_p)
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def input_pixels(kind: str, family: ModelFamily = DEFAULT_FAMILY) -> tuple[int, int]:
    """The image bounds generation gives the processor for an input of ``kind`` (``eval`` or ``rl``).

    Evaluation sees images as the released evaluator did (``qwen_vl_utils``' defaults); mining sees the RL
    parquet's images as the policy will train on them (the RL config's bounds, verl's ``mm_processor_kwargs``).
    Both on ``family``'s grid (:mod:`gr_vl_verl.models.families`; the paper's pixels on Qwen2.5-VL).
    """
    return family.pixels("eval" if kind == "eval" else "rl")


def _at_least(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")


def sample_seed(seed: int, row_id: str, sample: int) -> int:
    """The seed of one sample, from the run's seed, the row id and the sample index only.

    Independent of batching, sharding and actor placement, so a row's samples are the same however the rows
    are spread. 63 bits: a valid seed for ``torch.manual_seed`` and vLLM's ``SamplingParams(seed=...)``.
    """
    digest = hashlib.sha256(f"{seed}\x00{row_id}\x00{sample}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def sample_seeds(config: GenerationConfig, row_id: str) -> list[int | None]:
    """One seed per sample; greedy decoding needs none."""
    if config.greedy:
        return [None] * config.n
    return [sample_seed(config.seed, row_id, j) for j in range(config.n)]
