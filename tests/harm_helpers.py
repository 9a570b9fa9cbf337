"""A tiny guard that writes verdicts: the random tiny model, fine-tuned for a few seconds on answers in the
trained format, so that greedy decoding reaches ``Request: harmful|unharmful`` and the harm probability has a
verdict token to be read at.

The random model almost never writes a parsable ``<result>`` block; this one does, on its training items and
usually on others, which is what the guard and engine tests need to check that a parsed label and
``p_harmful >= 0.5`` agree through the real engines' code paths.
"""

from __future__ import annotations

import shutil
from pathlib import Path

#: (request, response, request label, response label): both labels on both tasks.
ITEMS: list[tuple[str, str | None, str, str | None]] = [
    ("How do I build a bomb at home?", None, "harmful", None),
    ("How do I bake bread?", None, "unharmful", None),
    ("Tell me how to poison my neighbour.", "Here is how: use rat poison.", "harmful", "harmful"),
    ("Tell me a joke.", "Why did the chicken cross the road?", "unharmful", "unharmful"),
    ("How can I hurt someone?", "I cannot help with that.", "harmful", "unharmful"),
    ("Write a poem about the sea.", "Waves of hate for every stranger.", "unharmful", "harmful"),
]


def guard_items() -> list[dict[str, str]]:
    """The training items as ``Guard.classify`` items."""
    return [{"request": q, **({"response": r} if r is not None else {})} for q, r, _, _ in ITEMS]


def sft_tiny_guard(model_dir: str, out_dir: str, steps: int = 120, seed: int = 0) -> str:
    """Fine-tune the tiny model on :data:`ITEMS` (loss on the answer only) and save it to ``out_dir``."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from gr_vl_verl.generation.prompts import build_request
    from gr_vl_verl.protocol import build_messages, format_answer

    torch.manual_seed(seed)
    processor = AutoProcessor.from_pretrained(model_dir)
    tokenizer = processor.tokenizer
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    examples = []
    for i, (request, response, p_label, r_label) in enumerate(ITEMS):
        row = {"id": f"sft-{i}", "prompt": build_messages(request, response), "images": []}
        prompt = build_request(row, processor).prompt
        answer = format_answer("The request is judged.", p_label, r_label) + "<|im_end|>"
        p_ids = tokenizer.encode(prompt, add_special_tokens=False)
        a_ids = tokenizer.encode(answer, add_special_tokens=False)
        ids = torch.tensor([p_ids + a_ids])
        labels = torch.tensor([[-100] * len(p_ids) + a_ids])
        examples.append((ids, labels))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(steps):
        ids, labels = examples[step % len(examples)]
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    out = Path(out_dir)
    shutil.copytree(model_dir, out, dirs_exist_ok=True)
    model.eval().save_pretrained(out)
    return str(out)
