"""The names verl gives a LoRA checkpoint's tensors, read apart (pure: no torch).

verl trains LoRA by wrapping the model with peft (``get_peft_model``), and the Hugging Face folder it saves beside
an actor checkpoint (``checkpoint.save_contents`` with ``hf_model``) holds the wrapped model's state dict as is:

- ``base_model.model.<module>.base_layer.weight`` (and ``.bias``): the frozen weight of a module LoRA adapts;
- ``base_model.model.<module>.lora_A.default.weight`` / ``lora_B.default.weight``: its adapter, rank ``r``;
- ``base_model.model.<name>``: every other tensor, unchanged.

That folder is therefore not a plain model (``from_pretrained`` would find none of its weights under the names it
looks for); :func:`split` tells the three kinds apart so that an adapter can be merged or saved on its own.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

WRAPPER = "base_model.model."
ADAPTER_NAME = "default"


class LoraKeyError(ValueError):
    """The tensor names are not those of a peft-wrapped LoRA model."""


@dataclass
class LoraKeys:
    """A wrapped state dict's names, by role. ``plain`` maps each plain model name to the checkpoint's name."""

    plain: dict[str, str] = field(default_factory=dict)
    #: module name (plain) -> (lora_A name, lora_B name) in the checkpoint
    adapters: dict[str, tuple[str, str]] = field(default_factory=dict)

    @property
    def target_modules(self) -> list[str]:
        """The last name part of each adapted module (``q_proj``, ``qkv``...), as peft's ``target_modules``."""
        return sorted({module.rsplit(".", 1)[-1] for module in self.adapters})


def split(names: Iterable[str]) -> LoraKeys:
    """Sort ``names`` into the plain model's tensors and the adapters; refuse names that are not peft's."""
    keys = LoraKeys()
    halves: dict[str, dict[str, str]] = {}
    for name in names:
        if not name.startswith(WRAPPER):
            raise LoraKeyError(f"{name!r} does not start with {WRAPPER!r}: not a peft-wrapped (LoRA) model")
        inner = name[len(WRAPPER) :]
        for half in ("lora_A", "lora_B"):
            marker = f".{half}.{ADAPTER_NAME}.weight"
            if inner.endswith(marker):
                halves.setdefault(inner[: -len(marker)], {})[half] = name
                break
        else:
            if ".lora_" in inner:
                raise LoraKeyError(f"{name!r}: a LoRA tensor of an adapter other than {ADAPTER_NAME!r}, or of a kind "
                                   "this merge does not handle (DoRA, embedding LoRA)")  # fmt: skip
            keys.plain[inner.replace(".base_layer.", ".")] = name
    for module, pair in sorted(halves.items()):
        if set(pair) != {"lora_A", "lora_B"}:
            raise LoraKeyError(f"{module}: has {sorted(pair)} but not both lora_A and lora_B")
        if f"{module}.weight" not in keys.plain:
            raise LoraKeyError(f"{module}: an adapter without its base_layer weight")
        keys.adapters[module] = (pair["lora_A"], pair["lora_B"])
    if not keys.adapters:
        raise LoraKeyError("no lora_A/lora_B tensors: the checkpoint was not trained with LoRA")
    return keys


def adapter_name(module: str, half: str) -> str:
    """The name peft's ``save_pretrained`` gives an adapter tensor (no adapter name inside it)."""
    return f"{WRAPPER}{module}.{half}.weight"
