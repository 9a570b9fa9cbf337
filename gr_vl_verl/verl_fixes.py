"""Two fixes to verl 0.9.1 that every run of the guard needs, on GPUs and CPUs alike: the guard's data mixes
text-only and image rows, and verl 0.9.1 breaks on such data in two places.

**Text-only forward.** verl's Qwen2-VL/Qwen2.5-VL forward (``verl/models/transformers/qwen2_vl.py``,
``_get_input_embeds``) runs a dummy image through the vision tower for a text-only batch, so every rank's
graph holds the tower's parameters, and then calls ``image_embeds.mean()`` on the tower's output
(:data:`VERL_TEXT_ONLY_LINE`). Under transformers 5.x the tower returns a ``BaseModelOutputWithPooling``, not a
tensor, and every text-only batch of the guard's mixed data fails with "'BaseModelOutputWithPooling' object
has no attribute 'mean'" — in R-SFT and in GRPO's log-prob and update passes. The adapter takes over only that
branch, unpacking the output with verl's own ``unpack_visual_output`` as its image branch does; batches with
images go to verl's function unchanged.

**Mixed SFT batches.** verl's SFT collate (``verl/utils/dataset/dataset_utils.py``,
``SFTTensorCollator.collate_variable_batch``) takes the union of the rows' keys and then reads each key from the
batch's first row (:data:`VERL_COLLATE_LINE`): a batch whose first row is text-only has no
``multi_modal_inputs`` there, and R-SFT stops with ``KeyError: 'multi_modal_inputs'``. verl's engine already
accepts None for a text row's multi-modal inputs (``verl/utils/model.py``, ``extract_multi_modal_inputs``: "Mixed
pure text and multi-modal dataset"), so the adapter gives rows that lack a non-tensor key that value before
verl's collate runs; tensor keys are left alone.

``tests/test_cpu_platform.py`` guards both quoted lines.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

from gr_vl_verl import import_hooks

MODULE = "verl.models.transformers.qwen2_vl"
VERL_TEXT_ONLY_LINE = "inputs_embeds = inputs_embeds + 0.0 * image_embeds.mean()"
COLLATE_MODULE = "verl.utils.dataset.dataset_utils"
VERL_COLLATE_LINE = "if isinstance(batch[0][key], torch.Tensor):"


def fill_missing_keys(batch: list[dict[str, Any]], is_tensor: Any) -> list[dict[str, Any]]:
    """The rows of ``batch``, each with every key some row has; a missing non-tensor value becomes None."""
    keys = set().union(*(row.keys() for row in batch))
    fill = {
        key
        for key in keys
        if any(key not in row for row in batch) and not any(is_tensor(row[key]) for row in batch if key in row)
    }
    if not fill:
        return batch
    return [{**{key: None for key in fill if key not in row}, **row} for row in batch]


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


def _mixed_sft_batches(module: types.ModuleType) -> None:
    import torch

    def build(original: Callable[..., Any]) -> Callable[..., Any]:
        def collate_variable_batch(self: Any, batch: list[dict[str, Any]]) -> Any:
            return original(self, fill_missing_keys(batch, lambda v: isinstance(v, torch.Tensor)))

        return collate_variable_batch

    import_hooks.replace(module.SFTTensorCollator, "collate_variable_batch", build)


def install() -> None:
    import_hooks.after_import(MODULE, _text_only_input_embeds)
    import_hooks.after_import(COLLATE_MODULE, _mixed_sft_batches)
