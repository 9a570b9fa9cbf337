"""A fix to verl 0.9.1 that every run of the guard needs, on GPUs and CPUs alike.

verl's Qwen2-VL/Qwen2.5-VL forward (``verl/models/transformers/qwen2_vl.py``, ``_get_input_embeds``) runs a
dummy image through the vision tower for a text-only batch, so every rank's graph holds the tower's
parameters, and then calls ``image_embeds.mean()`` on the tower's output
(:data:`VERL_TEXT_ONLY_LINE`). Under transformers 5.x the tower returns a ``BaseModelOutputWithPooling``, not a
tensor, and every text-only batch of the guard's mixed data fails with "'BaseModelOutputWithPooling' object
has no attribute 'mean'" — in R-SFT and in GRPO's log-prob and update passes. The adapter takes over only that
branch, unpacking the output with verl's own ``unpack_visual_output`` as its image branch does; batches with
images go to verl's function unchanged. ``tests/test_verl_fixes.py`` guards the quoted line.
"""

from __future__ import annotations

import functools
import types
from typing import Any

from gr_vl_verl import import_hooks

MODULE = "verl.models.transformers.qwen2_vl"
VERL_TEXT_ONLY_LINE = "inputs_embeds = inputs_embeds + 0.0 * image_embeds.mean()"


def _text_only_input_embeds(module: types.ModuleType) -> None:
    original = module._get_input_embeds
    if getattr(original, "_gr_vl_fix", False):
        return

    @functools.wraps(original)
    def _get_input_embeds(
        model: Any,
        input_ids: Any,
        attention_mask: Any = None,
        pixel_values: Any = None,
        pixel_values_videos: Any = None,
        image_grid_thw: Any = None,
        video_grid_thw: Any = None,
    ) -> Any:
        if pixel_values is not None or pixel_values_videos is not None:
            return original(
                model, input_ids, attention_mask, pixel_values, pixel_values_videos, image_grid_thw, video_grid_thw
            )
        import torch
        from verl.utils.transformers_compat import unpack_visual_output

        inputs_embeds = model.get_input_embeddings()(input_ids)
        vision = model.config.vision_config
        patch_dim = vision.in_channels * vision.temporal_patch_size * vision.patch_size**2
        dummy = torch.zeros((16, patch_dim), dtype=inputs_embeds.dtype, device=inputs_embeds.device)
        grid = torch.tensor([[1, 4, 4]], dtype=torch.long, device=inputs_embeds.device)
        image_embeds, _ = unpack_visual_output(model.visual(dummy, grid_thw=grid))
        inputs_embeds = inputs_embeds + 0.0 * image_embeds.mean()
        if attention_mask is not None:
            attention_mask = attention_mask.to(inputs_embeds.device)
        return inputs_embeds, attention_mask

    _get_input_embeds._gr_vl_fix = True  # type: ignore[attr-defined]
    module._get_input_embeds = _get_input_embeds


def install() -> None:
    import_hooks.after_import(MODULE, _text_only_input_embeds)
