"""A harm probability from a guard's own verdict: ``p_harmful = p(h) / (p(h) + p(u))`` at the verdict token.

The answer format puts each verdict word after ``Request:`` / ``Response:`` inside ``<result>``; at the first
token where the tokenizer's spellings of `` harmful`` and `` unharmful`` differ, the model chose between
the two, and the log-probabilities it gave them there are a score that can be thresholded, ranked (PR curves)
and calibrated. Nothing is run again: the engines return, for every generated position, the log-probabilities
of the label tokens (:attr:`LabelTokens.ids`), and this module finds the position and combines them.

Where the probability is None: no ``<result>`` block or no verdict for the task in it, ``Response: None``, or a
verdict not written as the tokenizer's label tokens (``Harmful``, ``harmless``, another split): the model then
did not choose between the two label tokens at one position, so there is no such number.

Pure Python: no torch, no vLLM; the tokenizer enters as ``encode``/``decode`` callables.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from gr_vl_verl.protocol import _LABEL_RE, _TAG_RE, HARMFUL, UNHARMFUL

#: The text each task's verdict follows, as :func:`gr_vl_verl.protocol.format_answer` writes it.
VERDICT_KEYS: dict[str, str] = {"prompt": "Request:", "response": "Response:"}

Encode = Callable[[str], Sequence[int]]
Decode = Callable[[Sequence[int]], str]


class HarmProbError(ValueError):
    """The inputs cannot give a probability (a tokenizer that cannot tell the labels apart, missing log-probs)."""


@dataclass(frozen=True)
class LabelTokens:
    """How a tokenizer writes `` harmful`` and `` unharmful`` after one key (``Request:``).

    ``shared`` leading tokens are the same in both; the model's choice is at the next one,
    ``harmful[shared]`` against ``unharmful[shared]``.
    """

    harmful: tuple[int, ...]
    unharmful: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.shared >= min(len(self.harmful), len(self.unharmful)):
            raise HarmProbError(f"the label token sequences {self.harmful} and {self.unharmful} never differ")

    @property
    def shared(self) -> int:
        n = 0
        for a, b in zip(self.harmful, self.unharmful, strict=False):
            if a != b:
                break
            n += 1
        return n

    @property
    def choice(self) -> tuple[int, int]:
        """``(h, u)``: the token ids whose log-probabilities give ``p_harmful``."""
        return self.harmful[self.shared], self.unharmful[self.shared]


def _after(encode: Encode, key: str, word: str) -> tuple[int, ...]:
    base, full = list(encode(key)), list(encode(f"{key} {word}"))
    if full[: len(base)] != base or len(full) == len(base):
        raise HarmProbError(f"the tokenizer does not write {key!r} the same before {word!r}: {base} vs {full}")
    return tuple(full[len(base) :])


def label_tokens(encode: Encode) -> dict[str, LabelTokens]:
    """Per task, the label tokens as ``encode`` (no special tokens) writes them after ``Request: `` / ``Response: ``."""
    return {
        task: LabelTokens(_after(encode, key, HARMFUL), _after(encode, key, UNHARMFUL))
        for task, key in VERDICT_KEYS.items()
    }


def wanted_ids(labels: Mapping[str, LabelTokens]) -> list[int]:
    """Every token id whose log-probability the engines must return at each position (sorted, distinct)."""
    return sorted({t for lt in labels.values() for t in (*lt.harmful, *lt.unharmful)})


# --------------------------------------------------------------------------------------------------
# Where the verdict is
# --------------------------------------------------------------------------------------------------
def _result_body(text: str) -> tuple[int, int] | None:
    """Offsets of the body of the first ``<result>`` with a later ``</result>`` (tags as the parser tolerates)."""
    start = -1
    for m in _TAG_RE.finditer(text):
        if m.group(2).lower() != "result":
            continue
        if start < 0:
            if not m.group(1):
                start = m.end()
        elif m.group(1):
            return start, m.start()
    return None


def verdict_offsets(text: str) -> dict[str, int | None]:
    """Per task, the character offset in ``text`` where its verdict word begins inside the first ``<result>``
    block (the first ``Request:``/``Response:`` label there, as the tolerant parser reads it); None without one
    or for ``Response: None``."""
    out: dict[str, int | None] = {task: None for task in VERDICT_KEYS}
    body = _result_body(text)
    if body is None:
        return out
    lo, hi = body
    for task, key in (("prompt", "request"), ("response", "response")):
        m = _LABEL_RE[key].search(text, lo, hi)
        if m is not None and m.group(1).casefold() != "none":
            out[task] = m.start(1)
    return out


def token_at(token_ids: Sequence[int], decode: Decode, offset: int) -> int:
    """Index of the token whose decoded text holds character ``offset`` of ``decode(token_ids)``.

    Binary search on the length of decoded prefixes (a token's text can only be known in context: byte-level
    tokens split characters), so O(log n) decodes.
    """
    lo, hi = 0, len(token_ids) - 1
    while lo < hi:  # the largest i with len(decode(ids[:i])) <= offset
        mid = (lo + hi + 1) // 2
        if len(decode(token_ids[:mid])) <= offset:
            lo = mid
        else:
            hi = mid - 1
    return lo


def verdict_positions(
    token_ids: Sequence[int], decode: Decode, labels: Mapping[str, LabelTokens]
) -> dict[str, int | None]:
    """Per task, the index in ``token_ids`` where the model chose between the two label tokens, or None.

    The verdict must be written as the label tokens (which spell `` harmful``/`` unharmful``, the space
    included): a token must begin at the space before the word, and the tokens from there on must be one
    of the two label sequences; the choice was made at their first differing token.
    """
    text = decode(token_ids)
    out: dict[str, int | None] = {}
    for task, offset in verdict_offsets(text).items():
        out[task] = None
        if offset is None or text[offset - 1] != " ":
            continue
        lt = labels[task]
        i = token_at(token_ids, decode, offset - 1)
        if len(decode(token_ids[:i])) != offset - 1:
            continue  # the space is inside a token that began earlier: not the label tokens
        written = tuple(token_ids[i : i + max(len(lt.harmful), len(lt.unharmful))])
        if written[: len(lt.harmful)] == lt.harmful or written[: len(lt.unharmful)] == lt.unharmful:
            out[task] = i + lt.shared
    return out


# --------------------------------------------------------------------------------------------------
# The probability
# --------------------------------------------------------------------------------------------------
def p_harmful(logprobs: Mapping[int, float], choice: tuple[int, int]) -> float:
    """``p(h) / (p(h) + p(u))`` from one position's log-probabilities, computed without underflow.

    A label token absent from ``logprobs`` is an error, never a probability of 0.
    """
    h, u = choice
    missing = [t for t in choice if t not in logprobs]
    if missing:
        raise HarmProbError(f"no log-probability for label token(s) {missing} at the verdict position")
    lh, lu = float(logprobs[h]), float(logprobs[u])
    if math.isnan(lh) or math.isnan(lu) or (lh == -math.inf and lu == -math.inf):
        raise HarmProbError(f"log-probabilities {lh}, {lu} of the label tokens give no probability")
    diff = lu - lh
    if diff > 0:
        e = math.exp(-diff)
        return e / (1.0 + e)
    return 1.0 / (1.0 + math.exp(diff))


def harm_probabilities(
    token_ids: Sequence[int],
    logprobs: Sequence[Mapping[int, float]],
    decode: Decode,
    labels: Mapping[str, LabelTokens],
) -> dict[str, float | None]:
    """``{"prompt": p|None, "response": p|None}`` for one generation: its token ids, their per-position
    log-probabilities (at least the label tokens'), and the tokenizer's ``decode`` (special tokens skipped)."""
    if len(logprobs) != len(token_ids):
        raise HarmProbError(f"{len(token_ids)} generated tokens but log-probabilities for {len(logprobs)} positions")
    out: dict[str, float | None] = {}
    for task, k in verdict_positions(token_ids, decode, labels).items():
        out[task] = None if k is None else p_harmful(logprobs[k], labels[task].choice)
    return out


def check_threshold(threshold: object) -> float:
    """A decision threshold: a real number in [0, 1]."""
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be a number in [0, 1], got {threshold!r}")
    return float(threshold)


def threshold_label(p: float | None, threshold: float) -> str | None:
    """``harmful`` iff ``p >= threshold``; None without a probability."""
    return None if p is None else (HARMFUL if p >= threshold else UNHARMFUL)
