"""The generation pipeline with the vLLM engine against bare ``vllm.LLM.generate``, and vLLM's CPU build against
the transformers engine, on this machine's CPUs.

Baselines, measured in the same run, on the same RL rows (the bundled sample corpus repeated), the same tiny
Qwen2.5-VL and the same sampling settings (n samples at temperature 1, per-sample seeds):

* ``bare vLLM``: one ``vllm.LLM`` in a fresh process, prompts built as the pipeline builds them and the image
  bounds the pipeline gives vLLM's processor for this input (the RL stage's), one
  ``generate`` call for all requests (what a hand-written script would do), in vLLM's default layout (engine
  core and model worker in processes of their own; the named baseline) and with the engine in the script's
  process, as the plugin runs it on the CPU build (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, docs/cpu.md);
* ``pipeline (vLLM)``: ``gr-vl generate --backend vllm`` end to end (Ray Data, one actor given every core, as the
  bare script has them: ``--num-cpus``, sharded writes);
* ``transformers``: ``gr-vl generate --backend transformers`` end to end, one actor.

For each: engine start (seconds until the first request can go), rows/s and tokens/s of the generation itself.
The pipeline's generation time is its run time less its engine start (measured as the in-process bare engine's,
in a process of its own).

A single size mixes fixed start-up with decoding, so bare vLLM and the pipeline also run on ``--rows-large``
rows (default 4x ``--rows``), and the bench prints their **marginal** tokens/s: the extra tokens of the larger
run over its extra seconds, in which start-up cancels. Bare vLLM's seconds are its generation call (its start
excluded, as measured inside its process); the pipeline's are its whole run (Ray, the actor and its engine
start included in both sizes, so their difference is what the extra rows cost). Because a whole run's start
varies by about 10 s on two cores, the bench also prints the marginal of the pipeline's engine calls alone (the
summary's ``engine_seconds``: the actor's time inside its engine's ``generate``), which says whether the engine
decodes slower in the actor or the time goes between its calls. Goal: the pipeline keeps >= 0.9x bare vLLM's
marginal tokens/s. docs/generation.md records what was measured and where the time goes.

Not a timed test: ``python bench/generation_vllm_cpu.py [--rows N] [--rows-large M] [--n K] [--max-tokens T]
[--batch-size B]`` (``B``: the pipeline's rows per engine call, its default 64; bare vLLM always makes one call);
``--quick`` runs a few rows at one size, each of the three once, bare vLLM in process only (``make test`` runs it
so a broken bench fails CI; the larger size repeats the same calls, so it is left out there).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ENGINE_KWARGS = {"enforce_eager": True, "max_model_len": 2048}

_BARE = r"""
import json, os, sys, time
t0 = time.perf_counter()
import pyarrow.parquet as pq
import vllm
from transformers import AutoProcessor
from gr_vl_verl.cpu.vllm_dist import cpu_engine_env, vllm_is_cpu_build
from gr_vl_verl.data.schemas import row_id
from gr_vl_verl.generation import GenerationConfig
from gr_vl_verl.generation.config import input_pixels, sample_seeds
from gr_vl_verl.generation.engines import vllm_engine_kwargs, vllm_prompt, vllm_sampling_kwargs
from gr_vl_verl.generation.prompts import build_request
from gr_vl_verl.harm_prob import label_tokens, wanted_ids
from gr_vl_verl.models.detect import family_of_model
if vllm_is_cpu_build():  # as the plugin's engines start (bare() sets the engine layout itself)
    os.environ.update(cpu_engine_env())
model, parquet, n, max_tokens, engine = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
kind = pq.read_schema(parquet).metadata[b"gr_vl_verl.kind"].decode()
# the image bounds the pipeline gives vLLM's processor for this input (the RL stage's: every sample image is
# scaled up to at least 512x512 pixels, ~340 vision tokens); without them vLLM keeps its own, ~40x fewer tokens
low, high = input_pixels(kind, family_of_model(model))
config = GenerationConfig(model=model, n=n, temperature=1.0, max_tokens=max_tokens, seed=0, progress=False,
                          engine_kwargs=json.loads(engine), min_pixels=low, max_pixels=high)
llm = vllm.LLM(**vllm_engine_kwargs(config))
processor = AutoProcessor.from_pretrained(model)
ready = time.perf_counter()
rows = [{**r, "id": row_id(kind, r)} for r in pq.read_table(parquet).to_pylist()]
prompts, params = [], []
for r in rows:
    request = build_request(r, processor)
    for seed in sample_seeds(config, r["id"]):
        prompts.append(vllm_prompt(request))
        params.append(vllm.SamplingParams(**vllm_sampling_kwargs(config, seed)))
built = time.perf_counter()
outs = llm.generate(prompts, sampling_params=params, use_tqdm=False)
done = time.perf_counter()
tokens = sum(len(o.outputs[0].token_ids) for o in outs)
# The same requests asking, with the pipeline's own sampling settings, for the label tokens' log-probabilities
# at every position (the harm probabilities): what that costs vLLM itself. Same seeds, so the same tokens are
# drawn; the prompts are in vLLM's prefix cache by now, which makes this call's prefill cheaper than the first's.
ids = wanted_ids(label_tokens(lambda text: processor.tokenizer.encode(text, add_special_tokens=False)))
params = [vllm.SamplingParams(**vllm_sampling_kwargs(config, p.seed, logprob_ids=ids)) for p in params]
again = time.perf_counter()
outs = llm.generate(prompts, sampling_params=params, use_tqdm=False)
labels = time.perf_counter() - again
print("BARE " + json.dumps({"start": ready - t0, "gen": done - ready, "rows": len(rows), "tokens": tokens,
                            "gen_labels": (built - ready) + labels,  # prompts built once, counted in both
                            "tokens_labels": sum(len(o.outputs[0].token_ids) for o in outs)}))
sys.stdout.flush()
llm.llm_engine.engine_core.shutdown()  # vLLM's engine process, when it has one, is a child of its own
"""


def _run(argv: list[str], timeout: float, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(argv[:4])} ...\n{done.stderr[-3000:]}")
    return done


def prepare(work: Path, rows: int) -> tuple[Path, Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    import gr_vl_verl
    from gr_vl_verl.cli import main as cli_main
    from gr_vl_verl.data.schemas import RL_SCHEMA
    from gr_vl_verl.tiny import build_tiny_qwen2_5_vl

    model, prep = work / "model", work / "prep"
    if not (model / "config.json").exists():  # a second size reuses the model and the prepared sample
        build_tiny_qwen2_5_vl(model)
    if not (prep / "rl_train.parquet").exists():
        vltrain = Path(gr_vl_verl.__file__).parent / "sample_data" / "GuardReasoner-VLTrain"
        argv = ["prep", "vltrain", "--data-root", str(vltrain), "--out", str(prep), "--formats", "rl",
                "--no-progress", "--min-pixels", "784", "--max-pixels", "12544"]  # fmt: skip
        assert cli_main(argv) == 0
    base = pq.read_table(prep / "rl_train.parquet")
    out = []
    for i in range(rows):
        row = dict(base.slice(i % base.num_rows, 1).to_pylist()[0])
        row["extra_info"] = {**row["extra_info"], "id": f"{row['extra_info']['id']}#{i}", "index": i}
        out.append(row)
    path = work / f"rl_{rows}.parquet"
    table = pa.Table.from_pylist(out, schema=RL_SCHEMA).replace_schema_metadata(base.schema.metadata)
    pq.write_table(table, path)
    return model, path


def bare(model: Path, data: Path, n: int, max_tokens: int, in_process: bool) -> dict:
    """``in_process``: vLLM's engine core and model in the script's process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``,
    what the pipeline's actor does on the CPU build), else vLLM's default, three processes (docs/cpu.md)."""
    env = dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="0" if in_process else "1")
    done = _run([sys.executable, "-c", _BARE, str(model), str(data), str(n), str(max_tokens),
                 json.dumps(ENGINE_KWARGS)], timeout=1800, env=env)  # fmt: skip
    return json.loads(next(ln for ln in done.stdout.splitlines() if ln.startswith("BARE "))[5:])


def pipeline(model: Path, data: Path, out: Path, backend: str, n: int, max_tokens: int, batch_size: int) -> dict:
    argv = [sys.executable, "-m", "gr_vl_verl", "generate", "--data", str(data), "--model", str(model), "--out",
            str(out), "--backend", backend, "--n", str(n), "--temperature", "1.0", "--max-tokens", str(max_tokens),
            "--batch-size", str(batch_size), "--seed", "0", "--no-progress"]  # fmt: skip
    if backend == "vllm":
        # the cores bare vLLM's script has: Ray gives an actor OMP_NUM_THREADS = its num_cpus (1 by default), and
        # the engine's matrix products run on that many threads (docs/generation.md, run 6)
        argv += ["--engine-kwargs", json.dumps(ENGINE_KWARGS), "--num-cpus", str(os.cpu_count() or 1)]
    t0 = time.perf_counter()
    _run(argv, timeout=3600)
    total = time.perf_counter() - t0
    summary = json.loads((out / "generate_summary.json").read_text())
    return {
        "total": total,
        "rows": summary["rows"],
        "tokens": summary["output_tokens"],
        "engine": summary.get("engine_seconds") or float("nan"),  # in the engines' generate calls
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=136)
    parser.add_argument("--rows-large", type=int, default=None, help="the larger size of the marginal (default 4x)")
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64, help="the pipeline's rows per engine call (its default)")
    parser.add_argument("--quick", action="store_true", help="8 rows x 2 samples x 8 tokens")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.n, args.max_tokens = 8, 2, 8
    large = args.rows_large or 4 * args.rows
    if large <= args.rows:
        parser.error("--rows-large must be more than --rows")
    with tempfile.TemporaryDirectory(prefix="gr_vl_bench_") as tmp:
        work = Path(tmp)
        model, data = prepare(work, args.rows)
        # the pipeline's engine layout; in the full run also vLLM's default one, the named baseline
        ip = bare(model, data, args.n, args.max_tokens, in_process=True)
        b = ip if args.quick else bare(model, data, args.n, args.max_tokens, in_process=False)
        p = pipeline(model, data, work / "pipe", "vllm", args.n, args.max_tokens, args.batch_size)
        if not args.quick:
            _, data_large = prepare(work, large)
            b_large = bare(model, data_large, args.n, args.max_tokens, in_process=False)
            ip_large = bare(model, data_large, args.n, args.max_tokens, in_process=True)
            p_large = pipeline(model, data_large, work / "pipe_large", "vllm", args.n, args.max_tokens, args.batch_size)
        t = pipeline(model, data, work / "hf", "transformers", args.n, args.max_tokens, args.batch_size)
    gen_p = max(p["total"] - ip["start"], 1e-9)  # its engine starts as the in-process bare engine does
    name = "bare vLLM, in process (baseline)" if args.quick else "bare vLLM, vLLM's processes (baseline)"
    rows = [
        (name, b["start"], b["rows"] / b["gen"], b["tokens"] / b["gen"]),
        (
            "bare vLLM, label log-probabilities",
            b["start"],
            b["rows"] / b["gen_labels"],
            b["tokens_labels"] / b["gen_labels"],
        ),
        *(
            []
            if args.quick
            else [("bare vLLM, in process", ip["start"], ip["rows"] / ip["gen"], ip["tokens"] / ip["gen"])]
        ),
        ("pipeline (vLLM)", p["total"] - gen_p, p["rows"] / gen_p, p["tokens"] / gen_p),
        ("pipeline (vLLM), its engine calls", float("nan"), p["rows"] / p["engine"], p["tokens"] / p["engine"]),
        ("pipeline (transformers), end to end", float("nan"), t["rows"] / t["total"], t["tokens"] / t["total"]),
    ]
    print(
        f"{args.rows} rows x {args.n} samples, up to {args.max_tokens} tokens, tiny Qwen2.5-VL, {os.cpu_count()} CPUs; "
        f"the pipeline's engine calls take {args.batch_size} rows"
    )
    print(f"{'':38} {'start s':>8} {'rows/s':>8} {'tokens/s':>9} {'x bare tok/s':>13}")
    for name, start, rps, tps in rows:
        print(f"{name:38} {start:8.1f} {rps:8.2f} {tps:9.1f} {tps / (b['tokens'] / b['gen']):13.2f}")
    print(f"pipeline end to end: {p['total']:.1f} s (engine start counted as in-process bare vLLM's: "
          f"{ip['start']:.1f} s); "
          f"transformers end to end: {t['total']:.1f} s")  # fmt: skip
    if args.quick:
        print("quick: one size, no marginal figures")
        return
    bare_m = marginal(b["tokens"], b["gen"], b_large["tokens"], b_large["gen"])
    labels_m = marginal(b["tokens_labels"], b["gen_labels"], b_large["tokens_labels"], b_large["gen_labels"])
    ip_m = marginal(ip["tokens"], ip["gen"], ip_large["tokens"], ip_large["gen"])
    pipe_m = marginal(p["tokens"], p["total"], p_large["tokens"], p_large["total"])
    calls_m = marginal(p["tokens"], p["engine"], p_large["tokens"], p_large["engine"])
    print(f"marginal tokens/s, {args.rows} -> {large} rows: bare vLLM {bare_m:.0f} (generation call), bare vLLM "
          f"with label log-probabilities {labels_m:.0f} ({labels_m / bare_m:.2f}x), bare vLLM in process "
          f"{ip_m:.0f} ({ip_m / bare_m:.2f}x), pipeline {pipe_m:.0f} (whole run): {pipe_m / bare_m:.2f}x bare, "
          f"{pipe_m / labels_m:.2f}x bare with label log-probabilities, "
          f"{pipe_m / ip_m:.2f}x bare in process")  # fmt: skip
    print(f"marginal tokens/s of the pipeline's engine calls (its actor's generate calls, without Ray's, the "
          f"actor's and the engine's start): {calls_m:.0f}: {calls_m / labels_m:.2f}x bare with label "
          f"log-probabilities (what each call asks for), {calls_m / bare_m:.2f}x bare; its calls took "
          f"{p['engine']:.1f} and {p_large['engine']:.1f} s of its {p['total']:.1f} and {p_large['total']:.1f} s "
          f"runs")  # fmt: skip


def marginal(tokens: int, seconds: float, tokens_large: int, seconds_large: float) -> float:
    """Tokens/s of what the larger run did beyond the smaller one; start-up, paid by both, cancels."""
    return (tokens_large - tokens) / max(seconds_large - seconds, 1e-9)


if __name__ == "__main__":
    main()
