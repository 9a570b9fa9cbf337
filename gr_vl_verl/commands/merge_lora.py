"""Merge a LoRA checkpoint of verl into a plain Hugging Face model folder (and save its adapter alone).

    gr-vl merge-lora CHECKPOINT --out DIR [--adapter-out DIR] [--lora-alpha A]

CHECKPOINT is a ``global_step_N`` folder of a LoRA run (R-SFT or GRPO), its ``actor`` folder, or the
``huggingface`` folder verl saved there. The merged folder loads like the base model (``gr-vl eval``,
``load_guard``, ``gr-vl serve``); ``--adapter-out`` also writes the adapter in peft's layout. ``r`` and
``lora_alpha`` come from the run's ``lora_train_meta.json``. Prints one JSON line: rank, alpha, the adapted
modules, and the sizes of the adapter and of the merged model (docs/lora.md).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from gr_vl_verl.commands import UsageError, emit


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, help="global_step_N, its actor/ or its huggingface/ folder")
    parser.add_argument("--out", type=Path, required=True, help="new folder for the merged model")
    parser.add_argument("--adapter-out", type=Path, help="new folder for the adapter alone (peft's layout)")
    parser.add_argument("--lora-alpha", type=float, help="only for a checkpoint without lora_train_meta.json")


def run(args: argparse.Namespace) -> int:
    from gr_vl_verl.models.lora import LoraCheckpointError, merge

    try:
        report = merge(args.checkpoint, args.out, args.adapter_out, alpha=args.lora_alpha)
    except LoraCheckpointError as e:
        raise UsageError(str(e)) from None
    emit(json.dumps(report.as_dict()))
    return 0
