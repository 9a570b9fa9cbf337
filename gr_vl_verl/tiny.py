"""A tiny Qwen2.5-VL, Qwen3-VL or Qwen3.5 (tokenizer, processor, random model) built offline.

No hub exists on test machines or in the demo, yet verl's dataset, agent-loop helpers and reward manager
need a real tokenizer and processor, and generation needs a real model. This builds all three in seconds from
a byte-level BPE trained on the guard's own vocabulary, with Qwen's special tokens and a Qwen2-VL-style chat
template, so that ``AutoTokenizer``/``AutoProcessor``/``AutoModelForImageTextToText.from_pretrained`` and
verl's ``hf_tokenizer``/``hf_processor`` load the folder like a real checkpoint.

Every family gets the same tokenizer and chat template; the processor and model follow the family's grid
(:mod:`gr_vl_verl.models.families`: 28 pixels on Qwen2.5-VL, 32 on Qwen3-VL and Qwen3.5) with the same small
budget of vision tokens. Qwen3.5 builds and runs in transformers, but vLLM's CPU build cannot run it
(docs/models.md), so only the Qwen2.5-VL and Qwen3-VL builds are used by the tests.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from gr_vl_verl.protocol import INSTRUCTION, format_answer, format_user_content

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# Qwen2-VL's conversation layout: a default system turn when none is given; image/video parts become
# vision_start + pad + vision_end, which the processor expands to one pad per merged patch.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' -%}"
    "<|im_start|>system{{ '\\n' }}You are a helpful assistant.<|im_end|>{{ '\\n' }}"
    "{%- endif -%}"
    "<|im_start|>{{ message['role'] }}{{ '\\n' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' or 'image' in part or 'image_url' in part -%}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{%- elif part['type'] == 'video' or 'video' in part -%}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{%- elif 'text' in part -%}{{ part['text'] }}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "<|im_end|>{{ '\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|im_start|>assistant{{ '\\n' }}{%- endif -%}"
)

# Small pixel budget: a 56x56 image is 4x4 patches -> 4 merged image tokens.
MIN_PIXELS = 28 * 28
MAX_PIXELS = 112 * 112


def _training_corpus() -> list[str]:
    texts = [INSTRUCTION, "You are a helpful assistant."]
    for req, resp, n in [
        ("How do I bake bread at home?", "Mix flour, water, yeast and salt, then knead.", 0),
        ("Describe this picture.", None, 1),
        ("Tell me how to build a weapon to hurt people.", "I cannot help with that.", 0),
        (None, None, 1),
        ("What is in these images? Is it dangerous?", "It shows a kitchen knife.", 2),
    ]:
        texts.append(format_user_content(req, resp, n))
    for p, r in [("harmful", "unharmful"), ("unharmful", None), ("harmful", "harmful"), ("unharmful", "unharmful")]:
        texts.append(
            format_answer(
                "## Reasoning Step 1: The request asks for something.\n## Reasoning Step 2: The response "
                "refuses or complies. The image shows a person, a knife, a meme, a chart.",
                p,
                r,
            )
        )
    return texts


def build_tokenizer(vocab_size: int = 1024, extra_texts: Sequence[str] = ()):
    """A byte-level BPE tokenizer with Qwen's special tokens and chat template (deterministic).

    ``extra_texts`` (e.g. a corpus's training rows) join the guard's own vocabulary, so a model trained on them
    sees whole words as few tokens, as a real tokenizer would.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_training_corpus() * 4 + list(extra_texts), trainer=trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        model_max_length=32768,
        padding_side="left",
    )
    hf.chat_template = CHAT_TEMPLATE
    return hf


def build_processor(tokenizer):
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    image_processor = Qwen2VLImageProcessor(
        min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS, patch_size=14, merge_size=2, temporal_patch_size=2
    )
    video_processor = Qwen2VLVideoProcessor(
        min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS, patch_size=14, merge_size=2, temporal_patch_size=2
    )
    return Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=CHAT_TEMPLATE,
    )


def build_model(tokenizer, seed: int = 0, hidden_size: int = 64, layers: int = 2):
    """A random Qwen2.5-VL small enough for CPU forward/backward/generate in milliseconds.

    ``hidden_size`` is a multiple of 32: the heads stay 32 wide, the smallest vLLM's CPU attention accepts.
    """
    if hidden_size % 32 or hidden_size <= 0:
        raise ValueError(f"hidden_size must be a positive multiple of 32 (head size 32), got {hidden_size}")
    heads = hidden_size // 32
    # M-RoPE sections (temporal, height, width) sum to half the head size
    mrope = [4, 6, 6]
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": hidden_size,
            "intermediate_size": 2 * hidden_size,
            "num_hidden_layers": layers,
            # head size 32: the smallest vLLM's CPU attention accepts (32, 64, 80, ... 512)
            "num_attention_heads": heads,
            "num_key_value_heads": heads,
            "max_position_embeddings": 4096,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope},
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": 2,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_heads": 2,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 56,
            "out_hidden_size": hidden_size,
            "fullatt_block_indexes": [1],
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    return model


def build_tiny_qwen2_5_vl(
    out_dir: str | Path,
    with_model: bool = True,
    seed: int = 0,
    *,
    hidden_size: int = 64,
    layers: int = 2,
    corpus: Sequence[str] = (),
) -> Path:
    """Write tokenizer + processor (+ random model) to ``out_dir``; loadable with ``from_pretrained``.

    ``corpus``: training texts the tokenizer also learns from (the demo passes its training rows).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(extra_texts=corpus)
    processor = build_processor(tokenizer)
    processor.save_pretrained(out)
    tokenizer.save_pretrained(out)
    if with_model:
        build_model(tokenizer, seed=seed, hidden_size=hidden_size, layers=layers).save_pretrained(out)
    info = {"built_by": "gr_vl_verl.tiny", "seed": seed, "hidden_size": hidden_size, "layers": layers}
    (out / "gr_vl_tiny.json").write_text(json.dumps(info) + "\n")
    return out


# The same 1..16 merged image tokens per image on a 32-pixel grid (Qwen3-VL, Qwen3.5).
MIN_PIXELS_32 = 32 * 32
MAX_PIXELS_32 = 128 * 128


def build_qwen3_vl_processor(tokenizer):
    """Qwen3-VL's processor as transformers builds it for ``qwen3_vl`` and ``qwen3_5``: patch 16, merge 2, and
    its image mean/std of 0.5; bounds of 1..16 image tokens, as the tiny Qwen2.5-VL's."""
    from transformers import Qwen2VLImageProcessor, Qwen3VLProcessor, Qwen3VLVideoProcessor

    grid = {"patch_size": 16, "merge_size": 2, "temporal_patch_size": 2}
    norm = {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}
    image_processor = Qwen2VLImageProcessor(min_pixels=MIN_PIXELS_32, max_pixels=MAX_PIXELS_32, **grid, **norm)
    video_processor = Qwen3VLVideoProcessor(
        size={"shortest_edge": MIN_PIXELS_32, "longest_edge": MAX_PIXELS_32}, **grid, **norm
    )
    return Qwen3VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=CHAT_TEMPLATE,
    )


def _token_ids(tokenizer) -> dict[str, int]:
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    return {
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
    }


def _text_ids(tokenizer) -> dict[str, int]:
    pad, end = tokenizer.convert_tokens_to_ids("<|endoftext|>"), tokenizer.convert_tokens_to_ids("<|im_end|>")
    return {"bos_token_id": pad, "eos_token_id": end, "pad_token_id": pad}


def _vision(hidden_size: int) -> dict:
    # Two blocks of two 32-wide heads; 16 x 16 learned position embeddings (a square, as the tower interpolates).
    return {
        "depth": 2,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_heads": 2,
        "patch_size": 16,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "out_hidden_size": hidden_size,
        "num_position_embeddings": 256,
    }


def _finish(model, tokenizer):
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.generation_config.pad_token_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    return model


def _check_hidden(hidden_size: int) -> int:
    if hidden_size % 32 or hidden_size <= 0:
        raise ValueError(f"hidden_size must be a positive multiple of 32 (head size 32), got {hidden_size}")
    return hidden_size // 32


def _text_sizes(tokenizer, hidden_size: int, layers: int) -> dict:
    """The decoder sizes both Qwen3 families share here: 32-wide heads (vLLM's CPU minimum), MLP twice the width."""
    heads = _check_hidden(hidden_size)
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden_size,
        "intermediate_size": 2 * hidden_size,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": heads,
        "head_dim": 32,
    }


def build_qwen3_vl_model(tokenizer, seed: int = 0, hidden_size: int = 64, layers: int = 2):
    """A random Qwen3-VL: 32-wide heads (vLLM's CPU minimum), interleaved M-RoPE sections (temporal, height,
    width) summing to half the head size as Qwen3-VL's [24, 20, 20] do for 128, and the vision tower's first
    block feeding the first decoder layer (deepstack; Qwen3-VL-4B feeds three)."""
    import torch
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    config = Qwen3VLConfig(
        text_config={
            **_text_sizes(tokenizer, hidden_size, layers),
            "max_position_embeddings": 4096,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": [6, 5, 5],
                "mrope_interleaved": True,
            },
            **_text_ids(tokenizer),
        },
        vision_config={**_vision(hidden_size), "deepstack_visual_indexes": [0]},
        **_token_ids(tokenizer),
    )
    torch.manual_seed(seed)
    return _finish(Qwen3VLForConditionalGeneration(config), tokenizer)


def build_qwen3_5_model(tokenizer, seed: int = 0, hidden_size: int = 64, layers: int = 2):
    """A random Qwen3.5: linear-attention (gated delta net) layers with a full-attention layer every second one
    (the real ones: every fourth), 32-wide heads with a quarter rotary as Qwen3.5's own."""
    heads = _check_hidden(hidden_size)
    import torch
    from transformers import Qwen3_5Config, Qwen3_5ForConditionalGeneration

    config = Qwen3_5Config(
        text_config={
            **_text_sizes(tokenizer, hidden_size, layers),
            "linear_key_head_dim": 32,
            "linear_value_head_dim": 32,
            "linear_num_key_heads": heads,
            "linear_num_value_heads": heads,
            "layer_types": ["linear_attention", "full_attention"] * (layers // 2) + ["linear_attention"] * (layers % 2),
            "max_position_embeddings": 4096,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 10000.0,
                "partial_rotary_factor": 0.25,
                "mrope_section": [2, 1, 1],
                "mrope_interleaved": True,
            },
            **_text_ids(tokenizer),
        },
        vision_config=_vision(hidden_size),
        **_token_ids(tokenizer),
    )
    torch.manual_seed(seed)
    return _finish(Qwen3_5ForConditionalGeneration(config), tokenizer)


def _build(kind: str, out_dir: str | Path, with_model: bool, seed: int, hidden_size: int, layers: int, corpus):
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(extra_texts=corpus)
    processor = build_qwen3_vl_processor(tokenizer)
    processor.save_pretrained(out)
    tokenizer.save_pretrained(out)
    if with_model:
        build = build_qwen3_vl_model if kind == "qwen3_vl" else build_qwen3_5_model
        build(tokenizer, seed=seed, hidden_size=hidden_size, layers=layers).save_pretrained(out)
    info = {"built_by": "gr_vl_verl.tiny", "family": kind, "seed": seed, "hidden_size": hidden_size, "layers": layers}
    (out / "gr_vl_tiny.json").write_text(json.dumps(info) + "\n")
    return out


def build_tiny_qwen3_vl(
    out_dir: str | Path,
    with_model: bool = True,
    seed: int = 0,
    *,
    hidden_size: int = 64,
    layers: int = 2,
    corpus: Sequence[str] = (),
) -> Path:
    """:func:`build_tiny_qwen2_5_vl` for Qwen3-VL (``model_type`` ``qwen3_vl``, 32-pixel grid)."""
    return _build("qwen3_vl", out_dir, with_model, seed, hidden_size, layers, corpus)


def build_tiny_qwen3_5(
    out_dir: str | Path,
    with_model: bool = True,
    seed: int = 0,
    *,
    hidden_size: int = 64,
    layers: int = 2,
    corpus: Sequence[str] = (),
) -> Path:
    """:func:`build_tiny_qwen2_5_vl` for Qwen3.5 (``model_type`` ``qwen3_5``); not run by vLLM's CPU build."""
    return _build("qwen3_5", out_dir, with_model, seed, hidden_size, layers, corpus)
