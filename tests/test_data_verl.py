"""The written parquets load through verl 0.9.1's own datasets with a real Qwen2.5-VL processor (tiny, offline)."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from data_helpers import SMALL, VLTRAIN, VLTRAIN_COUNTS, rl_dataset
from omegaconf import OmegaConf

from gr_vl_verl.data import readers
from gr_vl_verl.data.pipeline import PrepConfig, run_prep
from gr_vl_verl.data.writers import RowOptions
from gr_vl_verl.protocol import format_answer
from gr_vl_verl.reward.score import compute_score

N_ROWS = sum(VLTRAIN_COUNTS.values())


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from verl.utils import hf_processor, hf_tokenizer

    from gr_vl_verl.tiny import build_tiny_qwen2_5_vl

    # verl's hf_processor needs a model config.json beside the processor files, so build the model too.
    path = build_tiny_qwen2_5_vl(tmp_path_factory.mktemp("tiny"), with_model=True)
    tokenizer, processor = hf_tokenizer(str(path)), hf_processor(str(path))
    assert processor is not None and type(processor).__name__ == "Qwen2_5_VLProcessor"
    return tokenizer, processor


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prep")
    config = PrepConfig(formats=("sft", "rl"), progress=False, images=SMALL)
    summary = run_prep(readers.read_vltrain_dir(VLTRAIN), out, config)
    assert summary.outputs["rl_train.parquet"].written == N_ROWS
    run_prep(
        readers.read_vltrain_dir(VLTRAIN),
        out / "original",
        PrepConfig(formats=("rl",), progress=False, images=SMALL, rows=RowOptions.original_rl()),
    )
    return out


def _image_parts(messages) -> int:
    return sum(
        1 for m in messages if isinstance(m["content"], list) for part in m["content"] if part.get("type") == "image"
    )


@pytest.mark.parametrize("variant", ["default", "original"])
def test_rl_parquet_loads_through_rlhf_dataset(prepared, tiny, tmp_path, variant):
    from verl.utils.dataset.rl_dataset import RLHFDataset, collate_fn
    from verl.utils.tokenizer import build_multimodal_processor_inputs

    path = prepared / "rl_train.parquet" if variant == "default" else prepared / "original" / "rl_train.parquet"
    table = pq.read_table(path).to_pylist()
    ds = rl_dataset(path, tiny, tmp_path)
    # verl's overlong filter drops any row it fails to process, silently: every written row must survive.
    assert len(ds) == len(table) == N_ROWS

    processor = tiny[1]
    image_pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    merge = processor.image_processor.merge_size**2
    items = [ds[i] for i in range(len(ds))]
    for row, item in zip(table, items, strict=True):
        user = next(m for m in row["prompt"] if m["role"] == "user")["content"]
        n = len(row["images"])
        assert user.count("<image>") == n == _image_parts(item["raw_prompt"])
        if variant == "default":
            assert n == (0 if row["extra_info"]["modality"] == "text" else 1)
        else:
            assert n == 1  # text rows carry the 1x1 placeholder
        # What the rollout will do with the row: one image-token run per image, of the processor's size.
        messages = item["raw_prompt"]
        images, videos, _ = RLHFDataset._process_multi_modal_info(messages, ds.image_patch_size, ds.config)
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        if images is None:
            ids = processor.tokenizer(text, add_special_tokens=False)["input_ids"]
            assert image_pad not in ids
            continue
        inputs = build_multimodal_processor_inputs(processor, text=[text], images=images, videos=videos)
        grid = inputs["image_grid_thw"]
        assert grid.shape[0] == n
        assert int((inputs["input_ids"][0] == image_pad).sum()) == int(grid.prod(-1).sum()) // merge

    # A batch mixing text-only and image rows collates.
    mixed = [items[0], items[12], items[22], items[1]]
    assert {it["data_source"] for it in mixed} >= {"guardreasoner_vl/text", "guardreasoner_vl/image"}
    batch = collate_fn(mixed)
    assert batch["dummy_tensor"].shape == (4, 1)
    assert len(batch["raw_prompt"]) == 4 and len(batch["reward_model"]) == 4
    assert list(batch["index"]) == [0, 12, 22, 1]
    # The reward reads the labels straight from the collated ground truth.
    for gt in batch["reward_model"]:
        truth = gt["ground_truth"]
        perfect = format_answer("because", truth["prompt_label"], truth["response_label"])
        assert compute_score("guardreasoner_vl/text", perfect, truth, length_unit="chars")["score"] == 0.0


def test_rl_overlong_filter_counts_image_tokens(prepared, tiny, tmp_path):
    """The row count after verl's filter is what the processor-expanded prompt lengths predict."""
    from verl.utils.dataset.rl_dataset import RLHFDataset
    from verl.utils.tokenizer import build_multimodal_processor_inputs

    path = prepared / "rl_train.parquet"
    full = rl_dataset(path, tiny, tmp_path / "a")
    tokenizer, processor = tiny
    lengths = []  # (text-only length, length with image tokens expanded)
    for i in range(len(full)):
        msgs = full[i]["raw_prompt"]
        text = processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        n_text = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        images, videos, _ = RLHFDataset._process_multi_modal_info(msgs, full.image_patch_size, full.config)
        if images is None:
            lengths.append((n_text, n_text))
        else:
            inputs = build_multimodal_processor_inputs(processor, text=[text], images=images, videos=videos)
            lengths.append((n_text, len(inputs["input_ids"][0])))
    # a budget under which counting only the text would keep more rows than counting the images too
    limit = next(
        n_full - 1
        for _, n_full in sorted(lengths, key=lambda x: x[1])
        if sum(t <= n_full - 1 for t, _ in lengths) > sum(f <= n_full - 1 for _, f in lengths) > 0
    )
    kept = rl_dataset(path, tiny, tmp_path / "b", max_prompt_length=limit)
    assert len(kept) == sum(f <= limit for _, f in lengths) < sum(t <= limit for t, _ in lengths)


def test_sft_parquet_loads_and_masks_only_the_assistant_turn(prepared, tiny):
    from verl.utils.dataset.multiturn_sft_dataset import MultiTurnSFTDataset

    tokenizer, processor = tiny
    path = prepared / "sft_train.parquet"
    table = pq.read_table(path).to_pylist()
    config = OmegaConf.create(
        {"messages_key": "messages", "image_key": "images", "max_length": 4096, "truncation": "error",
         "pad_mode": "no_padding"}
    )  # fmt: skip
    ds = MultiTurnSFTDataset(str(path), tokenizer, config, processor)
    assert len(ds) == N_ROWS
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    for i, row in enumerate(table):
        item = ds[i]
        ids, mask = item["input_ids"], item["loss_mask"].bool()
        assistant = row["messages"][2]["content"]
        # the trained tokens are exactly the assistant's answer and its end-of-turn
        assert tokenizer.decode(ids[mask]) == assistant + "<|im_end|>\n"
        # ... and form one block at the end: nothing of the system or user turns is trained
        first = int(mask.nonzero()[0])
        assert mask[first:].all() and not mask[:first].any()
        assert "Human user:" in tokenizer.decode(ids[:first])
        assert im_end in ids[:first].tolist()  # system and user turns precede the block
        n_images = len(row["images"])
        mm = item.get("multi_modal_inputs")
        if n_images:
            assert mm["image_grid_thw"].shape[0] == n_images
            pad = tokenizer.convert_tokens_to_ids("<|image_pad|>")
            merge = processor.image_processor.merge_size**2
            assert int((ids == pad).sum()) == int(mm["image_grid_thw"].prod(-1).sum()) // merge
        else:
            assert not mm or "pixel_values" not in mm
        assert item["position_ids"].shape == (4, ids.shape[0])  # Qwen-VL m-rope rows: text + 3 vision
    assert isinstance(ds[0]["input_ids"], torch.Tensor)
