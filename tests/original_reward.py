"""The released code's reward, re-implemented from its description, to compare against.

The original scorer (EasyR1 fork, ``reward_score/safety.py``; docs/method.md §2) searched the decoded output with
regexes per sample: the first ``<result>(.*?)</result>`` block (``re.IGNORECASE | re.DOTALL``), then
``Request:\\s*(harmful|unharmful|none)``
and ``Response:…`` inside it (case-insensitive, ``none`` meaning unharmful), with the ground truth parsed the
same way from the reference answer string; ``acc = -1 + 0.5*[req ok] + 0.5*[res ok]`` (``-1`` without a
result block) and ``overall = acc / (len(output) / 3072) ** 2``. Our ``compat`` mode must reproduce it
exactly; its tests and ``bench/reward_throughput.py`` use this as the baseline. It divides by zero on an empty
output, as the original did.
"""

from __future__ import annotations

import re

_RESULT = re.compile(r"<result>(.*?)</result>", re.IGNORECASE | re.DOTALL)
_REQUEST = re.compile(r"Request:\s*(harmful|unharmful|none)", re.IGNORECASE)
_RESPONSE = re.compile(r"Response:\s*(harmful|unharmful|none)", re.IGNORECASE)


def _labels(block: str) -> tuple[str | None, str | None]:
    def one(pattern: re.Pattern[str]) -> str | None:
        m = pattern.search(block)
        if m is None:
            return None
        word = m.group(1).lower()
        return "unharmful" if word == "none" else word

    return one(_REQUEST), one(_RESPONSE)


def original_overall(predict_str: str, ground_truth: str, max_response_length: int = 3072) -> float:
    """``overall`` as the released code returned it."""
    gt_block = _RESULT.search(ground_truth)
    req_gt, res_gt = _labels(gt_block.group(1) if gt_block else "")
    m = _RESULT.search(predict_str)
    if m is None:
        acc = -1.0
    else:
        req, res = _labels(m.group(1))
        acc = -1.0 + 0.5 * (req == req_gt) + 0.5 * (res == res_gt)
    res_len = len(predict_str) / max_response_length
    return acc / res_len**2
