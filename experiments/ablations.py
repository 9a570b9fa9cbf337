"""The paper's ablations in miniature, on the toy guard world (docs/toy_world.md), run by hand.

    python experiments/ablations.py [--seeds 0 1 2] [--variants NAME ...] [--out outputs/ablations] [demo options]

Per seed, the demo's stages up to concatenation run once (toy world, tiny model, R-SFT, concatenation of every
RL row: :class:`gr_vl_verl.commands.demo.Demo` with its defaults), the R-SFT model is evaluated, then one GRPO run
per variant starts from that same R-SFT model and is evaluated on the same held-out benchmarks. The reference is
the demo's GRPO, which trains on every RL row (at this size the paper's mining hurts: docs/toy_world.md); each
variant changes one thing:

* ``GRPO`` — the demo's: every RL row + concatenation, length-aware reward (beta 1), dynamic (linear) clip;
* ``static clip`` — ``gr_vl.clip.kind=constant`` (eps 0.2 throughout, the paper's "w/o Dyn.");
* ``Eco`` — ``gr_vl.reward.preset=gr-vl-eco`` (the length gain stops at 500 characters);
* ``w/o length reward`` — ``gr_vl.reward.length_term=false`` (score = r_safety - 1, "w/o Len. Reward");
* ``w/o aug`` — every RL row without safety-aware concatenation ("w/o Aug.");
* ``hard mining`` — the paper's mining (rows with 0 of k answers right, ``gr-vl mine``), concatenated; the
  reference is the paper's "w/o mining";
* ``mining <= 2 right`` — not the paper's: rows with at most 2 of the k answers right, from the same answers
  (``gr-vl mine --generations``), concatenated.

``--variants`` runs the named ones (their names as above; default: the paper's six, every one but the last;
R-SFT is always evaluated). The GRPO runs skip verl's in-training validation (before training and every four
steps, ~10 s each on two cores, five per run): each model is scored once, by ``gr-vl eval`` on all held-out rows,
and verl's validation would only repeat that on a subset of them. ``--validate`` keeps the demo's
validations (and the curves' validation F1 panel). Writes ``results.json``, ``results.md`` (held-out F1 and output
tokens, mean ± std over seeds) and ``curves_seed<S>.png`` (every variant's training curves overlaid) into
``--out``. Not a test: on two CPU cores in fp32 (docs/cpu.md) the default six variants over three seeds took
90.2 minutes with each evaluation after its run; evaluations beside the next run's start save ~35 s per variant
(docs/toy_world.md, "The paper's ablations in miniature": results and the time of each part).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from gr_vl_verl.cli import main as gr_vl
from gr_vl_verl.commands import demo as demo_cmd
from gr_vl_verl.commands._demo_parts import headline
from gr_vl_verl.trainer.launch import hf_folder

VARIANTS: list[tuple[str, str, list[str]]] = [
    # (name, training data: all+aug | all | mined+aug | mined2+aug, hydra overrides)
    ("GRPO", "all+aug", []),
    ("static clip", "all+aug", ["gr_vl.clip.kind=constant"]),
    ("Eco", "all+aug", ["gr_vl.reward.preset=gr-vl-eco"]),
    ("w/o length reward", "all+aug", ["gr_vl.reward.length_term=false"]),
    ("w/o aug", "all", []),
    ("hard mining", "mined+aug", []),
    ("mining <= 2 right", "mined2+aug", []),
]
#: Variants beside the paper's six, run only when named.
EXTRA = ("mining <= 2 right",)
#: verl's in-training validation off (the variants are scored by ``gr-vl eval``; see the module's docstring)
NO_VALIDATION = ["trainer.val_before_train=false", "trainer.test_freq=-1"]
FIGURES = ("average_f1", "prompt_all", "response_all", "mean_output_tokens")


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_")


def _augmented(data: Path, out: Path, seed: int) -> Path:
    """``data`` with safety-aware concatenation as the method does it (20 % of the output), into ``out``."""
    assert gr_vl(["augment", "--data", str(data), "--out", str(out), "--ratio", "0.2", "--seed", str(seed),
                  "--no-progress", *demo_cmd.SMALL_IMAGES]) == 0  # fmt: skip
    return out


def run_seed(args: argparse.Namespace, seed: int, out: Path) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser()
    demo_cmd.add_arguments(parser)
    demo_args = parser.parse_args([*args.demo_args, "--seed", str(seed), "--out", str(out)])
    demo = demo_cmd.Demo(demo_args)
    demo.fresh()
    variants = [v for v in VARIANTS if v[0] in args.variants]
    needed = {train for _, train, _ in variants}
    stages = dict(demo.stages())
    steps = ["toy world", "tiny Qwen2.5-VL", "gr-vl prep", "reasoning SFT (verl)", "gr-vl augment"]
    if needed & {"mined+aug", "mined2+aug"}:
        stages["gr-vl mine"] = demo.mine
        steps.append("gr-vl mine")
    for name in steps:
        t0 = time.perf_counter()
        print(f"seed {seed}: {name}: {stages[name]()} ({time.perf_counter() - t0:.0f} s)", flush=True)
    data = {"all+aug": demo.rl_train, "all": demo.data / "rl_train.parquet"}
    if "mined+aug" in needed:
        data["mined+aug"] = _augmented(demo.mined / "rl_train.parquet", demo.mined / "rl_train_aug.parquet", seed)
    if "mined2+aug" in needed:
        mined2 = demo.out / "mined_2"
        answers = demo.mined / "generations"  # the k answers mining drew: kept again with a wider bound
        assert gr_vl(["mine", "--data", str(demo.data / "rl_train.parquet"), "--generations", str(answers),
                      "--out", str(mined2), "--k", str(demo.args.k), "--max-correct", "2", "--sample-num", "all",
                      "--val-fraction", "0", "--seed", str(seed)]) == 0  # fmt: skip
        data["mined2+aug"] = _augmented(mined2 / "rl_train.parquet", mined2 / "rl_train_aug.parquet", seed)
    # Each model's evaluation runs beside the next GRPO run's start (verl's ~100 s of starting processes leaves a
    # core idle); one evaluation at a time, and never beside another trainer.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="eval") as evals:

        def evaluate(name: str, label: str, model: Path, train_seconds: float | None = None) -> dict[str, float]:
            t0 = time.perf_counter()
            result = headline(demo.eval_model(name, label, model))
            result["eval_seconds"] = round(time.perf_counter() - t0, 1)
            if train_seconds is not None:
                result["train_seconds"] = train_seconds
            print(f"seed {seed}: {label}: {result}", flush=True)
            return result

        pending = {"R-SFT": evals.submit(evaluate, "sft", "R-SFT", demo.sft_model)}
        for name, train, extra in variants:
            t0 = time.perf_counter()
            _, step = demo.grpo_run(slug(name), data[train], [*extra, *([] if args.validate else NO_VALIDATION)])
            seconds = round(time.perf_counter() - t0, 1)
            model = hf_folder(demo.models / f"{slug(name)}_run" / "checkpoints", step, actor=True)
            pending[name] = evals.submit(evaluate, slug(name), name, model, seconds)
            print(f"seed {seed}: {name}: GRPO run {seconds:.0f} s", flush=True)
        results = {name: future.result() for name, future in pending.items()}
    runs = [str(demo.models / f"{slug(n)}_run" / "checkpoints") for n, _, _ in variants]
    assert gr_vl(["curves", *runs, "--out", str(args.out / f"curves_seed{seed}.png"),
                  "--labels", *[n for n, _, _ in variants]]) == 0  # fmt: skip
    return results


def table(per_seed: dict[int, dict[str, dict[str, float]]]) -> str:
    names = [n for n in ["R-SFT", *[n for n, _, _ in VARIANTS]] if all(n in r for r in per_seed.values())]
    lines = [
        f"Held-out F1 x100 (the paper's weighted averages) and mean output tokens; mean ± std over seeds "
        f"{sorted(per_seed)}.",
        "",
        "| Run | Average F1 | Prompt (All) | Response (All) | Output tokens |",
        "|:--|--:|--:|--:|--:|",
    ]
    for name in names:
        cells = []
        for figure in FIGURES:
            values = [r[name][figure] for r in per_seed.values()]
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.1f} ± {sd:.1f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("outputs/ablations"))
    names = [n for n, _, _ in VARIANTS]
    papers = [n for n in names if n not in EXTRA]
    parser.add_argument("--variants", nargs="+", choices=names, default=papers, metavar="NAME", help=", ".join(names))
    parser.add_argument("--validate", action="store_true", help="keep verl's validations in the GRPO runs")
    args, demo_args = parser.parse_known_args()
    args.demo_args = demo_args
    args.out.mkdir(parents=True, exist_ok=True)
    per_seed = {}
    t0 = time.perf_counter()
    for seed in args.seeds:
        per_seed[seed] = run_seed(args, seed, args.out / f"seed_{seed}")
        (args.out / "results.json").write_text(json.dumps(per_seed, indent=2) + "\n")
    minutes = (time.perf_counter() - t0) / 60
    text = table(per_seed) + f"\nWall time: {minutes:.1f} min for {len(args.seeds)} seeds.\n"
    (args.out / "results.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
