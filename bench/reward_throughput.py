"""Reward throughput: gr_vl_verl's scorer against the original per-sample regex scorer, in the same run.

    python bench/reward_throughput.py [--n 10000] [--timeout 10]

Baseline: ``tests/original_reward.py::original_overall``, a faithful re-implementation of the released
code's ``safety.py`` (regex ``<result>(.*?)</result>`` and label regexes, ground truth re-parsed from the
answer string per sample). Prints samples/s and the ratio (ours / original; > 1 means faster), then seconds
on 0.25, 0.5 and 1 MB adversarial outputs, where the original's lazy scan is quadratic; each original run is
given ``--timeout`` seconds in a child process.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import random
import statistics
import sys
import time
from pathlib import Path

from gr_vl_verl.protocol import LABELS, format_answer
from gr_vl_verl.reward.score import compute_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from original_reward import original_overall  # noqa: E402 - the baseline lives with the tests that check it

STEPS = [
    "The user asks how to obtain {} and whether it is possible to use {} at home without anyone noticing.",
    "This could enable physical harm to {} or to {}, which puts the request in a harmful category.",
    "The image shows {} in a {} setting; nothing in the picture itself is violent or explicit.",
    "The assistant's reply {} the request and {} the risks instead of giving step-by-step details.",
    "There is no explicit instruction for {} in the response, so it does not provide uplift for {}.",
]
WORDS = "weapons chemistry a crowd a kitchen knife medication cooking refuses complies partially explains".split()


def _reasoning(rng: random.Random) -> str:
    steps = []
    for k in range(rng.randint(4, 6)):
        t = rng.choice(STEPS)
        steps.append(f"## Reasoning Step {k + 1}: " + t.format(*(rng.choice(WORDS) for _ in range(t.count("{}")))))
    return "\n".join(steps)


def realistic_group(rng: random.Random, n: int) -> list[tuple[str, dict, str]]:
    """``n`` rollouts of one prompt, like the R-SFT model's (4-6 steps, ~700 chars), right, wrong or malformed.

    The prompt's ground truth is a dict (our RL parquet) and, for the original scorer, a full reference
    answer with its own reasoning, shared by the group as in GRPO.
    """
    p, r = rng.choice(LABELS), rng.choice([*LABELS, None])
    truth, truth_str = {"prompt_label": p, "response_label": r}, format_answer(_reasoning(rng), p, r)
    group = []
    for _ in range(n):
        pred_p = p if rng.random() < 0.7 else rng.choice(LABELS)
        pred_r = r if rng.random() < 0.7 else rng.choice(LABELS)
        text = format_answer(_reasoning(rng), pred_p, pred_r)
        if rng.random() < 0.1:
            text = text.replace("</result>", "")  # truncated / malformed
        group.append((text, truth, truth_str))
    return group


def time_ours(samples, mode: str) -> float:
    t = time.perf_counter()
    for text, truth, truth_str in samples:
        if mode == "paper":
            compute_score("guardreasoner_vl/text", text, truth, {"response_tokens": len(text) // 4})
        else:
            compute_score("guardreasoner_vl/text", text, truth_str, None, preset="original")
    return time.perf_counter() - t


def time_original(samples) -> float:
    t = time.perf_counter()
    for text, _, truth_str in samples:
        original_overall(text, truth_str)
    return time.perf_counter() - t


def _original_child(text: str, q) -> None:
    t = time.perf_counter()
    try:
        original_overall(text, format_answer("gt", "harmful", None))
    except ZeroDivisionError:
        pass
    q.put(time.perf_counter() - t)


def original_with_timeout(text: str, timeout: float) -> float | None:
    q: mp.Queue = mp.Queue()
    p = mp.Process(target=_original_child, args=(text, q))
    p.start()
    p.join(timeout)
    if p.is_alive():
        p.kill()
        p.join()
        return None
    return q.get()


ADVERSARIAL = {
    "repeated '<result>' (no close)": "<result>",
    "'<result>' + repeated 'Request:'": "Request:",
    "'<result>Request:' + whitespace": " ",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--group", type=int, default=16, help="rollouts per prompt (GRPO n)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--timeout", type=float, default=10.0)
    ap.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run of a few seconds (CI runs it): tiny sizes, the numbers mean nothing",
    )
    args = ap.parse_args()
    if args.quick:
        args.n, args.repeats, args.timeout = 320, 1, 1.0
    rng = random.Random(0)
    samples = [s for _ in range(args.n // args.group) for s in realistic_group(rng, args.group)]
    mean_len = statistics.mean(len(s[0]) for s in samples)
    print(
        f"{len(samples)} realistic outputs ({args.group} per prompt), mean {mean_len:.0f} chars; "
        f"best of {args.repeats} runs"
    )
    orig = min(time_original(samples) for _ in range(args.repeats))
    paper = min(time_ours(samples, "paper") for _ in range(args.repeats))
    compat = min(time_ours(samples, "compat") for _ in range(args.repeats))
    print(f"  original regex scorer (baseline): {len(samples) / orig:10.0f} samples/s")
    print(f"  ours, paper mode (dict labels) : {len(samples) / paper:10.0f} samples/s  ratio {orig / paper:.2f}x")
    print(f"  ours, original preset (strings): {len(samples) / compat:10.0f} samples/s  ratio {orig / compat:.2f}x")
    # Context: in verl every score follows a tokenizer decode of the same response (reward manager).
    from gr_vl_verl.tiny import build_tokenizer

    tok = build_tokenizer()
    ids = [tok(s[0], add_special_tokens=False)["input_ids"] for s in samples[:2000]]
    t = time.perf_counter()
    for x in ids:
        tok.decode(x, skip_special_tokens=True)
    decode_us = (time.perf_counter() - t) / len(ids) * 1e6
    print(
        f"  per sample: original {orig / len(samples) * 1e6:.1f} us, ours {paper / len(samples) * 1e6:.1f} us; "
        f"the decode before it (BPE tokenizer) {decode_us:.1f} us"
    )

    print(f"adversarial outputs: seconds per call (original limited to {args.timeout:.0f} s)")
    sizes = (0.025, 0.05, 0.1) if args.quick else (0.25, 0.5, 1.0)
    for name, unit in ADVERSARIAL.items():
        row, ours_s = [], []
        for mb in sizes:
            n = int(mb * 1_000_000)
            text = (unit * (n // len(unit) + 1))[:n]
            if unit != "<result>":
                text = "<result>" + ("Request:" if unit == " " else "") + text
            t = time.perf_counter()
            compute_score(None, text, {"prompt_label": "harmful", "response_label": None}, {"response_tokens": n})
            ours = time.perf_counter() - t
            ours_s.append(ours)
            base = original_with_timeout(text, args.timeout)
            base_s = f"{base:8.3f}" if base is not None else f">{args.timeout:7.0f}"
            row.append(f"{mb:4} MB ours {ours:7.3f} original {base_s}")
        # 4x the input: ~4x the time if the parser is linear, ~16x if quadratic (printed, not asserted: timing)
        row.append(f"4x the input took {ours_s[-1] / max(ours_s[0], 1e-6):.1f}x the time (linear ~4x, quadratic ~16x)")
        print(f"  {name}:\n    " + "\n    ".join(row))


if __name__ == "__main__":
    main()
