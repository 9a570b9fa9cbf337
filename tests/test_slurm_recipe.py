"""``recipes/ray_on_slurm.sbatch`` in its dry mode, in a SLURM job of three nodes made up for it: the ``ray
start`` of each node, and the recipe it runs on the cluster (its own dry run) with the cluster's size."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "recipes" / "ray_on_slurm.sbatch"


@pytest.fixture
def job_env(tmp_path) -> dict[str, str]:
    """A SLURM job's environment on three nodes: ``scontrol`` expands the node list."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text("#!/bin/sh\nprintf 'gpu-a\\ngpu-b\\ngpu-c\\n'\n")
    (bin_dir / "scontrol").chmod(0o755)
    (tmp_path / "rl.parquet").write_bytes(b"")
    (tmp_path / "model").mkdir()
    drop = {"RAY_ADDRESS", "NNODES", "GPUS", "GPUS_PER_NODE", "RAY_START_ARGS", "RAY_PORT", "TP", "PYTHON"}
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("SLURM_")}
    env.update(PATH=f"{bin_dir}:{env['PATH']}", SLURM_JOB_NODELIST="gpu-[a-c]", SLURM_CPUS_ON_NODE="64",
               SLURM_GPUS_ON_NODE="8", GR_VL_DRY_RUN="1", DATA=str(tmp_path / "rl.parquet"),
               MODEL_PATH=str(tmp_path / "model"), OUT=str(tmp_path / "out"))  # fmt: skip
    return env


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=120)


def test_every_node_starts_ray_and_the_recipe_runs_on_all_their_gpus(job_env):
    job_env["RAY_START_ARGS"] = '--resources={"gr_vl_cpu_device":1}'
    done = _run(job_env, str(ROOT / "recipes" / "mine_qwen2_5_vl.sh"), "--batch-size", "128")
    assert done.returncode == 0, done.stderr
    head, *workers, recipe = done.stdout.splitlines()
    common = "ray start --block --num-cpus=64 --num-gpus=8"
    assert head.startswith("srun --nodes=1 --ntasks=1 --overlap -w gpu-a ") and common in head
    assert head.endswith('--head --node-ip-address=gpu-a --port=6379 --resources={"gr_vl_cpu_device":1}')
    assert [w.split()[5] for w in workers] == ["gpu-b", "gpu-c"]
    assert all(common in w and "--address=gpu-a:6379" in w and "--head" not in w for w in workers)
    # 3 nodes x 8 GPUs: 24 engines, joining the cluster; the extra flag reaches `gr-vl mine`, last
    assert recipe.endswith("--backend vllm --concurrency 24 --tensor-parallel-size 1 --ray-address gpu-a:6379 "
                           "--batch-size 128")  # fmt: skip


def test_training_recipes_get_the_node_count(job_env):
    job_env.update(TRAIN_FILES=job_env["DATA"], VAL_FILES=job_env["DATA"])
    done = _run(job_env, str(ROOT / "recipes" / "grpo_qwen2_5_vl_3b.sh"))
    assert done.returncode == 0, done.stderr
    overrides = done.stdout.splitlines()[3:]
    assert "trainer.nnodes=3" in overrides and "trainer.n_gpus_per_node=8" in overrides


def test_outside_a_slurm_job_or_without_a_recipe_it_stops_first(job_env):
    assert _run(job_env).returncode != 0
    missing = _run(job_env, "recipes/no_such_recipe.sh")
    assert missing.returncode == 2 and "no recipe at" in missing.stderr
    del job_env["SLURM_JOB_NODELIST"]
    outside = _run(job_env, str(ROOT / "recipes" / "mine_qwen2_5_vl.sh"))
    assert outside.returncode == 2 and "not in a SLURM job" in outside.stderr
