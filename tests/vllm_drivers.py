"""Driver functions for the real-vLLM tests, each run in a child process (``ray_driver.run_driver``).

vLLM's engine starts worker processes with spawn and keeps threads until its process ends; a fresh
interpreter per driver keeps both out of the pytest process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def engine_samples(model: str, parquet: str, row_slice: list[int]) -> dict[str, Any]:
    """One engine, sampled (n=3, seeded): the same requests twice, and the samples of each row."""
    import pyarrow.parquet as pq

    from gr_vl_verl.data.schemas import row_id
    from gr_vl_verl.generation import GenerationConfig
    from gr_vl_verl.generation.engines import VLLMEngine
    from gr_vl_verl.generation.prompts import build_request

    kind = pq.read_schema(parquet).metadata[b"gr_vl_verl.kind"].decode()
    rows = [{**r, "id": row_id(kind, r)} for r in pq.read_table(parquet).to_pylist()][slice(*row_slice)]
    engine = VLLMEngine(
        GenerationConfig(model=model, n=3, temperature=1.0, top_p=0.95, seed=4, max_tokens=16, progress=False,
                         engine_kwargs={"max_model_len": 2048, "enforce_eager": True})
    )  # fmt: skip
    requests = [build_request(r, engine.processor) for r in rows]
    first = engine.generate(requests)
    again = engine.generate(list(reversed(requests)))[::-1]
    short = engine.generate(requests[:1], max_tokens=2)
    engine.close()  # the driver ends with os._exit: stop vLLM's engine process first
    as_lists = [[[c.text, c.tokens, c.finish_reason] for c in cs] for cs in first]
    return {
        "ids": [r["id"] for r in rows],
        "images": [len(r["images"] or []) for r in rows],
        "first": as_lists,
        "again": [[[c.text, c.tokens, c.finish_reason] for c in cs] for cs in again],
        "short": [[c.tokens, c.finish_reason] for c in short[0]],
    }


def cli(argv: list[str]) -> int:
    """``gr-vl`` in a fresh process (Ray and vLLM start there, not in pytest)."""
    from gr_vl_verl.cli import main

    return main(argv)


def read_outputs(folder: str) -> list[list[Any]]:
    from gr_vl_verl.data.schemas import read_generations

    rows = read_generations(Path(folder))
    return [[r["id"], r["sample"], r["output"], r["output_tokens"], r["finish_reason"]] for r in rows]


def guard_results(model: str, items: list[dict[str, Any]], max_tokens: int, engine_kwargs: dict[str, Any]) -> Any:
    """``load_guard(..., backend="vllm")`` in its own process: every key of every result."""
    from gr_vl_verl.guard import load_guard

    guard = load_guard(model, backend="vllm", max_tokens=max_tokens, engine_kwargs=engine_kwargs)
    results = guard.classify(items)
    guard.close()
    return results


def guard_probabilities(model: str, items: list[dict[str, Any]], threshold: float | None = None) -> list[dict]:
    """``load_guard(..., backend="vllm")`` results with their harm probabilities, greedy."""
    from gr_vl_verl.guard import load_guard

    # float32 as the checkpoint is: vLLM's dtype "auto" turns it into bfloat16 on its CPU build, whose coarse
    # logits can tie the two label tokens exactly (p = 0.5 while greedy picks the lower token id).
    engine = {"max_model_len": 2048, "enforce_eager": True, "dtype": "float32"}
    guard = load_guard(model, backend="vllm", max_tokens=64, engine_kwargs=engine)
    results = guard.classify(items, threshold=threshold)
    guard.close()
    return [{k: r[k] for k in ("output", "request", "response", "p_harmful", "label_source")} for r in results]
