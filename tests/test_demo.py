"""`gr-vl demo`, the README's main job: every stage on the bundled sample, reduced to stay quick.

It runs as the README runs it, a `gr-vl` process of its own (its Ray pipelines live and end there), and the
assertions are ones a broken stage would fail: the SFT loss falls, mining and concatenation produce the counts
their rules give, the clip range follows the linear schedule step by step, the reward terms agree with eq. 8
and 10, and the report's averages are an independent recomputation (scikit-learn) of the predictions file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import sklearn_scores

STEPS, MAX_TOKENS = 2, 48


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, dict, str]:
    out = tmp_path_factory.mktemp("demo") / "out"
    argv = ["demo", "--out", str(out), "--sft-steps", "40", "--k", "2", "--steps", str(STEPS), "--prompts", "2",
            "--n", "2", "--max-new-tokens", str(MAX_TOKENS)]  # fmt: skip
    env = dict(os.environ, RAY_AUTH_MODE="disabled", TOKENIZERS_PARALLELISM="false")
    done = subprocess.run(
        [sys.executable, "-m", "gr_vl_verl", *argv], capture_output=True, text=True, env=env, timeout=800
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return out, json.loads((out / "demo_summary.json").read_text()), done.stdout


def test_every_stage_runs_and_every_artifact_exists(demo):
    out, summary, stdout = demo
    assert list(summary["stages"]) == ["tiny Qwen2.5-VL", "gr-vl prep", "reasoning SFT", "gr-vl mine",
                                       "gr-vl augment", "GRPO steps", "gr-vl eval", "gr-vl score"]  # fmt: skip
    assert all(stage["seconds"] >= 0 for stage in summary["stages"].values())
    for name, path in summary["artifacts"].items():
        assert Path(path).exists(), name
    assert "[8/8] gr-vl score" in stdout and "Artifacts:" in stdout
    for model in ("sft", "grpo"):  # Hugging Face folders the next stage loads
        assert (out / "models" / model / "config.json").is_file()
        assert (out / "models" / model / "processor_config.json").is_file()


def test_sft_learns_and_mining_and_concatenation_follow_their_rules(demo):
    out, summary, _ = demo
    assert summary["sft"]["loss_last"] < summary["sft"]["loss_first"]
    totals = summary["mining"]
    rl_rows = pq.read_metadata(out / "data" / "rl_train.parquet").num_rows
    assert totals["rows"] == rl_rows == sum(totals["histogram"].values())
    assert totals["kept"] == totals["histogram"]["0"]  # --max-correct 0: only rows with no right answer
    assert totals["train"] + totals["val"] == totals["selected"] == totals["kept"]  # --sample-num all
    mined = pq.read_metadata(out / "mined" / "rl_train.parquet").num_rows
    augmented = pq.read_table(out / "mined" / "rl_train_aug.parquet").column("extra_info").to_pylist()
    concatenated = [info for info in augmented if info["concat_of"]]
    assert mined == totals["train"] and len(augmented) == mined + len(concatenated)
    assert len(concatenated) == int(mined * 0.2 / 0.8 + 0.5)  # 20 % of the output, rounded half up


def test_grpo_pushes_the_scheduled_clip_and_scores_with_the_paper_reward(demo):
    _, summary, _ = demo
    history = summary["grpo"]
    assert [h["step"] for h in history] == list(range(1, STEPS + 1))
    # linear schedule from 0.2 over the run's steps, pushed before each update
    assert [h["actor/clip_eps_low"] for h in history] == pytest.approx([0.2 * (STEPS - s) / STEPS for s in (1, 2)])
    assert [h["actor/clip_eps_high"] for h in history] == [h["actor/clip_eps_low"] for h in history]
    for h in history:
        assert "actor/pg_loss" in h and "actor/entropy_loss" in h  # verl's ppo_loss ran, entropy term included
        # eq. 8: the format gate caps r_safety; eq. 10: every answer scores (r - 1) / min(l, 1)^2 <= 0, and when
        # every answer is wrong the mean is at most -1 over the squared mean normalised length (Jensen)
        assert h["reward/r_safety"] <= h["reward/format"]
        assert 0 < h["reward/length"] <= MAX_TOKENS
        assert h["reward/score"] <= 0.0
        if h["reward/r_safety"] == 0.0:
            assert h["reward/score"] <= -((MAX_TOKENS / h["reward/length"]) ** 2) + 1e-6


def test_the_report_is_a_recomputation_of_the_predictions(demo):
    out, summary, _ = demo
    report = json.loads((out / "report" / "report.json").read_text())
    # recomputed independently: the released evaluator's regexes and scikit-learn's f1_score (compat mode)
    recomputed = sklearn_scores.averages(out / "eval" / "grpo" / "predictions.jsonl")
    assert report["mode"] == "compat"
    for task in ("prompt", "response"):
        for key in ("average_text", "average_all"):
            assert report[task][key] == pytest.approx(recomputed[task][key])
            assert summary["report"][task][key] == pytest.approx(recomputed[task][key])
    markdown = (out / "report" / "report.md").read_text()
    assert "| GRPO |" in markdown and "| R-SFT |" in markdown  # both models side by side
    for chart in ("f1_per_benchmark.png", "f1_vs_tokens.png"):
        assert (out / "report" / chart).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
