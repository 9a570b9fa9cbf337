"""``gr-vl check``'s trainer checks against the real verl and a real local Ray cluster.

The Ray parts run in one child process (:func:`ray_driver.run_driver`), which starts a local cluster, runs
``gr-vl check`` and the Ray checks there and hands back what they returned; the pytest process never
becomes a Ray driver.
"""

from __future__ import annotations

import json

import pytest
from ray_driver import run_driver

from gr_vl_verl.commands import check


def drive_checks() -> dict:
    """Driver (child process): ``gr-vl check --json`` as a pipeline runs it (a process of its own, which starts
    its own Ray), then, on a Ray of this process, the worker check without plugins and the task runners."""
    import subprocess
    import sys

    import ray

    from gr_vl_verl.trainer.main_ppo import GRTaskRunner, GRTaskRunnerV1

    argv = [sys.executable, "-m", "gr_vl_verl", "check", "--json"]
    done = subprocess.run(argv, timeout=400, capture_output=True, text=True)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        try:
            check.ray_worker({"VERL_USE_EXTERNAL_PLUGINS": "none"})
            skipped = "no error"
        except RuntimeError as e:
            skipped = str(e)
        runners = [GRTaskRunner.options(num_cpus=0).remote(), GRTaskRunnerV1.options(num_cpus=0).remote()]
        try:
            ray.get([r.__ray_ready__.remote() for r in runners], timeout=120)
            v1_name = ray.get(runners[1].__ray_call__.remote(lambda self: type(self).__name__))
            legacy_mapping = ray.get(runners[0].__ray_call__.remote(lambda self: self.mapping))
        finally:
            for r in runners:
                ray.kill(r)
    finally:
        ray.shutdown()
    return {
        "rc": done.returncode,
        "stdout": done.stdout,
        "stderr": done.stderr,
        "skipped": skipped,
        "v1_name": v1_name,
        "legacy_mapping": legacy_mapping,
    }


@pytest.fixture(scope="module")
def ray_results() -> dict:
    return run_driver("test_trainer_checks:drive_checks")


def test_check_json_stdout_is_one_json_document(ray_results) -> None:
    """Stdout carries the result only: the whole of it one JSON document (indented), nothing before or after it,
    whatever verl, Ray and vLLM log on the way (that goes to stderr)."""
    results = json.loads(ray_results["stdout"])
    assert [r["name"] for r in results] == [name for name, _ in check.CHECKS]
    assert all(set(r) == {"name", "ok", "detail"} for r in results)
    assert ray_results["rc"] == (0 if all(r["ok"] for r in results) else 1), ray_results["stderr"][-2000:]


def test_gr_vl_check_passes_here(ray_results) -> None:
    assert ray_results["rc"] == 0, ray_results["stderr"][-3000:]
    results = [check.Check(**r) for r in json.loads(ray_results["stdout"])]
    assert [r.name for r in results] == [
        "entry point",
        "registered in a new process",
        "reward manager via pkg://",
        "config keys compose",
        "trainer config composes",
        "dynamic-clip trainers build (legacy and V1)",
        "plugin and pushed loss in a Ray worker",
        "vLLM as verl finds it",
        "cpu platform and its adapters",
    ]
    for name, ok, detail in results:
        assert ok, f"{name}: {detail}"
        assert isinstance(detail, str) and detail
    assert "0.191, 0.183, 0.174, 0.000" in results[4].detail
    from gr_vl_verl.cpu import pins

    assert "+cpu" in results[7].detail
    assert f"{len(pins.all_pins())} pinned lines found" in results[8].detail  # the one table, vLLM installed


def test_worker_check_fails_when_verl_skips_plugins(ray_results) -> None:
    assert "verl did not load gr_vl_verl.plugin in a Ray worker" in ray_results["skipped"]


def test_a_failing_check_is_reported_not_raised() -> None:
    def broken() -> str:
        raise ValueError("gr_vl.clip.kind must be one of [...]")

    assert check.run_check("x", broken) == ("x", False, "ValueError: gr_vl.clip.kind must be one of [...]")


def test_task_runners_start_as_ray_actors(ray_results) -> None:
    """Ray imports the task runner classes by name in a worker process (the package must be importable)."""
    assert ray_results["v1_name"] == "_V1TaskRunner"
    assert ray_results["legacy_mapping"] == {}
