"""The guard reward through verl 0.9.1's own reward loop, orchestrated as its trainer does (local Ray, CPU).

Real: the plugin's trainer config composed by hydra over verl's ``ppo_trainer``, verl's ``RewardLoopManager``
starting ``reward.num_workers=2`` ``RewardLoopWorker`` Ray actors, each loading ``GuardRewardManager`` from
the config with the tiny model's tokenizer, ``compute_rm_score`` chunking the batch over them and placing the
scores with ``assemble_rm_scores``, rows read from an RL parquet that ``gr-vl prep`` wrote from the bundled
corpus, and verl's validation metrics (``extract_reward``, ``RayPPOTrainer._val_metrics_update``). Only the
rollout is not run: the responses are tokenized answers, padded as the colocated path pads them.
"""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import ray
import torch
from data_helpers import SMALL, VLTRAIN
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from verl import DataProto
from verl.trainer.ppo.ray_trainer import RayPPOTrainer
from verl.trainer.ppo.reward import extract_reward

from gr_vl_verl.data import readers
from gr_vl_verl.data.pipeline import PrepConfig, run_prep
from gr_vl_verl.protocol import format_answer
from gr_vl_verl.reward.score import SCORE_KEYS

RESPONSE_LENGTH = 64


@pytest.fixture(scope="module")
def rl_rows(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("prep")
    run_prep(readers.read_vltrain_dir(VLTRAIN), out, PrepConfig(formats=("rl",), progress=False, images=SMALL))
    return pq.read_table(out / "rl_train.parquet").to_pylist()


@pytest.fixture(scope="module")
def reward_loop(tiny_model_dir):
    from verl.experimental.reward_loop.reward_loop import RewardLoopManager

    with initialize_config_module("gr_vl_verl.trainer.config", version_base=None):
        config = compose(
            "gr_vl_trainer",
            overrides=[
                f"actor_rollout_ref.model.path={tiny_model_dir}",
                f"data.max_response_length={RESPONSE_LENGTH}",
                "reward.num_workers=2",
            ],
        )
    OmegaConf.resolve(config)
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        yield RewardLoopManager(config)
    finally:
        ray.shutdown()


def first(rows: list[dict], **want) -> dict:
    return next(r for r in rows if all(_get(r, k) == v for k, v in want.items()))


def _get(row: dict, key: str):
    if key in ("prompt_label", "response_label"):
        return row["reward_model"]["ground_truth"][key]
    return row[key]


def merged(a: dict, b: dict) -> dict:
    """Safety-aware concatenation (paper eq. 4-5): a label is harmful if either part's is."""
    ga, gb = a["reward_model"]["ground_truth"], b["reward_model"]["ground_truth"]

    def either(key: str) -> str:
        return "harmful" if "harmful" in (ga[key], gb[key]) else "unharmful"

    return {**a, "reward_model": {"style": "rule", "ground_truth": {k: either(k) for k in ga}}}


def colocated_batch(tokenizer, rows: list[dict], answers: list[str]) -> tuple[DataProto, list[int]]:
    """The padded batch ``compute_rm_score`` receives: left-padded prompts, right-padded responses."""
    prompt = tokenizer("Human user:\nhi", add_special_tokens=False)["input_ids"]
    ids = [tokenizer(a, add_special_tokens=False)["input_ids"] for a in answers]
    n, width = len(rows), RESPONSE_LENGTH
    responses = torch.full((n, width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((n, len(prompt) + width), dtype=torch.long)
    for i, r in enumerate(ids):
        responses[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(prompt) + len(r)] = 1
    prompts = torch.tensor([prompt] * n)
    column = {
        k: np.array([row[k] for row in rows], dtype=object) for k in ("data_source", "reward_model", "extra_info")
    }
    batch = DataProto.from_dict(
        tensors={
            "prompts": prompts,
            "responses": responses,
            "input_ids": torch.cat([prompts, responses], dim=1),
            "attention_mask": mask,
        },
        non_tensors={**column, "uid": np.array([str(i) for i in range(n)], dtype=object)},
    )
    return batch, [len(r) for r in ids]


def test_reward_loop_scores_every_modality_and_merged_labels(reward_loop, rl_rows, tiny_tokenizer) -> None:
    text = first(rl_rows, data_source="guardreasoner_vl/text", prompt_label="harmful", response_label="unharmful")
    image = first(rl_rows, data_source="guardreasoner_vl/image", prompt_label="harmful")
    text_image = first(rl_rows, data_source="guardreasoner_vl/text_image")
    part_b = first(rl_rows, data_source="guardreasoner_vl/text", prompt_label="unharmful", response_label="harmful")
    concat = merged(text, part_b)
    assert concat["reward_model"]["ground_truth"] == {"prompt_label": "harmful", "response_label": "harmful"}
    rows = [text, image, text_image, concat, concat]
    answers = [
        format_answer("It asks for harm; the reply refuses.", "harmful", "unharmful"),  # right
        "Request: harmful",  # no tags: fails the format gate
        "",  # empty: the floor of one token
        format_answer("Judged as the first part alone.", "harmful", "unharmful"),  # right for part 1 only
        format_answer("Both parts together.", "harmful", "harmful"),  # right for the merged labels
    ]
    batch, lengths = colocated_batch(tiny_tokenizer, rows, answers)

    out = reward_loop.compute_rm_score(batch)  # what the trainer's _compute_reward_colocate calls

    info = out.non_tensor_batch
    assert out.meta_info["reward_extra_keys"] == list(SCORE_KEYS) + ["acc", "truncated"]
    assert list(info["length"]) == lengths and lengths[2] == 0
    assert list(info["r_safety"]) == [1.0, 0.0, 0.0, 0.5, 1.0]
    assert list(info["acc"]) == list(info["r_safety"])
    assert (info["prompt_acc"][3], info["response_acc"][3]) == (1.0, 0.0)  # merged labels, not part 1's
    scores = out.batch["rm_scores"].sum(-1).tolist()
    want = [0.0, -1 / (lengths[1] / RESPONSE_LENGTH) ** 2, -(RESPONSE_LENGTH**2), -0.5 / (lengths[3] / 64) ** 2, 0.0]
    assert scores == pytest.approx(want)
    for i, n in enumerate(lengths):  # on the last response token; verl's index -1 (last column) when empty
        assert out.batch["rm_scores"][i, n - 1].item() == pytest.approx(want[i])

    # the validation path: verl reads the scores back and reports `acc` per data source as val-core
    reward_tensor, extra = extract_reward(batch.union(out))
    infos = {"reward": reward_tensor.sum(-1).tolist(), **{k: list(v) for k, v in extra.items()}}
    trainer = RayPPOTrainer.__new__(RayPPOTrainer)
    metrics = trainer._val_metrics_update(
        batch.non_tensor_batch["data_source"], list(batch.non_tensor_batch["uid"]), infos, []
    )
    assert metrics["val-core/guardreasoner_vl/text/acc/mean@1"] == pytest.approx((1.0 + 0.5 + 1.0) / 3)
    assert metrics["val-core/guardreasoner_vl/image/acc/mean@1"] == 0.0
    assert metrics["val-core/guardreasoner_vl/text_image/acc/mean@1"] == 0.0
    assert metrics["val-aux/guardreasoner_vl/text/length/mean@1"] == pytest.approx(
        (lengths[0] + lengths[3] + lengths[4]) / 3
    )
