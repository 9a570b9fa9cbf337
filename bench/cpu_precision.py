"""bf16 against fp32 on this machine's CPUs: why the plugin computes in fp32 on ``trainer.device=cpu``.

verl computes in bf16 by default and vLLM's ``dtype="auto"`` picks bf16 for a float32 checkpoint. On a CPU
without bf16 arithmetic (no AVX512-BF16, no AMX) torch computes bf16 matrix products on a slow path, so the
plugin sets fp32 there (docs/cpu.md, "Precision"). This bench measures both, the named baseline being bf16 (what
verl and vLLM would use), in the same run:

* ``matmul``: one (512 x hidden) @ (hidden x 512) product in torch, the shape of the tiny model's layers;
* ``vLLM decoding``: ``vllm.LLM.generate`` of the tiny Qwen2.5-VL (built offline), one fresh process per dtype,
  the engine in process as the plugin starts it on the CPU build, N text prompts x T tokens (``ignore_eos``).

Not a timed test: ``python bench/cpu_precision.py [--prompts N] [--tokens T]``; ``--quick`` (``make test``) runs
the matrix product only: the vLLM part starts two engines.
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

_DECODE = r"""
import json, os, sys, time
from gr_vl_verl.cpu.vllm_dist import cpu_engine_env, vllm_is_cpu_build
if vllm_is_cpu_build():
    os.environ.update(cpu_engine_env())
import vllm
model, dtype, prompts, tokens = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
llm = vllm.LLM(model=model, dtype=dtype, enforce_eager=True, max_model_len=2048, seed=0)
params = vllm.SamplingParams(max_tokens=tokens, temperature=1.0, ignore_eos=True)
texts = [f"Request: how do I keep item {i} safe at home?" for i in range(prompts)]
llm.generate(texts[:8], params, use_tqdm=False)  # warm-up
t0 = time.perf_counter()
out = llm.generate(texts, params, use_tqdm=False)
seconds = time.perf_counter() - t0
print("RESULT " + json.dumps({"tokens": sum(len(o.outputs[0].token_ids) for o in out), "seconds": seconds}))
"""


def matmul_ms(dtype_name: str, hidden: int, repeats: int) -> float:
    import torch

    dtype = getattr(torch, dtype_name)
    a, w = torch.randn(512, hidden, dtype=dtype), torch.randn(hidden, 512, dtype=dtype)
    for _ in range(3):
        a @ w
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ w
    return (time.perf_counter() - t0) / repeats * 1e3


def decode_tokens_per_s(model: Path, dtype: str, prompts: int, tokens: int) -> float:
    done = subprocess.run(
        [sys.executable, "-c", _DECODE, str(model), dtype, str(prompts), str(tokens)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"vLLM decoding in {dtype} failed (rc {done.returncode}):\n{done.stderr[-3000:]}")
    result = json.loads(lines[-1][len("RESULT ") :])
    return result["tokens"] / result["seconds"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=128, help="the matrix product's inner size (the demo model's)")
    parser.add_argument("--quick", action="store_true", help="the matrix product only (CI runs it)")
    args = parser.parse_args()
    import torch

    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"{torch.get_num_threads()} threads")  # fmt: skip
    repeats = 50 if args.quick else 500
    bf16, fp32 = (matmul_ms(d, args.hidden, repeats) for d in ("bfloat16", "float32"))
    print(f"matmul 512x{args.hidden} @ {args.hidden}x512: bf16 {bf16:.3f} ms (baseline), fp32 {fp32:.3f} ms, "
          f"fp32 {bf16 / fp32:.1f}x faster")  # fmt: skip
    if args.quick:
        print("quick: vLLM decoding skipped")
        return 0
    from gr_vl_verl.tiny import build_tiny_qwen2_5_vl

    with tempfile.TemporaryDirectory(prefix="gr_vl_bench_") as work:
        model = build_tiny_qwen2_5_vl(Path(work) / "model", hidden_size=args.hidden)
        rates = {d: decode_tokens_per_s(model, d, args.prompts, args.tokens) for d in ("bfloat16", "float32")}
    print(f"vLLM decoding, tiny Qwen2.5-VL, {args.prompts} prompts x {args.tokens} tokens: bf16 "
          f"{rates['bfloat16']:.0f} tokens/s (baseline), fp32 {rates['float32']:.0f} tokens/s, "
          f"{rates['float32'] / rates['bfloat16']:.2f}x")  # fmt: skip
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
