"""What the pipeline needs to know about each vision-language model family, in one table.

GuardReasoner-VL was trained from Qwen2.5-VL, and the image bounds the released code ran with (RL, SFT,
evaluation; ``data.images``) are pixel areas on its 28-pixel grid (ViT patch 14, 2 x 2 patches merged into one
vision token). Qwen3-VL and Qwen3.5 use patch 16 and the same 2 x 2 merge: a 32-pixel grid, so the same pixel
area holds fewer vision tokens. To give every family the paper's budget of vision tokens per image, the bounds are
converted to each family's grid by keeping the number of grid cells: ``pixels * (grid / 28) ** 2``, with the
lower bound rounded up and the upper bound rounded down, so an image never gets fewer tokens than the paper's
minimum nor more than its maximum. On Qwen2.5-VL the bounds are the paper's, unchanged.

The facts per family and their sources (transformers' config and processor classes, vLLM's and verl's model
files) are in docs/models.md. Pure Python: no torch, no verl.
"""

from __future__ import annotations

from dataclasses import dataclass

from gr_vl_verl.data.images import (
    EVAL_MAX_PIXELS,
    EVAL_MIN_PIXELS,
    MAX_PIXELS,
    MIN_PIXELS,
    SFT_MAX_PIXELS,
    SFT_MIN_PIXELS,
    ImagePolicy,
    PixelBounds,
)

#: The grid the paper's pixel bounds are stated on: Qwen2.5-VL's patch 14 x merge 2.
PAPER_GRID = 28
#: The released code's bounds per stage, on :data:`PAPER_GRID` (``data.images`` says where each comes from).
PAPER_PIXELS: dict[str, PixelBounds] = {
    "rl": (MIN_PIXELS, MAX_PIXELS),
    "sft": (SFT_MIN_PIXELS, SFT_MAX_PIXELS),
    "eval": (EVAL_MIN_PIXELS, EVAL_MAX_PIXELS),
}
STAGES: tuple[str, ...] = tuple(PAPER_PIXELS)


class UnknownModelFamily(ValueError):
    """A family (or a checkpoint's ``model_type``) this table does not hold; the message lists the known ones."""


@dataclass(frozen=True)
class ModelFamily:
    """One family: its ``config.json`` ``model_type``, vision grid, placeholder tokens and class names."""

    name: str  # config.json's model_type, also the --model-family value
    title: str
    patch_size: int  # vision_config.patch_size, the image processor's patch_size
    merge_size: int  # vision_config.spatial_merge_size, the image processor's merge_size
    architecture: str  # config.json's architectures[0]: the transformers class and vLLM's registry key
    processor_class: str  # what AutoProcessor builds for the model_type
    verl_forward: str  # verl's module that patches the model's forward for its trainers
    image_token: str = "<|image_pad|>"
    video_token: str = "<|video_pad|>"
    vision_start: str = "<|vision_start|>"
    vision_end: str = "<|vision_end|>"

    @property
    def grid(self) -> int:
        """Side in pixels of one vision token: patch x merge."""
        return self.patch_size * self.merge_size

    def pixels(self, stage: str) -> PixelBounds:
        """The paper's ``(min_pixels, max_pixels)`` of ``stage`` (``rl``, ``sft``, ``eval``) on this family's grid."""
        if stage not in PAPER_PIXELS:
            raise ValueError(f"stage must be one of {', '.join(STAGES)}, got {stage!r}")
        return convert_bounds(PAPER_PIXELS[stage], PAPER_GRID, self.grid)


def convert_bounds(bounds: PixelBounds, from_grid: int, to_grid: int) -> PixelBounds:
    """Pixel bounds on ``from_grid`` moved to ``to_grid`` keeping the number of grid cells (lower bound rounded
    up, upper bound down; exact integer arithmetic, identity when the grids agree)."""
    if from_grid < 1 or to_grid < 1:
        raise ValueError(f"grids must be >= 1 pixel, got {from_grid} and {to_grid}")
    low, high = bounds
    num, den = to_grid * to_grid, from_grid * from_grid
    return -(-low * num // den), high * num // den


QWEN2_5_VL = ModelFamily(
    name="qwen2_5_vl",
    title="Qwen2.5-VL",
    patch_size=14,
    merge_size=2,
    architecture="Qwen2_5_VLForConditionalGeneration",
    processor_class="Qwen2_5_VLProcessor",
    verl_forward="verl.models.transformers.qwen2_vl",
)
QWEN3_VL = ModelFamily(
    name="qwen3_vl",
    title="Qwen3-VL",
    patch_size=16,
    merge_size=2,
    architecture="Qwen3VLForConditionalGeneration",
    processor_class="Qwen3VLProcessor",
    verl_forward="verl.models.transformers.qwen3_vl",
)
QWEN3_5 = ModelFamily(
    name="qwen3_5",
    title="Qwen3.5",
    patch_size=16,
    merge_size=2,
    architecture="Qwen3_5ForConditionalGeneration",
    processor_class="Qwen3VLProcessor",
    verl_forward="verl.models.transformers.qwen3_5",
)

FAMILIES: dict[str, ModelFamily] = {f.name: f for f in (QWEN2_5_VL, QWEN3_VL, QWEN3_5)}
#: The paper's base model.
DEFAULT_FAMILY = QWEN2_5_VL


def get_family(name: str) -> ModelFamily:
    """The family called ``name`` (a ``model_type``); anything else is refused, naming the known ones."""
    try:
        return FAMILIES[name]
    except (KeyError, TypeError):
        raise UnknownModelFamily(
            f"unknown model family {name!r}; known: {', '.join(FAMILIES)} (docs/models.md)"
        ) from None


def image_policy(family: ModelFamily, stage: str = "eval") -> ImagePolicy:
    """The image checks with ``stage``'s bounds on ``family``'s grid (on Qwen2.5-VL, ``eval``:
    ``ImagePolicy.evaluation()``)."""
    low, high = family.pixels(stage)
    return ImagePolicy(min_pixels=low, max_pixels=high)
