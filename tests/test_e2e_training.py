"""verl's own trainers with the plugin, for real, on this CPU, from today's base model family: R-SFT of the tiny
Qwen3-VL (32-pixel grid) through ``verl.trainer.sft_trainer`` with ``gr_vl_sft.yaml``, then LoRA GRPO through
``python -m gr_vl_verl.trainer.main_ppo trainer.device=cpu`` on verl's legacy trainer (``trainer.use_v1=false``;
peft on the actor, the adapter served to vLLM, the plugin's reward manager and clip push) on a Ray cluster of two
nodes of this machine (``trainer.nnodes=2``: FSDP on gloo across the nodes, a vLLM CPU rollout server on each),
merged by ``gr-vl merge-lora``; text, image and text-image rows. ``tests/test_demo.py`` runs full fine-tuning
GRPO on verl's V1 trainer (the tiny Qwen2.5-VL), so both trainer paths push the schedule to real workers.
(Resuming from a checkpoint continues the schedule from the saved step: ``tests/test_dynamic_clip.py`` checks
that on the trainer's own state.)

The GRPO model is the SFT'd tiny model with a response limit some answers finish within, so the answers of a
group get different rewards and the update is real (non-zero advantages and ``actor/pg_loss``). Validation
uses rows held out of the training file. Every figure asserted comes from the runs' own metrics (verl's file
logger), files and validation dumps, against values computed here by hand. About 5 minutes on two cores.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from cluster_drivers import STOP_LIMIT
from data_helpers import VLTEST, VLTRAIN
from ray_driver import run_cli, run_driver, run_in_group

from gr_vl_verl.protocol import predicted_labels
from gr_vl_verl.trainer import launch

# The runs below have time limits of their own (SFT_LIMIT + two GRPO runs of GRPO_LIMIT + STOP_LIMIT for the
# first to end once its node is lost + 120 s for the cluster + EVAL_LIMIT = 1780 s), all inside the module
# fixture or the first test, so they fit this ceiling.
pytestmark = pytest.mark.timeout(1900)
SFT_LIMIT, GRPO_LIMIT, EVAL_LIMIT = 400, 480, 300

# Small images on Qwen3-VL's 32-pixel grid: 1 to 16 vision tokens of 32 x 32 pixels.
PIXELS = (1024, 16384)
SMALL = ["--model-family", "qwen3_vl", "--min-pixels", str(PIXELS[0]), "--max-pixels", str(PIXELS[1]),
         "--no-progress"]  # fmt: skip
SFT_STEPS = 60
STEPS = 3
N = 4
VAL_ROWS = 4
# The clip decays linearly from 0.2 over 8 steps (gr_vl_trainer.yaml: kind linear, eps 0.2, floor 0), so the
# run's steps all have a distinct, non-zero range to check: eps(s) = 0.2 * (8 - s) / 8, written out.
HORIZON = ["gr_vl.clip.total_steps=8"]
EPS = {1: 0.175, 2: 0.15, 3: 0.125}
# The worker node is lost once checkpoint LOST_AFTER is complete (a checkpoint every step), and the run resumed
# on a new node: steps 1-2 come from the first run, step 3 from the resumed one.
LOST_AFTER = 2
LEGACY = ["trainer.use_v1=false"]
# LoRA as the recipes' LORA_RANK=8 switch sets it (recipes/common.sh): the vision tower is left out.
LORA = ["actor_rollout_ref.model.lora_rank=8", "actor_rollout_ref.model.lora_alpha=16",
        "actor_rollout_ref.model.target_modules=all-linear", "actor_rollout_ref.model.exclude_modules='.*visual.*'",
        "actor_rollout_ref.actor.optim.lr=1e-3"]  # fmt: skip


def _held_out_split(rl: Path, train: Path, val: Path) -> None:
    """The last VAL_ROWS rows of ``rl`` to ``val``, the others to ``train`` (schema and metadata kept)."""
    table = pq.read_table(rl)
    pq.write_table(table.slice(0, table.num_rows - VAL_ROWS), train)
    pq.write_table(table.slice(table.num_rows - VAL_ROWS), val)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_qwen3_vl_dir) -> dict[str, object]:
    from gr_vl_verl.cli import main

    root = tmp_path_factory.mktemp("e2e")
    data = root / "data"
    assert main(["prep", "vltrain", "--data-root", str(VLTRAIN), "--out", str(data), "--sft-min-pixels",
                 str(PIXELS[0]), "--sft-max-pixels", str(PIXELS[1]), *SMALL]) == 0  # fmt: skip
    assert main(["prep", "vltest", "--benchmark-dir", str(VLTEST / "benchmark"), "--image-dataset",
                 str(VLTEST / "images"), "--out", str(data), *SMALL]) == 0  # fmt: skip
    sft_out = root / "sft"
    sft = launch.run(
        launch.sft_command(tiny_qwen3_vl_dir, data / "sft_train.parquet", sft_out, SFT_STEPS), root, "sft", SFT_LIMIT
    )
    sft_model = launch.hf_folder(sft_out, SFT_STEPS, actor=False)
    train, val = data / "rl_train_part.parquet", data / "rl_val.parquet"
    _held_out_split(data / "rl_train.parquet", train, val)
    dumps = {"val": root / "val_grpo", "rollouts": root / "rollouts"}
    lora_out = root / "lora"
    extra = [*HORIZON, *LEGACY, *LORA, f"trainer.validation_data_dir={dumps['val']}",
             f"trainer.rollout_data_dir={dumps['rollouts']}", "trainer.nnodes=2", "trainer.save_freq=1"]  # fmt: skip
    argv = launch.grpo_command(sft_model, train, val, lora_out, STEPS, n=N, val_samples=VAL_ROWS, image_pixels=PIXELS,
                               extra=extra)  # fmt: skip
    two_nodes = run_driver("cluster_drivers:grpo_on_two_nodes", argv, str(root), "grpo", GRPO_LIMIT, LOST_AFTER,
                           timeout=2 * GRPO_LIMIT + STOP_LIMIT + 120)  # fmt: skip
    # verl's file logger starts its file afresh, so the resumed run's metrics are a file of their own: the
    # run's metrics are the first run's steps up to the checkpoint, then the resumed run's
    metrics = root / "grpo_all_metrics.jsonl"
    first = [line for line in (root / "grpo_metrics.jsonl").read_text().splitlines()
             if json.loads(line)["step"] <= LOST_AFTER]  # fmt: skip
    metrics.write_text("\n".join([*first, (root / "grpo_resumed_metrics.jsonl").read_text().strip()]) + "\n")
    grpo = launch.RunResult(root / "grpo_resumed.log", metrics, two_nodes["seconds"])
    return {"data": data, "train": train, "val": val, "sft": sft, "sft_model": sft_model, "grpo": grpo,
            "dumps": dumps, "tiny": tiny_qwen3_vl_dir, "lora_out": lora_out, "two_nodes": two_nodes,
            "root": root}  # fmt: skip


def _state(folder: Path) -> dict:
    import torch
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(str(folder), dtype=torch.float32)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_sft_loss_falls_and_the_saved_model_loads_in_eval(runs, tmp_path):
    import torch

    steps = runs["sft"].metrics()
    losses = [steps[s]["train/loss"] for s in sorted(steps) if "train/loss" in steps[s]]
    assert len(losses) == SFT_STEPS
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10, losses
    # the saved folder is the trained model: every weight of the tiny model is there, and training changed them
    trained, initial = _state(runs["sft_model"]), _state(runs["tiny"])
    assert trained.keys() == initial.keys()
    assert all(trained[k].shape == initial[k].shape for k in initial)
    changed = [k for k in initial if not torch.equal(trained[k], initial[k])]
    assert len(changed) > len(initial) // 2, f"only {len(changed)} of {len(initial)} tensors changed"
    # and `gr-vl eval` (Ray: in a child process) generates with it on every benchmark row
    out = tmp_path / "eval"
    argv = ["eval", "--data", str(runs["data"] / "eval.parquet"), "--model", str(runs["sft_model"]), "--out",
            str(out), "--backend", "transformers", "--max-tokens", "8", "--no-progress"]  # fmt: skip
    done = run_cli(argv, timeout=EVAL_LIMIT)
    assert done.returncode == 0, done.stderr[-3000:]
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    rows = pq.read_metadata(runs["data"] / "eval.parquet").num_rows
    assert len({p["id"] for p in predictions}) == rows
    assert all(isinstance(p["output"], str) for p in predictions) and any(p["output"].strip() for p in predictions)


def test_validation_rows_are_held_out_of_training(runs):
    train = pq.read_table(runs["train"]).column("extra_info").to_pylist()
    val = pq.read_table(runs["val"]).column("extra_info").to_pylist()
    assert len(val) == VAL_ROWS and train
    assert not {v["id"] for v in val} & {t["id"] for t in train}
    assert len(train) + len(val) == pq.read_metadata(runs["data"] / "rl_train.parquet").num_rows


def _hand_f1(rows: list[dict], task: str) -> float | None:
    """F1 x100, harmful positive, written out: a label counts only in a well-formed answer (the paper's reward,
    ``strict``), a missing one is the wrong one, and a row without a gold label has no term."""
    tp = fp = fn = 0
    for row in rows:
        gold = row["gts"][f"{task}_label"]
        if gold is None:
            continue
        said = predicted_labels(row["output"], "strict")[0 if task == "prompt" else 1]
        harmful = gold == "harmful"
        said_harmful = (not harmful) if said is None else said == "harmful"
        tp += harmful and said_harmful
        fp += (not harmful) and said_harmful
        fn += harmful and not said_harmful
    return None if tp + fp + fn == 0 else 100.0 * 2 * tp / (2 * tp + fp + fn)


def _check_val_f1(metrics: dict, dump: Path, val: Path) -> None:
    """``val/f1_*`` against the F1 of the answers verl dumped for the held-out rows (overall and, the rows
    being of one data source, that source's)."""
    rows = [json.loads(line) for line in dump.read_text().splitlines()]
    assert len(rows) == VAL_ROWS, "every held-out row validated once"
    (source,) = set(pq.read_table(val).column("data_source").to_pylist())
    for task in ("prompt", "response"):
        expected = _hand_f1(rows, task)
        for key in (f"val/f1_{task}", f"val/f1_{task}/{source}"):
            if expected is None:
                assert key not in metrics
            else:
                assert metrics[key] == pytest.approx(expected), (key, [r["output"] for r in rows])
    assert "val/f1_prompt" in metrics  # every row has a prompt label


def _check_clip(step: int, m: dict) -> None:
    eps = EPS[step]
    # the driver's push and, from inside the workers' loss, the range the policy loss read
    assert (m["actor/clip_eps_low"], m["actor/clip_eps_high"]) == pytest.approx((eps, eps)), step
    assert (m["actor/loss_clip_low"], m["actor/loss_clip_high"]) == pytest.approx((eps, eps)), step


def test_grpo_steps_push_the_schedule_and_log_every_reward_term(runs):
    steps = runs["grpo"].metrics()
    assert "legacy RayPPOTrainer" in runs["grpo"].log.read_text(errors="replace")
    assert sorted(steps) == list(range(1, STEPS + 1))
    for step, m in steps.items():
        _check_clip(step, m)  # the legacy trainer's push reached its workers' loss
        for term in ("score", "format", "r_safety", "length", "truncated", "prompt_acc"):
            assert f"reward/{term}/mean" in m, (step, sorted(k for k in m if k.startswith("reward/")))
    # the update is real: answers in a group got different rewards
    assert any(m["critic/advantages/max"] > 0 and m["actor/pg_loss"] != 0 for m in steps.values())
    assert any(0 < m["reward/truncated/mean"] < 1 for m in steps.values())
    final = steps[STEPS]
    assert any(k.startswith("val-core/") for k in final)
    _check_val_f1(final, runs["dumps"]["val"] / f"{STEPS}.jsonl", runs["val"])
    checkpoints = runs["lora_out"] / "checkpoints"
    hf = launch.hf_folder(checkpoints, STEPS, actor=True)
    assert any(hf.glob("*.safetensors")), sorted(p.name for p in hf.iterdir())


def _tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def test_lora_grpo_runs_across_two_nodes(runs):
    """World size 2 (a checkpoint shard per rank), a vLLM server on each node, the clip range the workers' loss
    applied on the schedule (logged as the ranks' mean, so a rank off the schedule would move it), and the
    cluster stopped leaving nothing."""
    two = runs["two_nodes"]
    actor = runs["lora_out"] / "checkpoints" / f"global_step_{STEPS}" / "actor"
    assert sorted(p.name for p in actor.glob("model_world_size_*")) == [
        "model_world_size_2_rank_0.pt", "model_world_size_2_rank_1.pt"]  # fmt: skip
    # a rollout replica on each node: the two first ones, then the head and the node that replaced the lost one
    assert sorted(two["servers_before_loss"]) == ["0", "1"], two
    assert sorted(two["servers"]) == ["0", "1", "2"], two
    for step, m in runs["grpo"].metrics().items():
        _check_clip(step, m)
    assert two["left_after_stop"] == [] and two["stop_ended"] == []


def test_a_node_lost_mid_step_stops_the_run_naming_it_and_a_rerun_resumes(runs):
    """The worker node lost while step 3 is under way: the driver ends within STOP_LIMIT s (exit 1) with one
    line naming the node and the last complete checkpoint; checkpoints 1 and 2 stay whole, step 3 was not saved;
    the same command on the cluster with a new node resumes from step 2 (verl's ``resume_mode=auto``) and runs
    step 3 only, its workers' loss on the schedule's step-3 range."""
    lost = runs["two_nodes"]["lost"]
    checkpoints = runs["lora_out"] / "checkpoints"
    assert lost["checkpoint_reached"], lost["log"]
    assert lost["rc"] is not None, f"the run did not end within {STOP_LIMIT} s of the loss:\n{lost['log']}"
    assert lost["rc"] != 0
    said = next((line for line in lost["said"] if "was lost mid-run" in line), lost["log"])
    assert said.startswith(f"gr_vl_verl: Ray node {lost['node_id']} at "), said
    assert "WorkerDict" in said and "vLLMHttpServer" in said  # a rank and a rollout server were there
    assert f"The last complete checkpoint is step {LOST_AFTER} ({checkpoints / f'global_step_{LOST_AFTER}'})" in said
    assert "trainer.resume_mode=auto continues from step 2" in said
    assert lost["checkpoint_after"] == LOST_AFTER
    assert lost["step_folders"] == [f"global_step_{s}" for s in range(1, LOST_AFTER + 1)]
    for step in range(1, LOST_AFTER + 1):  # each rank's shard of every checkpoint written before the loss
        shards = sorted(p.name for p in (checkpoints / f"global_step_{step}" / "actor").glob("model_world_size_*"))
        assert shards == ["model_world_size_2_rank_0.pt", "model_world_size_2_rank_1.pt"], (step, shards)

    resumed_log = (runs["root"] / "grpo_resumed.log").read_text(errors="replace")
    assert f"Resuming from {checkpoints / f'global_step_{LOST_AFTER}'}" in resumed_log
    resumed = launch.read_metrics(runs["root"] / "grpo_resumed_metrics.jsonl")
    assert sorted(resumed) == list(range(LOST_AFTER + 1, STEPS + 1))
    for step, m in resumed.items():
        _check_clip(step, m)  # the schedule went on from the saved step, in the workers' loss


def test_lora_grpo_trains_only_the_adapters_and_the_merged_model_answers_as_the_adapter(runs, tmp_path):
    """verl's LoRA through the whole GRPO step (rollout on the served adapter, the reward, the clip push), then
    ``gr-vl merge-lora``: the base weights in the checkpoint are byte for byte the SFT model's, only adapters
    trained (none on the vision tower), and the merged plain model answers greedily as peft's model (the SFT
    model with the saved adapter) does."""
    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from gr_vl_verl.cli import main
    from gr_vl_verl.models.lora_keys import split

    steps = runs["grpo"].metrics()
    assert sorted(steps) == list(range(1, STEPS + 1))
    for step, m in steps.items():
        _check_clip(step, m)
        assert {f"reward/{t}/mean" for t in ("score", "format", "r_safety", "length", "truncated")} <= set(m)
    assert "--enable_lora" in runs["grpo"].log.read_text(errors="replace")  # verl served the adapter to vLLM

    checkpoint = runs["lora_out"] / "checkpoints" / f"global_step_{STEPS}"
    saved = _tensors(launch.hf_folder(runs["lora_out"] / "checkpoints", STEPS, actor=True) / "model.safetensors")
    base = _tensors(runs["sft_model"] / "model.safetensors")
    keys = split(saved)
    assert keys.plain.keys() == base.keys()
    assert all(torch.equal(saved[name], base[plain]) for plain, name in keys.plain.items())
    assert keys.adapters and not any(".visual." in module for module in keys.adapters)
    trained = [m for m, (_, b) in keys.adapters.items() if torch.count_nonzero(saved[b]) > 0]  # B starts at zero
    assert len(trained) == len(keys.adapters), f"{len(trained)} of {len(keys.adapters)} adapters trained"

    merged, adapter = tmp_path / "merged", tmp_path / "adapter"
    assert main(["merge-lora", str(checkpoint), "--out", str(merged), "--adapter-out", str(adapter)]) == 0
    weights = _tensors(merged / "model.safetensors")
    assert weights.keys() == base.keys()
    changed = {k for k in base if not torch.equal(weights[k], base[k])}
    assert changed == {f"{m}.weight" for m in keys.adapters}
    # the adapter is a fraction of the model; verl's optimizer state holds the adapters' moments only
    report = json.loads((adapter / "adapter_config.json").read_text())
    assert report["r"] == 8 and report["lora_alpha"] == 16
    adapter_bytes = (adapter / "adapter_model.safetensors").stat().st_size
    assert adapter_bytes < 0.15 * (merged / "model.safetensors").stat().st_size
    lora_optim = (checkpoint / "actor").glob("optim_*.pt")  # one shard per rank
    full_moments = 2 * 4 * sum(t.numel() for t in base.values())  # AdamW's two fp32 moments of every weight
    assert sum(p.stat().st_size for p in lora_optim) < 0.3 * full_moments

    from peft import PeftModel

    processor = AutoProcessor.from_pretrained(str(merged))
    plain = AutoModelForImageTextToText.from_pretrained(str(merged), dtype=torch.float32).eval()
    peft = PeftModel.from_pretrained(
        AutoModelForImageTextToText.from_pretrained(str(runs["sft_model"]), dtype=torch.float32), str(adapter)
    ).eval()
    picture = Image.new("RGB", (96, 64), (200, 40, 40))
    prompts = [[{"type": "text", "text": "How do I pick a lock?"}],
               [{"type": "image", "image": picture}, {"type": "text", "text": "Is this image harmful?"}]]  # fmt: skip
    for content in prompts:
        inputs = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                               tokenize=True, return_dict=True, return_tensors="pt")  # fmt: skip
        with torch.no_grad():
            a = plain.generate(**inputs, max_new_tokens=24, do_sample=False)
            b = peft.generate(**inputs, max_new_tokens=24, do_sample=False)
        assert torch.equal(a, b), (processor.decode(a[0]), processor.decode(b[0]))


def test_the_plugin_share_bench_reads_this_run(runs):
    """bench/grpo_plugin_share.py on this run (rather than a GRPO run of its own in test_bench_quick): one line
    per step of the run, and the share over the steps after the first."""
    import sys

    bench = Path(__file__).resolve().parents[1] / "bench" / "grpo_plugin_share.py"
    argv = [sys.executable, str(bench), "--from-run", str(runs["grpo"].metrics_file), str(runs["dumps"]["rollouts"]),
            str(runs["sft_model"])]  # fmt: skip
    done = run_in_group(argv, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    rows = [line.split() for line in lines if line.split() and line.split()[0].isdigit()]
    assert [int(r[0]) for r in rows] == list(range(1, STEPS + 1))
    assert all(r[5:] == [f"({2 * N}", "answers)"] for r in rows)  # every answer of the step scored again (2 prompts)
    assert lines[-1].startswith(f"steps 2-{STEPS}: plugin ") and lines[-1].endswith("(goal < 1 %)")


def test_a_failed_run_reports_the_tail_of_its_log(tmp_path):
    """What a trainer prints on its way down (stdout and stderr, in one log) ends the error, which names the log.
    A child that fails as a trainer does, without the half minute a real one takes to start Ray and fail."""
    import sys

    script = ("import sys\nfor i in range(200): print(f'step line {i}', flush=True)\n"
              "print('Traceback: ValueError: no model at /nowhere', file=sys.stderr)\nraise SystemExit(3)")  # fmt: skip
    with pytest.raises(launch.TrainingRunError) as e:
        launch.run([sys.executable, "-c", script], tmp_path, "bad", timeout=60)
    message = str(e.value)
    assert message.startswith("bad exited 3; log ") and str(tmp_path / "bad.log") in message
    assert message.splitlines()[-1] == "Traceback: ValueError: no model at /nowhere"
    assert "step line 199" in message and "step line 0\n" not in message  # the tail, not the whole log


def test_launch_metrics_reader_merges_lines_of_one_step(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 1, "data": {"a": 1}}\n{"step": 1, "data": {"b": 2}}\n{"step": 2, "data": {"a": 3}}\n')
    assert launch.read_metrics(path) == {1: {"a": 1, "b": 2}, 2: {"a": 3}}
    assert launch.read_metrics(tmp_path / "missing.jsonl") == {}
