"""verl's own trainers with the plugin, for real, on this CPU: R-SFT through ``verl.trainer.sft_trainer`` with
``gr_vl_sft.yaml``, then GRPO through ``python -m gr_vl_verl.trainer.main_ppo trainer.device=cpu`` (verl's V1
trainer, FSDP2 on gloo, a vLLM CPU rollout server, the plugin's reward manager and clip push), then a resumed run.

The GRPO model is the SFT'd tiny model with a response limit some answers finish within, so the answers of a
group get different rewards and the update is real (non-zero advantages and ``actor/pg_loss``). Every figure
asserted comes from the runs' own metrics (verl's file logger) and files. About 7 minutes on two cores.
"""

from __future__ import annotations

import json

import pytest
from data_helpers import VLTEST, VLTRAIN

from gr_vl_verl.trainer import launch
from gr_vl_verl.trainer.clip_schedule import ClipSchedule

pytestmark = pytest.mark.timeout(2400)

SMALL = ["--min-pixels", "784", "--max-pixels", "12544", "--no-progress"]
SFT_STEPS = 60
STEPS = 3
N = 4
# The clip decays over 8 steps, so the runs' 4 steps all have a distinct, non-zero range to check.
HORIZON = ["gr_vl.clip.total_steps=8"]
SCHEDULE = ClipSchedule(total_steps=8)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir) -> dict[str, object]:
    from gr_vl_verl.cli import main

    root = tmp_path_factory.mktemp("e2e")
    data = root / "data"
    assert main(["prep", "vltrain", "--data-root", str(VLTRAIN), "--out", str(data), "--sft-min-pixels", "784",
                 "--sft-max-pixels", "12544", *SMALL]) == 0  # fmt: skip
    assert main(["prep", "vltest", "--benchmark-dir", str(VLTEST / "benchmark"), "--image-dataset",
                 str(VLTEST / "images"), "--out", str(data), *SMALL]) == 0  # fmt: skip
    sft_out = root / "sft"
    sft = launch.run(
        launch.sft_command(tiny_model_dir, data / "sft_train.parquet", sft_out, SFT_STEPS), root, "sft", timeout=900
    )
    sft_model = launch.hf_folder(sft_out, SFT_STEPS, actor=False)
    grpo_out = root / "grpo"
    train, val = data / "rl_train.parquet", data / "rl_train.parquet"
    first = launch.grpo_command(sft_model, train, val, grpo_out, STEPS, n=N, extra=HORIZON)
    grpo = launch.run(first, root, "grpo", timeout=1200)
    again = launch.grpo_command(sft_model, train, val, grpo_out, STEPS + 1, n=N, extra=HORIZON)
    resumed = launch.run(again, root, "grpo_resumed", timeout=1200)
    return {"data": data, "sft": sft, "sft_model": sft_model, "grpo": grpo, "grpo_out": grpo_out, "resumed": resumed}


def test_sft_loss_falls_and_the_saved_model_loads_in_eval(runs, tmp_path):
    from gr_vl_verl.cli import main

    steps = runs["sft"].metrics()
    losses = [steps[s]["train/loss"] for s in sorted(steps) if "train/loss" in steps[s]]
    assert len(losses) == SFT_STEPS
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10, losses
    out = tmp_path / "eval"
    argv = ["eval", "--data", str(runs["data"] / "eval.parquet"), "--model", str(runs["sft_model"]), "--out",
            str(out), "--backend", "transformers", "--max-tokens", "8", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert predictions and all(isinstance(p["output"], str) for p in predictions)


def test_grpo_steps_push_the_schedule_and_log_every_reward_term(runs):
    steps = runs["grpo"].metrics()
    assert sorted(steps) == list(range(1, STEPS + 1))
    for step, m in steps.items():  # the paper's linear decay from 0.2 (gr_vl_trainer.yaml), over 8 steps
        assert (m["actor/clip_eps_low"], m["actor/clip_eps_high"]) == pytest.approx(SCHEDULE.eps(step, STEPS))
        for term in ("score", "format", "r_safety", "length", "truncated", "prompt_acc"):
            assert f"reward/{term}/mean" in m, (step, sorted(k for k in m if k.startswith("reward/")))
    # the update is real: answers in a group got different rewards
    assert any(m["critic/advantages/max"] > 0 and m["actor/pg_loss"] != 0 for m in steps.values())
    assert any(0 < m["reward/truncated/mean"] < 1 for m in steps.values())
    final = steps[STEPS]
    assert "val/f1_prompt" in final and any(k.startswith("val-core/") for k in final)


def test_checkpoint_is_written_and_a_resumed_run_continues_the_schedule(runs):
    checkpoints = runs["grpo_out"] / "checkpoints"
    assert (checkpoints / f"global_step_{STEPS}" / "actor").is_dir()
    hf = launch.hf_folder(checkpoints, STEPS, actor=True)
    assert any(hf.glob("*.safetensors")), sorted(p.name for p in hf.iterdir())
    resumed = runs["resumed"].metrics()
    assert sorted(resumed) == [STEPS + 1], "a resumed run starts after the saved step"
    m = resumed[STEPS + 1]
    expected = SCHEDULE.eps(STEPS + 1, STEPS + 1)
    assert expected[0] > 0 and expected != SCHEDULE.eps(1, STEPS)
    assert (m["actor/clip_eps_low"], m["actor/clip_eps_high"]) == pytest.approx(expected)
    assert (checkpoints / f"global_step_{STEPS + 1}").is_dir()


def test_a_failed_run_reports_the_tail_of_its_log(tmp_path):
    argv = launch.grpo_command(tmp_path / "no_model", tmp_path / "x.parquet", tmp_path / "x.parquet", tmp_path, 1)
    with pytest.raises(launch.TrainingRunError) as e:
        launch.run(argv, tmp_path, "bad", timeout=300)
    assert "exited" in str(e.value) and str(tmp_path / "bad.log") in str(e.value)
    assert len(str(e.value).splitlines()) > 2


def test_launch_metrics_reader_merges_lines_of_one_step(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 1, "data": {"a": 1}}\n{"step": 1, "data": {"b": 2}}\n{"step": 2, "data": {"a": 3}}\n')
    assert launch.read_metrics(path) == {1: {"a": 1, "b": 2}, 2: {"a": 3}}
    assert launch.read_metrics(tmp_path / "missing.jsonl") == {}
