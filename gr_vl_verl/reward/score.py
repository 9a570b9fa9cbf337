"""Length-aware safety reward of GuardReasoner-VL (paper eq. 8 and 10). Pure Python.

    r_safety = I_format * (0.5 * [request label correct] + 0.5 * [response label correct])      (8)
    score    = (r_safety - 1) / min(l_norm, beta) ** 2                                           (10)

A fully correct answer scores 0 at any length; a wrong one is less negative the longer it reasons, with the
gain capped at ``l_norm = beta`` (beta = 1 for GuardReasoner-VL; the Eco variant caps at 500 characters, see
:data:`PRESETS` and docs/reward.md).

``l_norm`` is the response length over ``max_length``. The paper counts tokens; the original code counted
characters / 3072 (kept as ``length_unit="chars"``). **Floor:** ``l_norm`` is at least one unit
(``1 / max_length``), so an empty or one-token answer gets a finite, very negative score
(``-(1 - r_safety) * max_length**2``) instead of the original code's division by zero. ``beta = inf`` means
no cap, as in the released code, whose ``l_norm`` exceeds 1 for answers over 3072 characters.

Besides the reward, each result carries the confusion terms of both tasks (:data:`F1_TERMS`): F1 is not a
mean of per-sample values, so verl's per-source averages cannot give it, but sums of these terms can.

The public entry point, :func:`compute_score`, has verl's custom-reward signature, so it also works with
verl's own reward managers (``reward.custom_reward_function``) and can be called positionally.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from gr_vl_verl.protocol import (
    LABELS,
    Labels,
    ParsedAnswer,
    gold_labels,
    label_correct,
    label_outcome,
    normalize_label,
    parse_answer,
)
from gr_vl_verl.settings import check_keys

LengthUnit = Literal["tokens", "chars"]
FormatMode = Literal["paper", "compat"]

#: Keys of every result, in order; the same for every input so verl can stack them into metrics.
SCORE_KEYS: tuple[str, ...] = (
    "score",
    "format",
    "think_ok",
    "result_ok",
    "prompt_acc",
    "response_acc",
    "r_safety",
    "length",
    "length_norm",
    "length_scale",
    "prompt_tp",
    "prompt_fp",
    "prompt_fn",
    "response_tp",
    "response_fp",
    "response_fn",
)

#: Per task, the keys of its confusion terms (true positive, false positive, false negative; ``harmful`` is the
#: positive class). Each is 0.0 or 1.0 per sample; summed over a data source they give the paper's F1.
F1_TERMS: dict[str, tuple[str, str, str]] = {
    task: (f"{task}_tp", f"{task}_fp", f"{task}_fn") for task in ("prompt", "response")
}


@dataclass(frozen=True)
class RewardConfig:
    """Hyper-parameters of the reward; defaults are the paper's (GuardReasoner-VL)."""

    beta: float = 1.0
    length_unit: LengthUnit = "tokens"
    max_length: int = 3072
    format_mode: FormatMode = "paper"
    #: False drops eq. 10's length factor (score = r_safety - 1): the paper's "w/o Len. Reward" ablation.
    length_term: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.beta, bool) or not isinstance(self.beta, int | float) or not self.beta > 0:
            raise ValueError(f"beta must be a number > 0 (inf: no cap), got {self.beta!r}")
        if self.length_unit not in ("tokens", "chars"):
            raise ValueError(f"length_unit must be 'tokens' or 'chars', got {self.length_unit!r}")
        if isinstance(self.max_length, bool) or not isinstance(self.max_length, int) or self.max_length < 1:
            raise ValueError(f"max_length must be an integer >= 1, got {self.max_length!r}")
        if self.format_mode not in ("paper", "compat"):
            raise ValueError(f"format_mode must be 'paper' or 'compat', got {self.format_mode!r}")
        if not isinstance(self.length_term, bool):
            raise ValueError(f"length_term must be true or false, got {self.length_term!r}")

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> RewardConfig:
        """Build from ``reward_kwargs``: an optional ``preset`` first, then explicit keys on top."""
        preset = kwargs.pop("preset", None)
        unknown = set(kwargs) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(
                f"unknown reward kwargs {sorted(unknown)}; expected preset, beta, length_unit, max_length, "
                "format_mode, length_term"
            )
        if preset is not None and preset not in PRESETS:
            raise ValueError(f"unknown reward preset {preset!r}; expected one of {sorted(PRESETS)}")
        base = PRESETS[preset] if preset is not None else cls()
        return dataclasses.replace(base, **kwargs)

    @classmethod
    def from_settings(cls, block: Mapping[str, Any], response_length: int | None = None) -> RewardConfig:
        """From the ``gr_vl.reward`` block: keys that are not null, over the preset's values.

        ``max_length: null`` in token mode means the rollout's ``response_length`` (the paper normalises by
        the rollout's maximum response length); character mode keeps the preset's 3072.
        """
        check_keys(block, SETTINGS_KEYS, "gr_vl.reward")
        kwargs = {k: v for k, v in block.items() if v is not None}
        config = cls.from_kwargs(**kwargs)
        if "max_length" not in kwargs and config.length_unit == "tokens" and response_length is not None:
            config = dataclasses.replace(config, max_length=int(response_length))
        return config


#: Keys of the ``gr_vl.reward`` block.
SETTINGS_KEYS: tuple[str, ...] = ("preset", *(f.name for f in dataclasses.fields(RewardConfig)))

#: Where the released code's Eco line stops the length gain: ``len(predict_str) < 500`` characters.
ECO_CAP_CHARS = 500
_ORIGINAL_MAX_CHARS = 3072

PRESETS: dict[str, RewardConfig] = {
    "gr-vl": RewardConfig(),
    # Eco caps where the authors' code did, at 500 characters of output (~100 tokens of guard reasoning).
    # The paper's beta = 1/6 read in token units would cap at 512 tokens, above almost every guard answer
    # (180-213 tokens on average), and Eco would score like gr-vl (docs/reward.md). Paper format gate.
    "gr-vl-eco": RewardConfig(
        beta=ECO_CAP_CHARS / _ORIGINAL_MAX_CHARS, length_unit="chars", max_length=_ORIGINAL_MAX_CHARS
    ),
    # The released code: characters / 3072 with no cap (l_norm > 1 past 3072 characters), only <result> required.
    "original": RewardConfig(beta=math.inf, length_unit="chars", max_length=_ORIGINAL_MAX_CHARS, format_mode="compat"),
    # The released code's commented-out Eco line: the length gain stops at 500 characters.
    "original-eco": RewardConfig(
        beta=ECO_CAP_CHARS / _ORIGINAL_MAX_CHARS,
        length_unit="chars",
        max_length=_ORIGINAL_MAX_CHARS,
        format_mode="compat",
    ),
}


# --------------------------------------------------------------------------------------------------
# Ground truth
# --------------------------------------------------------------------------------------------------
# The six label pairs a prepared parquet can hold, built once: the reward looks them up per rollout.
_CANONICAL_TRUTHS = {(p, r): Labels(p, r) for p in LABELS for r in (*LABELS, None)}


def parse_ground_truth(ground_truth: object, *, original: bool = False) -> Labels:
    """Labels from a dict (``prompt_label``/``response_label``), its JSON text, or an original answer string.

    Augmented (concatenated) rows must carry their merged labels as a dict: an answer string is read
    from its first ``<result>`` only, which is how the original code scored them against sample 1.
    ``original=True`` (compat mode) reads an answer string exactly as the released code did: both labels
    from its first ``<result>`` block, with the released regexes.
    """
    if type(ground_truth) is dict:  # hot path: the RL parquet's canonical labels
        try:
            truth = _CANONICAL_TRUTHS.get((ground_truth.get("prompt_label"), ground_truth.get("response_label")))
        except TypeError:  # an unhashable label: the checks below say what is wrong with it
            truth = None
        if truth is not None:
            return truth
    if isinstance(ground_truth, str) and ground_truth.lstrip().startswith("{"):
        try:
            ground_truth = json.loads(ground_truth)
        except json.JSONDecodeError as e:
            raise ValueError(f"ground_truth looks like JSON but does not parse: {e}") from None
    if isinstance(ground_truth, Mapping):
        if "prompt_label" not in ground_truth:
            raise ValueError(f"ground_truth has no 'prompt_label' (keys: {sorted(ground_truth)})")
        return Labels(
            normalize_label(ground_truth["prompt_label"], "ground_truth.prompt_label", allow_none=False),
            normalize_label(ground_truth.get("response_label"), "ground_truth.response_label", allow_none=True),
        )
    if isinstance(ground_truth, str):
        return _truth_from_original_answer(ground_truth) if original else _truth_from_answer(ground_truth)
    raise ValueError(
        f"ground_truth must be a dict with prompt_label/response_label or an answer string, "
        f"got {type(ground_truth).__name__}"
    )


@functools.lru_cache(maxsize=4096)
def _truth_from_answer(answer: str) -> Labels:
    """Labels of a reference answer string; cached, as the n rollouts of a prompt share their ground truth."""
    try:
        return gold_labels(answer)
    except ValueError as e:
        raise ValueError(f"ground_truth string: {e}") from None


@functools.lru_cache(maxsize=4096)
def _truth_from_original_answer(answer: str) -> Labels:
    """The released code's reading of a reference answer: labels from its first ``<result>`` block.

    Where that reading finds no block or no label the released code compared predictions against None
    (a missing predicted label then counted as right); that is refused here rather than reproduced.
    """
    parsed = parse_answer(answer, original=True)
    if parsed.result is None:
        raise ValueError(f"ground_truth string has no <result>…</result> block: {answer[:80]!r}")
    if parsed.prompt_label is None or parsed.response_label is None:
        raise ValueError(f"ground_truth <result> block lacks 'Request:' or 'Response:' label: {answer[:80]!r}")
    return Labels(parsed.prompt_label, None if parsed.response_is_none else parsed.response_label)


# --------------------------------------------------------------------------------------------------
# The reward
# --------------------------------------------------------------------------------------------------
def r_safety(parsed: ParsedAnswer, truth: Labels, format_mode: FormatMode) -> tuple[float, float, float, float]:
    """Eq. 8: ``(r_safety, format, prompt_acc, response_acc)``. Compat mode gates on ``<result>`` only."""
    has_result = parsed.result is not None
    fmt = 1.0 if has_result and (format_mode == "compat" or parsed.think is not None) else 0.0
    prompt_acc = 1.0 if label_correct(parsed.prompt_label, truth.prompt_label) else 0.0
    response_acc = 1.0 if label_correct(parsed.response_label, truth.response_label) else 0.0
    return fmt * (0.5 * prompt_acc + 0.5 * response_acc), fmt, prompt_acc, response_acc


# The confusion terms (tp, fp, fn) of each outcome of protocol.label_outcome; None: no gold label, no count.
_OUTCOME_TERMS: dict[str | None, tuple[float, float, float]] = {
    "tp": (1.0, 0.0, 0.0),
    "fp": (0.0, 1.0, 0.0),
    "fn": (0.0, 0.0, 1.0),
    "tn": (0.0, 0.0, 0.0),
    None: (0.0, 0.0, 0.0),
}


def f1_terms(parsed: ParsedAnswer, truth: Labels, fmt: float) -> tuple[float, float, float, float, float, float]:
    """``(prompt_tp, prompt_fp, prompt_fn, response_tp, response_fp, response_fn)`` for the labels the reward
    credits.

    An answer that fails the format gate (``fmt == 0``) credits no label, which counts as the wrong one; a row
    without a response (gold ``response_label`` None) counts in none of the response terms.
    """
    prompt_label, response_label = (parsed.prompt_label, parsed.response_label) if fmt else (None, None)
    return (
        _OUTCOME_TERMS[label_outcome(prompt_label, truth.prompt_label)]
        + _OUTCOME_TERMS[label_outcome(response_label, truth.response_label)]
    )


def length_norm(length: int, max_length: int) -> float:
    """``l_norm = length / max_length``, floored at one unit so the reward stays finite."""
    return max(length, 1) / max_length


def length_aware_reward(r_safe: float, l_norm: float, beta: float) -> float:
    """Eq. 10: ``(r_safety - 1) / min(l_norm, beta)**2``; 0 when fully correct."""
    return (r_safe - 1.0) / min(l_norm, beta) ** 2


def score_response(solution_str: str, truth: Labels, length: int, config: RewardConfig) -> dict[str, float]:
    """Every reward term for one response whose length (in ``config.length_unit``) is known."""
    parsed = parse_answer(solution_str, original=config.format_mode == "compat")
    r_safe, fmt, p_acc, r_acc = r_safety(parsed, truth, config.format_mode)
    l_norm = length_norm(length, config.max_length)
    scale = min(l_norm, config.beta) ** 2 if config.length_term else 1.0
    p_tp, p_fp, p_fn, r_tp, r_fp, r_fn = f1_terms(parsed, truth, fmt)
    return {
        "score": length_aware_reward(r_safe, l_norm, config.beta) if config.length_term else r_safe - 1.0,
        "format": fmt,
        "think_ok": 1.0 if parsed.think is not None else 0.0,
        "result_ok": 1.0 if parsed.result is not None else 0.0,
        "prompt_acc": p_acc,
        "response_acc": r_acc,
        "r_safety": r_safe,
        "length": float(length),
        "length_norm": l_norm,
        "length_scale": scale,
        "prompt_tp": p_tp,
        "prompt_fp": p_fp,
        "prompt_fn": p_fn,
        "response_tp": r_tp,
        "response_fp": r_fp,
        "response_fn": r_fn,
    }


def _response_length(solution_str: str, extra_info: Mapping[str, Any] | None, unit: LengthUnit) -> int:
    if unit == "chars":
        return len(solution_str)
    tokens = (extra_info or {}).get("response_tokens")
    if type(tokens) is int and tokens >= 0:
        return tokens
    if tokens is None:
        raise ValueError(
            "length_unit='tokens' needs extra_info['response_tokens'] (the response's token count; "
            "gr_vl_verl's reward manager passes it). With verl's own managers use length_unit='chars'."
        )
    if isinstance(tokens, bool) or not isinstance(tokens, int | float) or tokens < 0 or tokens != int(tokens):
        raise ValueError(f"extra_info['response_tokens'] must be a non-negative integer, got {tokens!r}")
    return int(tokens)


_CONFIGS: dict[tuple, RewardConfig] = {}
_DEFAULT = RewardConfig()


def _config_for(reward_kwargs: dict[str, Any]) -> RewardConfig:
    """``RewardConfig.from_kwargs``, memoised: verl passes the same kwargs for every sample of a run."""
    if not reward_kwargs:
        return _DEFAULT
    try:
        key = tuple(sorted(reward_kwargs.items()))
        hash(key)
    except TypeError:  # unhashable values: validate without caching (and let from_kwargs say what is wrong)
        return RewardConfig.from_kwargs(**reward_kwargs)
    config = _CONFIGS.get(key)
    if config is None:
        config = _CONFIGS[key] = RewardConfig.from_kwargs(**reward_kwargs)
    return config


def compute_score(
    data_source: str | None,
    solution_str: str,
    ground_truth: object,
    extra_info: Mapping[str, Any] | None = None,
    **reward_kwargs: Any,
) -> dict[str, float]:
    """verl custom-reward entry point: ``score`` plus every term (:data:`SCORE_KEYS`).

    ``reward_kwargs``: ``preset`` (``gr-vl``, ``gr-vl-eco``, ``original``, ``original-eco``), ``beta``,
    ``length_unit``, ``max_length``, ``format_mode``, ``length_term``. verl passes extra keys when a reward model
    is enabled (``reward_router_address``, ``reward_model_tokenizer``); they are ignored. Bad input raises
    ``ValueError`` naming the field, never a silent zero.
    """
    if reward_kwargs:
        reward_kwargs.pop("reward_router_address", None)
        reward_kwargs.pop("reward_model_tokenizer", None)
    config = _config_for(reward_kwargs) if reward_kwargs else _DEFAULT
    if not isinstance(solution_str, str):
        raise ValueError(f"solution_str must be str, got {type(solution_str).__name__}")
    if extra_info is not None and type(extra_info) is not dict and not isinstance(extra_info, Mapping):
        raise ValueError(f"extra_info must be a dict or None, got {type(extra_info).__name__}")
    truth = parse_ground_truth(ground_truth, original=config.format_mode == "compat")
    length = _response_length(solution_str, extra_info, config.length_unit)
    return score_response(solution_str, truth, length, config)
