"""verl reward-loop manager for the guard: token length in, every reward term out.

verl's managers pass ``compute_score`` the decoded text only; the paper's length term needs the response's
token count and the rollout's maximum length, so this manager reads both (from verl's ``response_len``, or
the attention mask, and from ``actor_rollout_ref.rollout.response_length``) and hands them over in
``extra_info``.

Use it either way (verl 0.9.1; the legacy ``verl.workers.reward_manager`` registry is not read by the trainer)::

    reward.reward_manager.source=importlib reward.reward_manager.name=GuardRewardManager \
    reward.reward_manager.module.path=pkg://gr_vl_verl.reward.manager
    # or, with the package installed (its verl.plugins entry point registers the name):
    reward.reward_manager.name=gr_vl

Settings come from an optional top-level ``gr_vl.reward`` block (``preset``, ``beta``, ``length_unit``,
``max_length``, ``format_mode``; ``max_length: null`` means the rollout's response length). If the user sets
``reward.custom_reward_function.path``, that function is called instead, with the same ``extra_info``.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig
from verl import DataProto
from verl.experimental.reward_loop.reward_manager.base import RewardManagerBase
from verl.utils.reward_score import default_compute_score

from gr_vl_verl.reward.score import RewardConfig, parse_ground_truth, score_response
from gr_vl_verl.settings import section, select

#: Name under which the ``verl.plugins`` entry point registers this manager.
REGISTERED_NAME = "gr_vl"


class GuardRewardManager(RewardManagerBase):
    """Scores one guard trajectory per ``run_single`` call with the length-aware safety reward."""

    def __init__(
        self,
        config: DictConfig,
        tokenizer: Any,
        compute_score: Any = None,
        reward_router_address: str | None = None,
        reward_model_tokenizer: Any = None,
        **_: Any,
    ) -> None:
        check_reward_model_settings(config)
        super().__init__(config, tokenizer, compute_score)
        # verl hands every manager its generic default when no custom function is configured.
        self.user_compute_score = None if compute_score in (None, default_compute_score) else compute_score
        self.is_async_user_score = inspect.iscoroutinefunction(self.user_compute_score)
        self.max_response_length = select(config, "actor_rollout_ref.rollout.response_length")
        self.reward_config = RewardConfig.from_settings(section(config, "reward"), self.max_response_length)
        self.reward_router_address = reward_router_address
        self.reward_model_tokenizer = reward_model_tokenizer

    async def run_single(self, data: DataProto) -> dict:
        item = data[-1]  # multi-sequence trajectories: the last sequence carries the verdict
        response_ids = item.batch["responses"]
        valid_len = response_token_count(item)
        ground_truth = item.non_tensor_batch["reward_model"]["ground_truth"]
        data_source = item.non_tensor_batch.get("data_source")
        extra_info = dict(item.non_tensor_batch.get("extra_info") or {})
        extra_info["response_tokens"] = valid_len
        extra_info["max_response_length"] = self.max_response_length
        truncated = self.max_response_length is not None and valid_len >= int(self.max_response_length)

        def decode_and_score() -> tuple[str, dict[str, float] | None]:
            text = self.tokenizer.decode(response_ids[:valid_len], skip_special_tokens=True)
            if self.user_compute_score is not None:
                return text, None
            return text, self._score(text, ground_truth, valid_len, data_source, extra_info)

        text, result = await self.loop.run_in_executor(None, decode_and_score)
        if result is None:
            result = await self._user_score(data_source, text, ground_truth, extra_info)
        if isinstance(result, Mapping):
            score = float(result["score"])
            info = dict(result)
        else:
            score = float(result)
            info = {"acc": score}
        info["truncated"] = float(truncated)
        return {"reward_score": score, "reward_extra_info": info}

    def _score(
        self, text: str, ground_truth: Any, valid_len: int, data_source: Any, extra_info: Mapping[str, Any]
    ) -> dict[str, float]:
        try:
            truth = parse_ground_truth(ground_truth, original=self.reward_config.format_mode == "compat")
        except ValueError as e:
            where = {k: extra_info.get(k) for k in ("id", "index", "split") if k in extra_info}
            raise ValueError(f"bad ground truth in row {where} (data_source={data_source!r}): {e}") from None
        length = valid_len if self.reward_config.length_unit == "tokens" else len(text)
        out = score_response(text, truth, length, self.reward_config)
        out["acc"] = out["r_safety"]  # verl's validation summary ("val-core") looks for `acc`
        return out

    async def _user_score(self, data_source: Any, text: str, ground_truth: Any, extra_info: dict) -> Any:
        kwargs: dict[str, Any] = dict(
            data_source=data_source, solution_str=text, ground_truth=ground_truth, extra_info=extra_info
        )
        if self.reward_router_address is not None:
            kwargs["reward_router_address"] = self.reward_router_address
            kwargs["reward_model_tokenizer"] = self.reward_model_tokenizer
        if self.is_async_user_score:
            return await self.user_compute_score(**kwargs)
        return await self.loop.run_in_executor(None, lambda: self.user_compute_score(**kwargs))


def response_token_count(item: Any) -> int:
    """Tokens in one trajectory item's response.

    verl's agent loop (streaming path) sends ``response_len`` per sequence: a multi-output trajectory pads its
    sequences to a common width, prompts included, so the attention mask's tail is no count there. The
    colocated path sends a padded batch without it; there the mask's last ``responses.shape[-1]`` columns
    (left-padded prompts, right-padded responses) count the response tokens.
    """
    response_len = item.non_tensor_batch.get("response_len")
    if response_len is not None:
        return int(response_len)
    width = item.batch["responses"].shape[-1]
    return int(item.batch["attention_mask"][-width:].sum())


def check_reward_model_settings(config: Any) -> None:
    """Refuse the one verl setting that silently bypasses this manager.

    With ``reward.reward_model.enable=true`` and no ``reward.custom_reward_function.path``, verl 0.9.1's
    ``RewardLoopWorker.compute_score`` scores every trajectory with the reward model and never calls the
    configured manager, so the guard reward would not be computed at all.
    """
    if select(config, "reward.reward_model.enable") and select(config, "reward.custom_reward_function.path") is None:
        raise ValueError(
            "reward.reward_model.enable=true without reward.custom_reward_function.path: verl would score "
            "with the reward model and never call GuardRewardManager. Set reward.reward_model.enable=false "
            "for the guard reward, or set reward.custom_reward_function.path (e.g. "
            "pkg://gr_vl_verl.reward.score, which this manager calls with token counts) to combine it with a "
            "reward model."
        )


def _register() -> None:
    """Register under :data:`REGISTERED_NAME` in verl's reward-loop registry (``source=register``)."""
    from verl.experimental.reward_loop.reward_manager.registry import REWARD_MANAGER

    if REWARD_MANAGER.get(REGISTERED_NAME) is not GuardRewardManager:
        REWARD_MANAGER[REGISTERED_NAME] = GuardRewardManager


_register()
