"""The plugin as verl loads it: entry point, registration in new processes and Ray workers, `gr-vl check`."""

import os
import subprocess
import sys

import pytest
from ray_driver import run_driver

from gr_vl_verl.commands import check


def test_entry_point_is_installed_and_loads():
    assert "gr_vl_verl.plugin" in check.entry_point()


def test_importing_verl_does_not_pull_the_reward_loop_eagerly():
    """The plugin must keep `import verl` light: registration waits for verl's registry import."""
    code = "import sys, verl; print('gr_vl_verl.plugin' in sys.modules, 'gr_vl_verl.reward.manager' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout.split()
    assert out == ["True", "False"]


@pytest.mark.parametrize(
    "first_import",
    [
        "import verl.experimental.reward_loop.reward_manager",
        "import gr_vl_verl.reward.manager",  # our module is the one that pulls in verl's registry
        "from verl.trainer.ppo.reward import load_reward_manager",
    ],
)
def test_name_resolves_in_a_new_process_whatever_is_imported_first(first_import):
    code = (
        f"{first_import}\n"
        "from verl.experimental.reward_loop.reward_manager import get_reward_manager_cls\n"
        "print(get_reward_manager_cls('gr_vl').__name__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout.split()
    assert out[-1] == "GuardRewardManager"


def test_check_fails_when_verl_is_told_to_skip_plugins(monkeypatch, capsys):
    monkeypatch.setenv("VERL_USE_EXTERNAL_PLUGINS", "none")
    result = check.run_check("entry point", check.entry_point)
    assert result == ("entry point", False, "RuntimeError: VERL_USE_EXTERNAL_PLUGINS='none' keeps verl from loading it")
    result = check.run_check("fresh", check.fresh_process_registration)
    assert not result.ok and "Unknown reward manager: gr_vl" in result.detail
    monkeypatch.setattr(check, "CHECKS", [("entry point", check.entry_point)])
    assert check.run(check.argparse.Namespace(json=False)) == 1
    assert "[FAIL] entry point" in capsys.readouterr().out


def resolve_in_a_ray_worker() -> list:
    """Driver (child process, see ray_driver.py): the manager name as a Ray worker process resolves it."""
    import ray

    @ray.remote
    def resolve() -> tuple[int, str]:
        from verl.experimental.reward_loop.reward_manager import get_reward_manager_cls

        return os.getpid(), get_reward_manager_cls("gr_vl").__qualname__

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        pid, name = ray.get(resolve.remote(), timeout=120)
    finally:
        ray.shutdown()
    return [pid != os.getpid(), name]


def test_ray_worker_processes_see_the_registration():
    assert run_driver("test_plugin:resolve_in_a_ray_worker") == [True, "GuardRewardManager"]
