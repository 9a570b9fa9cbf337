"""`gr-vl demo`, the README's main job, on the bundled sample corpus (small settings to stay quick)."""

import json

import pyarrow.parquet as pq
import pytest

from gr_vl_verl.cli import main


def test_demo_runs_the_pipeline_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--steps", "2", "--prompts", "2", "--n", "2"]
    assert main([*args, "--sft-steps", "40", "--max-new-tokens", "64"]) == 0
    summary = json.loads((out / "demo_summary.json").read_text())
    rl_rows = pq.read_metadata(out / "data" / "rl_train.parquet").num_rows
    assert summary["rows"] == rl_rows > 0  # verl's overlong filter dropped nothing
    assert summary["sft"]["sft/loss_last10"] < summary["sft"]["sft/loss_first10"]  # SFT learned something
    history = summary["history"]
    assert [h["step"] for h in history] == [1, 2]
    # linear schedule over 2 steps from 0.2: eps = 0.2 * (2 - s) / 2, pushed before each update
    assert [h["actor/clip_eps_low"] for h in history] == pytest.approx([0.1, 0.0])
    for h in history:
        # the reward manager's terms, as eq. 8 and 10 tie them: the format gate caps r_safety, and when every
        # answer is wrong each scores -1 / (tokens / 64)^2, whose mean is at most that of the mean length
        # (concave in the length); 64 new tokens is also the rollout's response length, the normaliser
        assert h["reward/r_safety"] <= h["reward/format"]
        assert 0 < h["reward/length"] <= 64
        if h["reward/r_safety"] == 0.0:
            assert h["reward/score_mean"] <= -((64 / h["reward/length"]) ** 2)
    assert "GRPO steps" in capsys.readouterr().out
