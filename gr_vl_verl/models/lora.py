"""A LoRA checkpoint of verl made usable: merged into a plain Hugging Face folder, and its adapter saved alone.

verl saves, beside a LoRA run's actor checkpoint, a Hugging Face folder holding the peft-wrapped state dict
(:mod:`gr_vl_verl.models.lora_keys`) and ``lora_train_meta.json`` (``r``, ``lora_alpha``). Neither
``from_pretrained`` nor vLLM loads that folder as a model, and verl's own ``model_merger`` writes the base
weights and the adapter apart without merging them. Here each adapted weight becomes
``W + (lora_alpha / r) * B @ A`` (peft's LoRA, which verl trains with: no rsLoRA, no DoRA, ``bias="none"``),
computed in float32 and stored in the weight's own dtype; every other tensor is copied as is. The result is a
plain model folder (``gr-vl eval``, ``load_guard``, ``gr-vl serve`` take it like any other) and, optionally,
a peft adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``) for servers that load adapters.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from gr_vl_verl.models.lora_keys import LoraKeyError, LoraKeys, adapter_name, split

WEIGHTS = "model.safetensors"
META = "lora_train_meta.json"


class LoraCheckpointError(ValueError):
    """The folder is not a LoRA checkpoint this merge can read; the message says what is missing."""


@dataclass
class MergeReport:
    checkpoint: str
    out: str
    adapter_out: str | None
    rank: int
    alpha: float
    adapted_modules: int
    target_modules: list[str]
    adapter_parameters: int
    model_parameters: int
    adapter_bytes: int
    model_bytes: int

    def as_dict(self) -> dict:
        return asdict(self)


def locate(checkpoint: Path) -> tuple[Path, Path | None]:
    """(the Hugging Face folder with the wrapped weights, ``lora_train_meta.json`` or None), from a
    ``global_step_N`` folder, its ``actor`` folder, or the ``huggingface`` folder itself."""
    checkpoint = Path(checkpoint)
    for hf in (checkpoint / "actor" / "huggingface", checkpoint / "huggingface", checkpoint):
        if (hf / WEIGHTS).is_file():
            meta = next((p / META for p in (hf, hf.parent) if (p / META).is_file()), None)
            return hf, meta
    raise LoraCheckpointError(
        f"{checkpoint}: no {WEIGHTS} in it, in huggingface/ or in actor/huggingface/ (save the run with "
        "actor_rollout_ref.actor.checkpoint.save_contents including hf_model)"
    )


def _alpha_and_rank(meta: Path | None, inferred_rank: int, alpha: float | None) -> tuple[float, int]:
    saved = json.loads(meta.read_text()) if meta else {}
    rank = int(saved.get("r") or inferred_rank)
    if rank != inferred_rank:
        raise LoraCheckpointError(f"{meta}: r={rank}, but the adapters have rank {inferred_rank}")
    if alpha is None:
        alpha = saved.get("lora_alpha")
    if not alpha:
        raise LoraCheckpointError(f"no lora_alpha ({meta or 'no ' + META}): give it (the run's lora_alpha)")
    return float(alpha), rank


def merge(checkpoint: Path, out: Path, adapter_out: Path | None = None, alpha: float | None = None) -> MergeReport:
    """Merge the LoRA checkpoint at ``checkpoint`` into a plain folder ``out`` (and the adapter into
    ``adapter_out``). Each folder appears complete or not at all: it is written beside its final name, then
    renamed. An existing ``out`` is refused rather than overwritten."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    hf, meta = locate(checkpoint)
    for target in (out, adapter_out):
        if target is not None and Path(target).exists():
            raise LoraCheckpointError(f"{target} exists: give a new folder")
    with safe_open(str(hf / WEIGHTS), framework="pt") as f:
        try:
            keys = split(f.keys())
        except LoraKeyError as e:
            raise LoraCheckpointError(f"{hf / WEIGHTS}: {e}") from None
        tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 - safe_open is not a dict
    ranks = {tensors[a].shape[0] for a, _ in keys.adapters.values()}
    if len(ranks) != 1:
        raise LoraCheckpointError(f"{hf / WEIGHTS}: adapters of different ranks {sorted(ranks)}")
    alpha, rank = _alpha_and_rank(meta, ranks.pop(), alpha)
    scale = alpha / rank

    merged = {plain: tensors[name] for plain, name in keys.plain.items()}
    for module, (a, b) in keys.adapters.items():
        weight = merged[f"{module}.weight"]
        delta = tensors[b].to(torch.float32) @ tensors[a].to(torch.float32)
        if delta.shape != weight.shape:
            raise LoraCheckpointError(f"{module}: B @ A is {tuple(delta.shape)}, the weight {tuple(weight.shape)}")
        merged[f"{module}.weight"] = (weight.to(torch.float32) + scale * delta).to(weight.dtype).contiguous()

    out = Path(out)
    _write_folder(out, lambda tmp: _plain_folder(hf, tmp, merged, save_file))
    adapter = {
        adapter_name(module, half): tensors[name]
        for module, pair in keys.adapters.items()
        for half, name in zip(("lora_A", "lora_B"), pair, strict=True)
    }
    if adapter_out is not None:
        _write_folder(Path(adapter_out), lambda tmp: _adapter_folder(tmp, keys, adapter, rank, alpha, save_file))
    return MergeReport(
        checkpoint=str(checkpoint), out=str(out), adapter_out=str(adapter_out) if adapter_out else None, rank=rank,
        alpha=alpha, adapted_modules=len(keys.adapters), target_modules=keys.target_modules,
        adapter_parameters=sum(t.numel() for t in adapter.values()),
        model_parameters=sum(t.numel() for t in merged.values()),
        adapter_bytes=sum(t.numel() * t.element_size() for t in adapter.values()),
        model_bytes=(out / WEIGHTS).stat().st_size,
    )  # fmt: skip


def _write_folder(target: Path, fill) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    umask = os.umask(0)
    os.umask(umask)
    try:
        fill(tmp)
        for item in [tmp, *tmp.iterdir()]:  # mkdtemp and safetensors make them private; outputs get the umask's
            item.chmod((0o777 if item.is_dir() else 0o666) & ~umask)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _plain_folder(hf: Path, tmp: Path, merged: dict, save_file) -> None:
    """The checkpoint's config, tokenizer, processor and chat template, with the merged weights."""
    for item in hf.iterdir():
        if item.is_file() and item.name != WEIGHTS and not item.name.endswith(".safetensors"):
            shutil.copy2(item, tmp / item.name)
    save_file(merged, str(tmp / WEIGHTS), metadata={"format": "pt"})


def _adapter_folder(tmp: Path, keys: LoraKeys, adapter: dict, rank: int, alpha: float, save_file) -> None:
    """peft's adapter layout. ``target_modules`` is a pattern of the adapted modules' full names, so the adapter
    lands on exactly those (a short name such as ``proj`` would also match the vision tower's modules)."""
    import re

    from peft import LoraConfig

    pattern = "^(?:" + "|".join(re.escape(m) for m in sorted(keys.adapters)) + ")$"
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=pattern, bias="none", task_type="CAUSAL_LM")
    payload = config.to_dict()
    for key in ("peft_type", "task_type"):  # enums in peft's dict; strings on disk
        payload[key] = getattr(payload[key], "value", payload[key])
    (tmp / "adapter_config.json").write_text(json.dumps(payload, indent=2, default=list))
    save_file(adapter, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
