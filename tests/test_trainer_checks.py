"""``gr-vl check``'s trainer checks against the real verl and a real local Ray cluster."""

from __future__ import annotations

import json

import pytest
import ray

from gr_vl_verl.commands import check


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_gr_vl_check_passes_here(ray_cluster, capsys) -> None:
    from gr_vl_verl.cli import main

    assert main(["check", "--json"]) == 0
    results = [check.Check(**r) for r in json.loads(capsys.readouterr().out)]
    assert [r.name for r in results] == [
        "entry point",
        "registered in a new process",
        "reward manager via pkg://",
        "config keys compose",
        "trainer config composes",
        "dynamic-clip trainers build (legacy and V1)",
        "plugin and pushed loss in a Ray worker",
    ]
    for name, ok, detail in results:
        assert ok, f"{name}: {detail}"
        assert isinstance(detail, str) and detail
    assert "0.191, 0.183, 0.174, 0.000" in results[4].detail


def test_worker_check_fails_when_verl_skips_plugins(ray_cluster) -> None:
    with pytest.raises(RuntimeError, match="verl did not load gr_vl_verl.plugin in a Ray worker"):
        check.ray_worker({"VERL_USE_EXTERNAL_PLUGINS": "none"})


def test_a_failing_check_is_reported_not_raised() -> None:
    def broken() -> str:
        raise ValueError("gr_vl.clip.kind must be one of [...]")

    assert check.run_check("x", broken) == ("x", False, "ValueError: gr_vl.clip.kind must be one of [...]")


def test_task_runners_start_as_ray_actors(ray_cluster) -> None:
    """Ray imports the task runner classes by name in a worker process (the package must be importable)."""
    from gr_vl_verl.trainer.main_ppo import GRTaskRunner, GRTaskRunnerV1

    runners = [GRTaskRunner.options(num_cpus=0).remote(), GRTaskRunnerV1.options(num_cpus=0).remote()]
    try:
        ray.get([r.__ray_ready__.remote() for r in runners], timeout=120)
        assert ray.get(runners[1].__ray_call__.remote(lambda self: type(self).__name__)) == "_V1TaskRunner"
        assert ray.get(runners[0].__ray_call__.remote(lambda self: self.mapping)) == {}
    finally:
        for r in runners:
            ray.kill(r)
