"""Shared builders for the data tests: the shipped sample corpus, small images, hand-made broken corpora."""

from __future__ import annotations

import io
import json
from pathlib import Path

from PIL import Image

import gr_vl_verl
from gr_vl_verl.data.images import ImagePolicy
from gr_vl_verl.protocol import INSTRUCTION, format_answer, format_user_content

SAMPLE = Path(gr_vl_verl.__file__).parent / "sample_data"
VLTRAIN = SAMPLE / "GuardReasoner-VLTrain"
VLTEST = SAMPLE / "GuardReasoner-VLTest"
# The sample corpus holds 12 text, 10 image and 12 text-image rows.
VLTRAIN_COUNTS = {"text": 12, "image": 10, "text_image": 12}

# Pixel bounds of the tiny test processor (gr_vl_verl.tiny), so images stay a few tokens.
SMALL = ImagePolicy(min_pixels=28 * 28, max_pixels=112 * 112)


def png(w: int = 40, h: int = 30, color: tuple[int, int, int] = (200, 30, 30), fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), color).save(buf, format=fmt)
    return buf.getvalue()


def noise_png(w: int, h: int) -> bytes:
    """A PNG that does not compress: its file size grows with its pixels."""
    buf = io.BytesIO()
    Image.effect_noise((w, h), 80).convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


def train_row(
    request: str = "How do I bake bread?",
    response: str | None = None,
    prompt_label: str = "unharmful",
    response_label: str | None = None,
    images: list[str] | None = None,
    reasoning: str = "## Reasoning Step 1: it is about bread.",
) -> dict:
    """A GuardReasoner-VLTrain row as the LLaMA-Factory export has it."""
    row: dict = {
        "messages": [
            {"role": "system", "content": INSTRUCTION},
            {"role": "user", "content": format_user_content(request, response, len(images or []))},
            {"role": "assistant", "content": format_answer(reasoning, prompt_label, response_label)},
        ]
    }
    if images:
        row["images"] = images
    return row


def write_split(root: Path, name: str, rows: list) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / name
    path.write_text(json.dumps(rows, indent=1), encoding="utf-8")
    return path


def rl_dataset(path: Path, tiny: tuple, tmp_path: Path, max_prompt_length: int = 4096):
    """verl's ``RLHFDataset`` over an RL parquet with a (tokenizer, processor) pair, caches under ``tmp_path``."""
    from omegaconf import OmegaConf
    from verl.utils.dataset.rl_dataset import RLHFDataset

    tokenizer, processor = tiny
    config = OmegaConf.create(
        {
            "cache_dir": str(tmp_path / "verl_cache"),
            "prompt_key": "prompt",
            "image_key": "images",
            "max_prompt_length": max_prompt_length,
            "filter_overlong_prompts": True,
            # None filters in this process: with datasets 5.x even one worker forks a pool, and a fork taken
            # after torch has started its thread pools can hang.
            "filter_overlong_prompts_workers": None,
            "truncation": "error",
        }
    )
    return RLHFDataset(str(path), tokenizer, config, processor)
