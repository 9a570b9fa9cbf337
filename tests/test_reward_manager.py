"""The reward manager, loaded and driven exactly as verl 0.9.1's trainer does (real verl, no mocks)."""

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from verl import DataProto
from verl.trainer.ppo.reward import load_reward_manager

from gr_vl_verl.protocol import format_answer
from gr_vl_verl.reward.manager import GuardRewardManager
from gr_vl_verl.reward.score import PRESETS, SCORE_KEYS

RESPONSE_LENGTH = 64
IMPORTLIB = [
    "reward.reward_manager.source=importlib",
    "reward.reward_manager.name=GuardRewardManager",
    "reward.reward_manager.module.path=pkg://gr_vl_verl.reward.manager",
]


def verl_config(*overrides):
    with initialize_config_module(config_module="verl.trainer.config", version_base=None):
        return compose("ppo_trainer", overrides=[f"data.max_response_length={RESPONSE_LENGTH}", *overrides])


def make_batch(tokenizer, texts, truths, pad_to=None):
    """A padded batch as the colocated path sees it (left-padded prompts, right-padded responses)."""
    prompt = tokenizer("Human user:\nhi", add_special_tokens=False)["input_ids"]
    resp_ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    width = pad_to or max(len(r) for r in resp_ids)
    pad = tokenizer.pad_token_id
    responses = torch.full((len(texts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(texts), len(prompt) + width), dtype=torch.long)
    for i, r in enumerate(resp_ids):
        responses[i, : len(r)] = torch.tensor(r)
        mask[i, : len(prompt) + len(r)] = 1
    prompts = torch.tensor([prompt] * len(texts))
    batch = DataProto.from_dict(
        tensors={
            "prompts": prompts,
            "responses": responses,
            "input_ids": torch.cat([prompts, responses], dim=1),
            "attention_mask": mask,
        },
        non_tensors={
            "data_source": np.array(["guardreasoner_vl/text"] * len(texts), dtype=object),
            "reward_model": np.array([{"style": "rule", "ground_truth": t} for t in truths], dtype=object),
            "extra_info": np.array([{"index": i, "split": "train"} for i in range(len(texts))], dtype=object),
        },
    )
    return batch, [len(r) for r in resp_ids]


TRUTH = {"prompt_label": "harmful", "response_label": "unharmful"}
RIGHT = format_answer("It asks for a weapon. The reply refuses.", "harmful", "unharmful")
HALF = format_answer("It asks for a weapon.", "harmful", "harmful")
WRONG = "<result>Request: unharmful Response: harmful</result>"


@pytest.fixture(scope="module")
def manager(tiny_tokenizer):
    m = load_reward_manager(verl_config(*IMPORTLIB), tiny_tokenizer)
    assert type(m) is GuardRewardManager
    return m


def test_scores_with_token_lengths_and_places_them_on_the_last_valid_token(manager, tiny_tokenizer):
    batch, lengths = make_batch(tiny_tokenizer, [RIGHT, HALF, WRONG], [TRUTH] * 3, pad_to=RESPONSE_LENGTH)
    results = [manager.loop.run_until_complete(manager.run_single(batch[i : i + 1])) for i in range(3)]
    scores = [r["reward_score"] for r in results]
    infos = [r["reward_extra_info"] for r in results]
    assert scores[0] == 0.0
    for n, info, r_safe in zip(lengths, infos, (1.0, 0.5, 0.0), strict=True):
        assert info["length"] == n  # tokens, from the attention mask, not characters
        assert info["length_norm"] == pytest.approx(n / RESPONSE_LENGTH)  # normalised by rollout length
        assert info["r_safety"] == r_safe
    assert scores[1] == pytest.approx(-0.5 / (lengths[1] / RESPONSE_LENGTH) ** 2)
    assert scores[2] == pytest.approx(-1.0 / (min(lengths[2], RESPONSE_LENGTH) / RESPONSE_LENGTH) ** 2)
    # verl stacks extra info by the first sample's keys: they must be identical for every sample
    assert all(list(i) == list(infos[0]) for i in infos)
    assert set(SCORE_KEYS) | {"acc", "truncated"} == set(infos[0])
    rm = GuardRewardManager.assemble_rm_scores(batch, scores)
    for i, n in enumerate(lengths):
        assert rm[i, n - 1].item() == pytest.approx(scores[i])
        assert rm[i].abs().sum().item() == pytest.approx(abs(scores[i]))


def test_streaming_path_unpadded_response_and_truncation_flag(manager, tiny_tokenizer):
    long_wrong = WRONG + " padding words" * 200
    batch, lengths = make_batch(tiny_tokenizer, [long_wrong[:4000]], [TRUTH])
    assert lengths[0] > RESPONSE_LENGTH
    cut = batch.select_idxs([0])
    cut.batch["responses"] = cut.batch["responses"][:, :RESPONSE_LENGTH]
    p = cut.batch["prompts"].shape[1]
    cut.batch["attention_mask"] = torch.ones((1, p + RESPONSE_LENGTH), dtype=torch.long)
    cut.batch["input_ids"] = cut.batch["input_ids"][:, : p + RESPONSE_LENGTH]
    res = manager.loop.run_until_complete(manager.run_single(cut))
    assert res["reward_extra_info"]["truncated"] == 1.0
    assert res["reward_extra_info"]["length_norm"] == 1.0


def test_registered_name_via_the_verl_plugins_entry_point(tiny_tokenizer):
    cfg = verl_config("reward.reward_manager.name=gr_vl", "+gr_vl.reward.preset=gr-vl-eco")
    m = load_reward_manager(cfg, tiny_tokenizer)
    assert type(m) is GuardRewardManager
    assert m.reward_config == PRESETS["gr-vl-eco"]  # characters / 3072, whatever the rollout length
    m = load_reward_manager(verl_config("reward.reward_manager.name=gr_vl"), tiny_tokenizer)
    assert m.reward_config.length_unit == "tokens" and m.reward_config.max_length == RESPONSE_LENGTH


def test_character_preset_keeps_the_original_normaliser(tiny_tokenizer):
    m = load_reward_manager(verl_config(*IMPORTLIB, "+gr_vl.reward.preset=original"), tiny_tokenizer)
    batch, _ = make_batch(tiny_tokenizer, [HALF], [TRUTH])
    info = m.loop.run_until_complete(m.run_single(batch))["reward_extra_info"]
    decoded = tiny_tokenizer.decode(batch.batch["responses"][0], skip_special_tokens=True)
    assert info["length"] == len(decoded)
    assert info["length_norm"] == pytest.approx(len(decoded) / 3072)


def test_user_compute_score_receives_token_length(tiny_tokenizer):
    cfg = verl_config(
        *IMPORTLIB,
        "reward.custom_reward_function.path=pkg://gr_vl_verl.reward.score",
        "+reward.custom_reward_function.reward_kwargs.beta=0.1",
        "+reward.custom_reward_function.reward_kwargs.max_length=64",
    )
    m = load_reward_manager(cfg, tiny_tokenizer)
    assert m.user_compute_score is not None
    batch, lengths = make_batch(tiny_tokenizer, [HALF], [TRUTH])
    res = m.loop.run_until_complete(m.run_single(batch))
    expected = -0.5 / min(lengths[0] / 64, 0.1) ** 2
    assert res["reward_score"] == pytest.approx(expected)
    assert res["reward_extra_info"]["length"] == lengths[0]


def test_compute_score_also_works_under_verls_naive_manager(tiny_tokenizer):
    cfg = verl_config(
        "reward.custom_reward_function.path=pkg://gr_vl_verl.reward.score",
        "+reward.custom_reward_function.reward_kwargs.length_unit=chars",
    )
    m = load_reward_manager(cfg, tiny_tokenizer)
    assert type(m).__name__ == "NaiveRewardManager"
    batch, _ = make_batch(tiny_tokenizer, [RIGHT], [TRUTH])
    assert m.loop.run_until_complete(m.run_single(batch))["reward_score"] == 0.0


def test_bad_ground_truth_names_the_row(manager, tiny_tokenizer):
    batch, _ = make_batch(tiny_tokenizer, [RIGHT], [{"prompt_label": "dangerous", "response_label": None}])
    with pytest.raises(ValueError, match=r"row \{'index': 0, 'split': 'train'\}.*'dangerous'"):
        manager.loop.run_until_complete(manager.run_single(batch))


def test_bad_gr_vl_reward_block_fails_at_construction(tiny_tokenizer):
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['betta'\] in gr_vl.reward"):
        load_reward_manager(verl_config(*IMPORTLIB, "+gr_vl.reward.betta=1"), tiny_tokenizer)


def trajectory(tokenizer, outputs):
    """A multi-output trajectory as verl's agent loop sends it to the reward workers (``_compute_score``):
    prompts, responses and all-ones attention masks of each output right-padded to a common width, plus
    ``prompt_len`` / ``response_len`` per output."""
    prompts = [torch.tensor(tokenizer(p, add_special_tokens=False)["input_ids"]) for p, _ in outputs]
    responses = [torch.tensor(tokenizer(r, add_special_tokens=False)["input_ids"]) for _, r in outputs]
    pad = torch.nn.utils.rnn.pad_sequence
    full = [torch.cat([p, r]) for p, r in zip(prompts, responses, strict=True)]
    n = len(outputs)
    return DataProto.from_dict(
        tensors={
            "prompts": pad(prompts, batch_first=True),
            "responses": pad(responses, batch_first=True),
            "input_ids": pad(full, batch_first=True),
            "attention_mask": pad([torch.ones_like(f) for f in full], batch_first=True),
        },
        non_tensors={
            "data_source": np.array(["guardreasoner_vl/text"] * n, dtype=object),
            "reward_model": np.array([{"style": "rule", "ground_truth": TRUTH}] * n, dtype=object),
            "prompt_len": np.array([len(p) for p in prompts]),
            "response_len": np.array([len(r) for r in responses]),
        },
    )


def test_multi_output_trajectory_counts_the_last_outputs_response_len(manager, tiny_tokenizer):
    # A long first turn and a short final answer: the shared padding makes the mask's tail miscount.
    data = trajectory(tiny_tokenizer, [("Human user:\n" + "a long first turn " * 20, WRONG * 3), ("ok", HALF)])
    last = data[-1]
    n = len(tiny_tokenizer(HALF, add_special_tokens=False)["input_ids"])
    assert int(last.non_tensor_batch["response_len"]) == n
    assert int(last.batch["attention_mask"][-last.batch["responses"].shape[-1] :].sum()) != n  # the old count
    info = manager.loop.run_until_complete(manager.run_single(data))["reward_extra_info"]
    assert info["length"] == n
    assert info["r_safety"] == 0.5  # the final answer, decoded from its own tokens only
    assert info["length_norm"] == pytest.approx(n / RESPONSE_LENGTH)


def test_padded_batch_without_response_len_counts_the_attention_mask(manager, tiny_tokenizer):
    batch, lengths = make_batch(tiny_tokenizer, [WRONG, HALF], [TRUTH] * 2, pad_to=RESPONSE_LENGTH)
    assert "response_len" not in batch.non_tensor_batch
    infos = [manager.loop.run_until_complete(manager.run_single(batch[i : i + 1]))["reward_extra_info"] for i in (0, 1)]
    assert [i["length"] for i in infos] == lengths


def test_reward_model_without_custom_function_fails_at_construction(tiny_tokenizer):
    """verl would score with the reward model and never call the manager: say what to set instead."""
    with pytest.raises(ValueError, match=r"reward.reward_model.enable=true.*reward.reward_model.enable=false"):
        load_reward_manager(
            verl_config(*IMPORTLIB, "reward.reward_model.enable=true", "reward.reward_model.model_path=/rm"),
            tiny_tokenizer,
        )
    from gr_vl_verl.trainer import main_ppo

    with pytest.raises(main_ppo.SettingsError, match="never call GuardRewardManager"):
        main_ppo.validate_settings(verl_config(*IMPORTLIB, "reward.reward_model.enable=true"))
    # with a custom function verl routes every trajectory to the manager, which calls it with token counts
    m = load_reward_manager(
        verl_config(
            *IMPORTLIB,
            "reward.reward_model.enable=true",
            "reward.reward_model.model_path=/rm",
            "reward.custom_reward_function.path=pkg://gr_vl_verl.reward.score",
        ),
        tiny_tokenizer,
    )
    assert type(m) is GuardRewardManager and m.user_compute_score is not None
