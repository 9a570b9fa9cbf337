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
    done = subprocess.run([sys.executable, "-c", code], timeout=120, capture_output=True, text=True, check=True)
    out = done.stdout.split()
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
    done = subprocess.run([sys.executable, "-c", code], timeout=120, capture_output=True, text=True, check=True)
    out = done.stdout.split()
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


# -- the import finder: callbacks after an import, and off sys.meta_path once nothing waits ----------------------
_FINDER_SCRIPT = """
import importlib, json, sys
sys.path.insert(0, sys.argv[1])
from gr_vl_verl import import_hooks
seen = []
import_hooks.after_import("pkg_a.mod", lambda m: seen.append(m.__name__))
import_hooks.after_import("pkg_b", lambda m: seen.append(m.__name__))
out = {"waiting": import_hooks.pending(), "installed_while_waiting": import_hooks.finder_installed()}
import pkg_a.mod
out["after_first"] = [import_hooks.pending(), import_hooks.finder_installed()]
import pkg_b  # registers a callback on itself while its __init__ runs: run once it has finished
out["after_second"] = [import_hooks.pending(), import_hooks.finder_installed()]
import json.decoder  # any later import lets the finder see that pkg_b has finished
out["end"] = [import_hooks.pending(), import_hooks.finder_installed(), seen]
import_hooks.after_import("pkg_c", lambda m: 1 / 0, name="soft")
import pkg_c  # a failing non-strict callback never breaks the import
import_hooks.after_import("pkg_d", lambda m: 1 / 0, name="hard", strict=True)
try:
    import pkg_d
    out["strict"] = "imported"
except ZeroDivisionError:
    out["strict"] = "refused"
out["failed"] = sorted(import_hooks.FAILED)
out["errors"] = len(import_hooks.ERRORS)
out["final"] = [import_hooks.pending(), import_hooks.finder_installed()]
print("RESULT " + json.dumps(out))
"""


def test_import_finder_runs_callbacks_and_leaves_sys_meta_path_when_done(tmp_path):
    (tmp_path / "pkg_a").mkdir()
    (tmp_path / "pkg_a" / "__init__.py").write_text("")
    (tmp_path / "pkg_a" / "mod.py").write_text("X = 1\n")
    (tmp_path / "pkg_b").mkdir()
    (tmp_path / "pkg_b" / "__init__.py").write_text(
        "from gr_vl_verl import import_hooks\nimport_hooks.after_import('pkg_b', lambda m: None, name='self')\n"
    )
    (tmp_path / "pkg_c.py").write_text("")
    (tmp_path / "pkg_d.py").write_text("")
    argv = [sys.executable, "-c", _FINDER_SCRIPT, str(tmp_path)]
    proc = subprocess.run(argv, timeout=120, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-2000:]
    out = __import__("json").loads(lines[-1][len("RESULT ") :])
    assert out["waiting"] == ["pkg_a.mod", "pkg_b"] and out["installed_while_waiting"]
    assert out["after_first"] == [["pkg_b"], True]
    assert out["end"] == [[], False, ["pkg_a.mod", "pkg_b"]]  # all applied: the finder is gone
    assert out["strict"] == "refused" and out["failed"] == ["hard", "soft"] and out["errors"] == 1
    assert out["final"] == [[], False]


def test_import_finder_is_gone_from_a_gpu_process_once_its_targets_are_imported():
    """A process without trainer.device=cpu: the plugin waits for its verl targets, then leaves sys.meta_path."""
    code = (
        "import sys, verl\n"
        "from gr_vl_verl import import_hooks\n"
        "print('WAITING', sorted(import_hooks.pending()), import_hooks.finder_installed())\n"
        "import verl.experimental.reward_loop.reward_manager, verl.models.transformers.qwen2_vl\n"
        "print('DONE', import_hooks.pending(), import_hooks.finder_installed(), sorted(import_hooks.APPLIED))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "VERL_PLATFORM"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert (
        "WAITING ['verl.experimental.reward_loop.reward_manager', 'verl.models.transformers.qwen2_vl'] True"
        in proc.stdout
    ), proc.stdout[-1000:] + proc.stderr[-2000:]
    assert (
        "DONE [] False ['_register_platform', '_sft_selection', 'register_reward_manager', 'text_only_forward']"
        in proc.stdout
    ), proc.stdout[-1000:] + proc.stderr[-2000:]
