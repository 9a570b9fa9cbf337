"""Which family a checkpoint folder is, read from its own files: ``config.json``'s ``model_type``, checked
against the processor's saved ``patch_size`` and ``merge_size`` when the folder has them.

A mismatch (say a Qwen2.5-VL processor saved beside a Qwen3-VL model) is refused: the processor would cut images
on another grid than the vision tower's, and the pixel bounds of :mod:`.families` would count the wrong tokens.
Pure Python (JSON files only): no torch, no transformers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gr_vl_verl.models.families import DEFAULT_FAMILY, ModelFamily, UnknownModelFamily, get_family

#: Where ``save_pretrained`` writes the image processor's settings: transformers 5.x nests them in
#: ``processor_config.json``; checkpoints saved by 4.x (the released Qwen models) have ``preprocessor_config.json``.
PROCESSOR_FILES: tuple[str, ...] = ("processor_config.json", "preprocessor_config.json")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read it as JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a JSON object")
    return data


def processor_grid(model_dir: str | Path) -> tuple[int, int] | None:
    """``(patch_size, merge_size)`` of the folder's saved image processor; None when it saved none."""
    for name in PROCESSOR_FILES:
        path = Path(model_dir) / name
        if not path.is_file():
            continue
        data = _read_json(path)
        image = data.get("image_processor", data)
        if isinstance(image, dict) and "patch_size" in image:
            return int(image["patch_size"]), int(image.get("merge_size", 2))
    return None


def family_of_config(config: dict[str, Any], where: str = "config.json") -> ModelFamily:
    """The family of a parsed ``config.json`` (its ``model_type``)."""
    model_type = config.get("model_type")
    if not isinstance(model_type, str):
        raise UnknownModelFamily(f"{where}: no model_type, so the model family is unknown")
    try:
        return get_family(model_type)
    except UnknownModelFamily as e:
        raise UnknownModelFamily(f"{where}: {e}") from None


def check_grid(family: ModelFamily, patch_size: int, merge_size: int, where: str) -> None:
    if (patch_size, merge_size) != (family.patch_size, family.merge_size):
        raise ValueError(
            f"{where}: the processor cuts images with patch {patch_size} x merge {merge_size}, but a "
            f"{family.title} model's vision tower uses patch {family.patch_size} x merge {family.merge_size}"
        )


def family_of_model(model_dir: str | Path) -> ModelFamily:
    """The family of a checkpoint folder; a folder without ``config.json`` or of an unknown family is refused."""
    folder = Path(model_dir).expanduser()
    config = folder / "config.json"
    if not config.is_file():
        raise UnknownModelFamily(f"{folder}: no config.json, so the model family is unknown")
    family = family_of_config(_read_json(config), str(config))
    grid = processor_grid(folder)
    if grid is not None:
        check_grid(family, *grid, str(folder))
    return family


def family_or_default(model: str | Path | None) -> ModelFamily:
    """The family of a local checkpoint folder; the paper's (Qwen2.5-VL) when no folder is at hand (``None``, or
    a path that does not exist, which the caller reports in its own words)."""
    if model is None or not Path(model).expanduser().is_dir():
        return DEFAULT_FAMILY
    return family_of_model(model)
