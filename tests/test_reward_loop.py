"""The guard reward through verl 0.9.1's own reward loop, orchestrated as its trainer does (local Ray, CPU).

Real: the plugin's trainer config composed by hydra over verl's ``ppo_trainer``, verl's ``RewardLoopManager``
starting ``reward.num_workers=2`` ``RewardLoopWorker`` Ray actors, each loading ``GuardRewardManager`` from
the config with the tiny model's tokenizer, ``compute_rm_score`` chunking the batch over them and placing the
scores with ``assemble_rm_scores``, rows read from an RL parquet that ``gr-vl prep`` wrote from the bundled
corpus, and verl's validation metrics (``extract_reward``, ``RayPPOTrainer._val_metrics_update`` through the plugin's
trainer, which adds the paper's F1). Only the
rollout is not run: the responses are tokenized answers, padded as the colocated path pads them. The Ray
driver runs in a child process (``ray_driver.py``), as in every Ray test here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
import torch
from data_helpers import SMALL, VLTRAIN
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from ray_driver import run_driver
from verl import DataProto
from verl.trainer.ppo.reward import extract_reward

from gr_vl_verl.data import readers
from gr_vl_verl.data.pipeline import PrepConfig, run_prep
from gr_vl_verl.protocol import format_answer
from gr_vl_verl.reward.score import SCORE_KEYS
from gr_vl_verl.trainer.dynamic_clip import GRRayPPOTrainer

RESPONSE_LENGTH = 64


@pytest.fixture(scope="module")
def rl_parquet(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("prep")
    run_prep(readers.read_vltrain_dir(VLTRAIN), out, PrepConfig(formats=("rl",), progress=False, images=SMALL))
    return str(out / "rl_train.parquet")


def first(rows: list[dict], **want) -> dict:
    return next(r for r in rows if all(_get(r, k) == v for k, v in want.items()))


def _get(row: dict, key: str):
    if key in ("prompt_label", "response_label"):
        return row["reward_model"]["ground_truth"][key]
    return row[key]


def concatenated(parquet: str, parts: list[dict], out_dir: Path) -> dict:
    """The concatenation `gr-vl augment` makes of two rows (paper eq. 4-5: the command OR-merges the labels)."""
    from gr_vl_verl.cli import main

    pair = out_dir / "pair.parquet"
    pq.write_table(pa.Table.from_pylist(parts, schema=pq.read_schema(parquet)), pair)
    assert main(["augment", "--data", str(pair), "--out", str(out_dir / "aug.parquet"), "--ratio", "0.5",
                 "--no-progress"]) == 0  # fmt: skip
    made = next(r for r in pq.read_table(out_dir / "aug.parquet").to_pylist() if r["extra_info"]["concat_of"])
    assert sorted(made["extra_info"]["concat_of"]) == sorted(p["extra_info"]["id"] for p in parts)
    return made


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


ANSWERS = [
    format_answer("It asks for harm; the reply refuses.", "harmful", "unharmful"),  # right
    "Request: harmful",  # no tags: fails the format gate
    "",  # empty: the floor of one token
    format_answer("Judged as the first part alone.", "harmful", "unharmful"),  # right for part 1 only
    format_answer("Both parts together.", "harmful", "harmful"),  # right for the merged labels
]


def drive_reward_loop(model_dir: str, parquet: str, work: str) -> dict:
    """Driver (child process, see ray_driver.py): verl's reward loop on a batch of prepared rows."""
    from verl.experimental.reward_loop.reward_loop import RewardLoopManager
    from verl.utils import hf_tokenizer

    rows = pq.read_table(parquet).to_pylist()
    text = first(rows, data_source="guardreasoner_vl/text", prompt_label="harmful", response_label="unharmful")
    image = first(rows, data_source="guardreasoner_vl/image", prompt_label="harmful")
    text_image = first(rows, data_source="guardreasoner_vl/text_image")
    part_b = first(rows, data_source="guardreasoner_vl/text", prompt_label="unharmful", response_label="harmful")
    concat = concatenated(parquet, [text, part_b], Path(work))
    batch, lengths = colocated_batch(hf_tokenizer(model_dir), [text, image, text_image, concat, concat], ANSWERS)
    with initialize_config_module("gr_vl_verl.trainer.config", version_base=None):
        config = compose(
            "gr_vl_trainer",
            overrides=[
                f"actor_rollout_ref.model.path={model_dir}",
                f"data.max_response_length={RESPONSE_LENGTH}",
                "reward.num_workers=2",
            ],
        )
    OmegaConf.resolve(config)
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        out = RewardLoopManager(config).compute_rm_score(batch)  # what _compute_reward_colocate calls
    finally:
        ray.shutdown()
    # the validation path: verl reads the scores back and reports `acc` per data source as val-core
    reward_tensor, extra = extract_reward(batch.union(out))
    infos = {"reward": reward_tensor.sum(-1).tolist(), **{k: [float(x) for x in v] for k, v in extra.items()}}
    trainer = GRRayPPOTrainer.__new__(GRRayPPOTrainer)  # verl's RayPPOTrainer._val_metrics_update + val/f1_*
    uids = list(batch.non_tensor_batch["uid"])
    metrics = trainer._val_metrics_update(batch.non_tensor_batch["data_source"], uids, infos, [])
    return {
        "concat_truth": concat["reward_model"]["ground_truth"],
        "truths": [r["reward_model"]["ground_truth"] for r in (text, image, text_image)],
        "lengths": lengths,
        "extra_keys": out.meta_info["reward_extra_keys"],
        "info": {k: [float(x) for x in v] for k, v in out.non_tensor_batch.items()},
        "rm_scores": out.batch["rm_scores"].tolist(),
        "metrics": {k: float(v) for k, v in metrics.items()},
    }


def test_reward_loop_scores_every_modality_and_merged_labels(tiny_model_dir, rl_parquet, tmp_path) -> None:
    got = run_driver("test_reward_loop:drive_reward_loop", str(tiny_model_dir), rl_parquet, str(tmp_path))

    assert got["concat_truth"] == {"prompt_label": "harmful", "response_label": "harmful"}
    info, lengths = got["info"], got["lengths"]
    assert got["extra_keys"] == list(SCORE_KEYS) + ["acc", "truncated"]
    assert info["length"] == lengths and lengths[2] == 0
    assert info["r_safety"] == [1.0, 0.0, 0.0, 0.5, 1.0]
    assert info["acc"] == info["r_safety"]
    assert (info["prompt_acc"][3], info["response_acc"][3]) == (1.0, 0.0)  # merged labels, not part 1's
    rm_scores = torch.tensor(got["rm_scores"])
    want = [0.0, -1 / (lengths[1] / RESPONSE_LENGTH) ** 2, -(RESPONSE_LENGTH**2), -0.5 / (lengths[3] / 64) ** 2, 0.0]
    assert rm_scores.sum(-1).tolist() == pytest.approx(want)
    for i, n in enumerate(lengths):  # on the last response token; verl's index -1 (last column) when empty
        assert rm_scores[i, n - 1].item() == pytest.approx(want[i])
    metrics = got["metrics"]
    assert metrics["val-core/guardreasoner_vl/text/acc/mean@1"] == pytest.approx((1.0 + 0.5 + 1.0) / 3)
    assert metrics["val-core/guardreasoner_vl/image/acc/mean@1"] == 0.0
    assert metrics["val-core/guardreasoner_vl/text_image/acc/mean@1"] == 0.0
    assert metrics["val-aux/guardreasoner_vl/text/length/mean@1"] == pytest.approx(
        (lengths[0] + lengths[3] + lengths[4]) / 3
    )
    # The paper's F1 from the summed confusion terms, by hand. Prompt: text rows right three times (3 tp), the
    # image row (harmful) and the text-image row (unharmful) give no label in the paper's format (1 fn, 1 fp).
    # Response: text rows tn, fn (part 1's label against merged harmful), tp; image-only rows have none.
    assert [t["response_label"] for t in got["truths"]] == ["unharmful", None, None]
    assert [t["prompt_label"] for t in got["truths"]] == ["harmful", "harmful", "unharmful"]
    assert {k: v for k, v in metrics.items() if k.startswith("val/")} == pytest.approx(
        {
            "val/f1_prompt/guardreasoner_vl/text": 100.0,
            "val/f1_prompt/guardreasoner_vl/image": 0.0,
            "val/f1_prompt/guardreasoner_vl/text_image": 0.0,
            "val/f1_prompt": 100 * 6 / 8,
            "val/f1_response/guardreasoner_vl/text": 100 * 2 / 3,
            "val/f1_response": 100 * 2 / 3,
        }
    )
