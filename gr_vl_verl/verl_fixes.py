"""The one fix to verl 0.9.1 that every run of the guard needs, on GPUs and CPUs alike: the guard's data mixes
text-only and image rows, and verl 0.9.1's Qwen2-VL forward breaks on the text-only ones.

**Text-only forward.** verl's Qwen2-VL/Qwen2.5-VL forward (``verl/models/transformers/qwen2_vl.py``,
``_get_input_embeds``) runs a dummy image through the vision tower for a text-only batch, so every rank's
graph holds the tower's parameters, and then calls ``image_embeds.mean()`` on the tower's output (pin
``text_only_forward`` in :mod:`gr_vl_verl.cpu.pins`). Under transformers 5.x the tower returns a
``BaseModelOutputWithPooling``, not a tensor, and every text-only batch of the guard's mixed data fails with
"'BaseModelOutputWithPooling' object has no attribute 'mean'" — in R-SFT and in GRPO's log-prob and update
passes. The fix takes over only that branch, unpacking the output with verl's own ``unpack_visual_output`` as
its image branch does; batches with images go to verl's function unchanged.

A patch, because no configuration reaches it: the function is called from verl's monkey-patched model forward,
whatever the trainer or config. If verl no longer has the line, the fix does not apply: a CPU run stops before
it starts (:func:`gr_vl_verl.cpu.adapters.verify`); elsewhere a warning names the line, and ``gr-vl check``
fails. (verl 0.9.1's SFT collate has a second problem with mixed rows; the plugin's R-SFT config answers it
with a dataset class, :mod:`gr_vl_verl.trainer.sft_dataset`, not a patch.)
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

from gr_vl_verl import import_hooks
from gr_vl_verl.cpu import pins

MODULE = pins.TEXT_ONLY_FORWARD.module


def _text_only_input_embeds(module: types.ModuleType) -> None:
    def build(original: Callable[..., Any]) -> Callable[..., Any]:
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

        return _get_input_embeds

    import_hooks.replace(module, "_get_input_embeds", build)


def _pinned_text_only_input_embeds(module: types.ModuleType) -> None:
    pins.require(pins.TEXT_ONLY_FORWARD.adapter)
    _text_only_input_embeds(module)


def install() -> None:
    import_hooks.after_import(MODULE, _pinned_text_only_input_embeds, name=pins.TEXT_ONLY_FORWARD.adapter)
