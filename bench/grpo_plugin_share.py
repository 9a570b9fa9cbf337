"""The plugin's share of a real GRPO step on a CPU: its reward and its clip push against verl's ``timing_s/step``.

Runs ``python -m gr_vl_verl.trainer.main_ppo trainer.device=cpu`` (verl's trainer, FSDP2 worker, vLLM CPU
rollout server) on the tiny Qwen2.5-VL and the bundled sample, with verl's rollout dump on
(``trainer.rollout_data_dir``), and reads from the run itself:

* the baseline, verl's own ``timing_s/step`` of each step;
* ``timing_s/gr_vl_clip_push``: what the dynamic clip costs per step (building the loss, ``set_loss_fn`` on every
  actor rank), measured by the plugin's trainer inside the step;
* the reward: each step's dumped answers and labels are scored again here with what the reward manager does per
  sample (decode the response tokens, ``compute_score``), best of 5 repeats. The manager's asyncio hand-off is not
  in this figure.

Step 1 carries verl's one-off warm-up; the ratio is printed for steps 2 onwards too. Goal: the plugin's share
under 1 %. Not a timed test: ``python bench/grpo_plugin_share.py [--steps 4] [--n 4]``. ``--from-run METRICS
ROLLOUTS MODEL`` reads a GRPO run made elsewhere instead of making one (its metrics file, its rollout dump folder,
its model folder for the tokenizer): ``make test`` runs it that way on its end-to-end GRPO run, so a broken bench
fails CI without a second trainer run; ``--quick`` (2 steps) makes a small run of its own.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def run_grpo(work: Path, steps: int, n: int, response_length: int) -> tuple[Path, dict[int, dict]]:
    import gr_vl_verl
    from gr_vl_verl.cli import main as cli_main
    from gr_vl_verl.tiny import build_tiny_qwen2_5_vl
    from gr_vl_verl.trainer import launch

    model = build_tiny_qwen2_5_vl(work / "model")
    vltrain = Path(gr_vl_verl.__file__).parent / "sample_data" / "GuardReasoner-VLTrain"
    argv = ["prep", "vltrain", "--data-root", str(vltrain), "--out", str(work / "data"), "--formats", "rl",
            "--no-progress", "--min-pixels", "784", "--max-pixels", "12544"]  # fmt: skip
    assert cli_main(argv) == 0
    data = work / "data" / "rl_train.parquet"
    dump = work / "rollouts"
    argv = launch.grpo_command(model, data, data, work / "run", steps, n=n, response_length=response_length,
                               extra=[f"trainer.rollout_data_dir={dump}", "trainer.test_freq=-1"])  # fmt: skip
    result = launch.run(argv, work, "grpo", timeout=1800)
    return dump, result.metrics()


def reward_seconds(dump: Path, step: int, tokenizer, repeats: int = 5) -> tuple[float, int]:
    """Best-of-``repeats`` seconds to decode and score every answer the run dumped at ``step``."""
    from gr_vl_verl.reward.score import compute_score

    rows = [json.loads(line) for line in (dump / f"{step}.jsonl").read_text().splitlines()]
    encoded = [(tokenizer.encode(r["output"]), r["gts"], r.get("data_source")) for r in rows]
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for ids, truth, source in encoded:
            text = tokenizer.decode(ids, skip_special_tokens=True)
            compute_score(source, text, truth, {"response_tokens": len(ids)})
        best = min(best, time.perf_counter() - t0)
    return best, len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--n", type=int, default=4, help="answers per prompt")
    parser.add_argument("--response-length", type=int, default=64)
    parser.add_argument("--quick", action="store_true", help="2 steps, 16-token answers")
    parser.add_argument(
        "--from-run",
        nargs=3,
        metavar=("METRICS", "ROLLOUTS", "MODEL"),
        type=Path,
        help="read a GRPO run made elsewhere: its metrics file, rollout dump folder, model folder",
    )
    args = parser.parse_args()
    if args.quick:
        args.steps, args.response_length = 2, 16
    from gr_vl_verl.trainer.launch import read_metrics

    if args.from_run:
        metrics_file, dump, model = args.from_run
        metrics = {step: m for step, m in read_metrics(metrics_file).items() if "timing_s/step" in m}
        if not metrics:
            raise SystemExit(f"{metrics_file}: no step with timing_s/step")
        print(f"GRPO on the CPU, the run of {metrics_file}, {os.cpu_count()} CPUs")
        report(metrics, dump, model)
        return
    with tempfile.TemporaryDirectory(prefix="gr_vl_bench_") as tmp:
        work = Path(tmp)
        dump, metrics = run_grpo(work, args.steps, args.n, args.response_length)
        print(f"GRPO on the CPU: {args.steps} steps x 2 prompts x {args.n} answers, up to {args.response_length} "
              f"tokens, tiny Qwen2.5-VL, {os.cpu_count()} CPUs")  # fmt: skip
        report(metrics, dump, work / "model")


def report(metrics: dict[int, dict], dump: Path, model: Path) -> None:
    """One line per step, then the share over the steps after verl's warm-up."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    print(f"{'step':>4} {'verl step s':>12} {'reward s':>9} {'clip push s':>12} {'plugin share':>13}")
    totals = {"step": 0.0, "plugin": 0.0}
    first = min(metrics)
    for step in sorted(metrics):
        m = metrics[step]
        reward, samples = reward_seconds(dump, step, tokenizer)
        push = m["timing_s/gr_vl_clip_push"]
        share = (reward + push) / m["timing_s/step"]
        print(f"{step:4d} {m['timing_s/step']:12.2f} {reward:9.4f} {push:12.4f} {share:13.3%}  ({samples} answers)")
        if step > first:
            totals["step"] += m["timing_s/step"]
            totals["plugin"] += reward + push
    if totals["step"]:
        print(f"steps {first + 1}-{max(metrics)}: plugin {totals['plugin']:.4f} s of verl's {totals['step']:.2f} s "
              f"= {totals['plugin'] / totals['step']:.3%} (goal < 1 %)")  # fmt: skip


if __name__ == "__main__":
    main()
