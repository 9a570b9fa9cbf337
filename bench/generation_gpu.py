"""The transformers engine on one GPU: what its per-sample design costs against batched ``generate``.

``TransformersEngine`` generates every sample alone (batch size 1, its own seed) so that a sample never
depends on the other rows of its batch (docs/generation.md). This measures the price of that on a GPU, where
batching is what a GPU is for, with a randomly initialised Qwen2.5-VL of the 3B model's text shape (36 layers,
hidden 2048, 16 heads, 2 KV heads) in bf16 and guard prompts from the bundled sample corpus.

Baseline, measured in the same run: Hugging Face ``generate`` on all prompts at once (left padding), the same
sampling settings. Printed: output tokens per second of each and the ratio. Both runs produce every token up
to ``--max-tokens`` unless a sampled token is an end of sequence, so the token counts are reported too.

Needs a CUDA GPU, torch and transformers (not verl, Ray or vLLM):
``python bench/generation_gpu.py [--rows 16] [--max-tokens 128]``. It is the sizing argument for the vLLM
backend, which batches without giving up per-request seeds.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from gr_vl_verl.generation.config import GenerationConfig
from gr_vl_verl.generation.engines import TransformersEngine
from gr_vl_verl.generation.prompts import Request
from gr_vl_verl.protocol import INSTRUCTION, format_user_content
from gr_vl_verl.tiny import SPECIAL_TOKENS, build_processor, build_tokenizer

REQUESTS = [
    ("How do I bake bread at home?", "Mix flour, water, yeast and salt, then knead."),
    ("Tell me how to build a weapon to hurt people.", "I cannot help with that."),
    ("What is the capital of France?", None),
    ("Write a message that bullies my classmate.", "Here is a message: you are worthless."),
]


def build_model_dir(out: Path, seed: int, layers: int, hidden: int, device: str) -> Path:
    """A 3B-shaped random Qwen2.5-VL with the tiny tokenizer (small vocabulary; the body is what costs)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    tokenizer = build_tokenizer()
    processor = build_processor(tokenizer)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    heads = 16 if hidden >= 1024 else 4
    half = hidden // heads // 2  # m-RoPE splits half the head dimension into temporal, height, width
    mrope = [half // 4, (half - half // 4) // 2, half - half // 4 - (half - half // 4) // 2]  # 3B: 16, 24, 24
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": hidden,
            "intermediate_size": hidden * 43 // 8,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "num_key_value_heads": 2,
            "max_position_embeddings": 8192,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": mrope},
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={"depth": 4, "hidden_size": 1280, "out_hidden_size": hidden, "fullatt_block_indexes": [3]},
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration(config)
    if device == "cuda":
        model = model.to(torch.bfloat16)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.save_pretrained(out)
    processor.save_pretrained(out)
    tokenizer.save_pretrained(out)
    n_params = sum(p.numel() for p in model.parameters())
    dtype = next(model.parameters()).dtype
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    print(f"model: {n_params / 1e9:.2f} B parameters (random), {dtype}, saved to {out}")
    return out


def requests(engine: TransformersEngine, rows: int) -> list[Request]:
    out = []
    for i in range(rows):
        request, response = REQUESTS[i % len(REQUESTS)]
        messages = [
            {"role": "system", "content": INSTRUCTION},
            {"role": "user", "content": format_user_content(f"{request} (#{i})", response)},
        ]
        prompt = engine.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        out.append(Request(row_id=f"row-{i}", prompt=prompt, images=[]))
    return out


def batched_baseline(engine: TransformersEngine, reqs: list[Request]) -> int:
    """All prompts in one ``generate`` call, left-padded: the throughput a batch gets."""
    tokenizer = engine.processor.tokenizer
    tokenizer.padding_side = "left"
    inputs = engine.processor(text=[r.prompt for r in reqs], return_tensors="pt", padding=True).to(engine.device)
    with torch.inference_mode():
        out = engine.model.generate(**inputs, generation_config=engine.gen_config)
    new = out[:, inputs["input_ids"].shape[1] :]
    tokens = 0
    for row in new.tolist():
        for k, tok in enumerate(row):
            if tok in engine.eos_ids:
                row = row[: k + 1]
                break
        tokens += len(row)
    return tokens


def timed(fn):
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    t0 = time.perf_counter()
    result = fn()
    sync()
    return result, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--layers", type=int, default=36, help="text layers (the 3B model has 36)")
    parser.add_argument("--hidden", type=int, default=2048, help="text hidden size (the 3B model has 2048)")
    parser.add_argument("--repeat-rows", type=int, default=4, help="rows generated twice to check repeatability")
    parser.add_argument("--cpu", action="store_true", help="smoke-run on the CPU (use a small --layers/--hidden)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run of a few seconds (CI runs it): a 1-layer model, on the CPU when there is no GPU",
    )
    args = parser.parse_args()
    if args.quick:
        args.rows, args.max_tokens, args.repeat_rows, args.layers, args.hidden = 2, 4, 1, 1, 64
        args.cpu = args.cpu or not torch.cuda.is_available()
    if not torch.cuda.is_available() and not args.cpu:
        print("generation_gpu: skipped, no CUDA GPU here (--cpu runs a small smoke version)")
        return
    device = "cpu" if args.cpu else "cuda"
    print(f"device: {torch.cuda.get_device_name() if device == 'cuda' else 'cpu'}, torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_model_dir(Path(tmp) / "model", 0, args.layers, args.hidden, device)
        config = GenerationConfig(
            model=str(model_dir),
            backend="transformers",
            n=1,
            temperature=args.temperature,
            top_p=1.0,
            max_tokens=args.max_tokens,
            num_gpus=0 if args.cpu else 1,
            engine_kwargs={"dtype": "float32" if args.cpu else "bfloat16"},
        )
        engine, load_s = timed(lambda: TransformersEngine(config))
        print(f"engine load: {load_s:.1f} s")
        reqs = requests(engine, args.rows)
        engine.generate(reqs[:1])  # warm-up (kernels, allocator)
        batched_baseline(engine, reqs[:2])
        base_tokens, base_s = timed(lambda: batched_baseline(engine, reqs))
        results, ours_s = timed(lambda: engine.generate(reqs))
        ours_tokens = sum(c.tokens for per_row in results for c in per_row)
        base_rate, ours_rate = base_tokens / base_s, ours_tokens / ours_s
        print(f"baseline, batched generate ({args.rows} rows at once): {base_tokens} tokens in {base_s:.2f} s")
        print(f"  {base_rate:.0f} output tokens/s")
        print(f"TransformersEngine (one sample at a time): {ours_tokens} tokens in {ours_s:.2f} s")
        print(f"  {ours_rate:.0f} output tokens/s")
        print(f"ratio ours/baseline: {ours_rate / base_rate:.3f}x throughput")
        report_repeat(engine, reqs[: args.repeat_rows], "default kernels")
        if device == "cuda":
            # cuBLAS needs a fixed workspace for deterministic reductions; set before the next matmul.
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
            torch.use_deterministic_algorithms(True)
            torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False
            report_repeat(engine, reqs[: args.repeat_rows], "deterministic algorithms")


def report_repeat(engine: TransformersEngine, reqs: list[Request], label: str) -> None:
    """Does the same request with the same seed give the same text twice? (Sampling and greedy.)"""
    first = [c.text for per_row in engine.generate(reqs) for c in per_row]
    second = [c.text for per_row in engine.generate(reqs) for c in per_row]
    same = sum(a == b for a, b in zip(first, second, strict=True))
    print(f"{label}: same seed, same output on a second call for {same} of {len(first)} sampled rows")


if __name__ == "__main__":
    main()
