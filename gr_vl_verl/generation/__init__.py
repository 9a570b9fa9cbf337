"""Batch guard generation over our RL / eval parquets, as a Ray Data pipeline (docs/generation.md).

The Python API mining and evaluation build on::

    from gr_vl_verl.generation import GenerationConfig, generate
    summary = generate("rl_train.parquet", "gens/", GenerationConfig(model="ckpt/", n=4, temperature=1.0, top_p=0.95))
    # gens/shard-*.parquet: GENERATIONS_SCHEMA rows; read them with gr_vl_verl.data.schemas.read_generations

Importing this package loads neither torch, Ray nor vLLM; ``generate`` does, when it runs.
"""

from gr_vl_verl.generation.config import GenerationConfig, GenerationError, sample_seed
from gr_vl_verl.generation.pipeline import BadRowError, generate
from gr_vl_verl.generation.shards import FolderMismatch
from gr_vl_verl.generation.summary import GenerationSummary

__all__ = [
    "BadRowError",
    "FolderMismatch",
    "GenerationConfig",
    "GenerationError",
    "GenerationSummary",
    "generate",
    "sample_seed",
]
