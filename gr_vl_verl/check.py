"""``gr-vl check``: does verl see the plugin?

verl swallows plugin import errors at DEBUG level, so a broken install looks like "my reward does nothing".
This runs each link of the chain the trainer relies on and exits non-zero if any is broken.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
from collections.abc import Callable

Check = tuple[str, bool, str]  # (name, ok, detail)

ENTRY_POINT_GROUP = "verl.plugins"
ENTRY_POINT_NAME = "gr_vl_verl"
IMPORTLIB_OVERRIDES = [
    "reward.reward_manager.source=importlib",
    "reward.reward_manager.name=GuardRewardManager",
    "reward.reward_manager.module.path=pkg://gr_vl_verl.reward.manager",
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the results as JSON")


def check_entry_point() -> Check:
    from importlib.metadata import entry_points

    eps = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == ENTRY_POINT_NAME]
    if not eps:
        return "entry point", False, f"no '{ENTRY_POINT_NAME}' in group {ENTRY_POINT_GROUP}: is the package installed?"
    try:
        eps[0].load()
    except Exception as e:
        return "entry point", False, f"{eps[0].value} fails to import: {type(e).__name__}: {e}"
    policy = os.environ.get("VERL_USE_EXTERNAL_PLUGINS", "auto").strip().lower()
    allowed = policy == "auto" or ENTRY_POINT_NAME in {p.strip() for p in policy.split(",")}
    if not allowed:
        return "entry point", False, f"VERL_USE_EXTERNAL_PLUGINS={policy!r} keeps verl from loading it"
    return "entry point", True, f"{ENTRY_POINT_GROUP}: {ENTRY_POINT_NAME} = {eps[0].value}"


_FRESH_PROCESS = (
    "import verl\n"
    "from verl.experimental.reward_loop.reward_manager import get_reward_manager_cls\n"
    "print(get_reward_manager_cls('gr_vl').__module__)\n"
)


def check_fresh_process_registration() -> Check:
    """A new interpreter, like a Ray reward worker, must find the manager by name after ``import verl``."""
    proc = subprocess.run(
        [sys.executable, "-c", _FRESH_PROCESS], capture_output=True, text=True, timeout=300, env=os.environ.copy()
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines or lines[-1] != "gr_vl_verl.reward.manager":
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return "registered in a new process", False, f"reward manager 'gr_vl' not found after `import verl`: {tail}"
    return "registered in a new process", True, "reward.reward_manager.name=gr_vl resolves after `import verl`"


def _compose(overrides: list[str]):
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="verl.trainer.config", version_base=None):
        return compose("ppo_trainer", overrides=overrides)


def check_importlib_path() -> Check:
    from verl.trainer.ppo.reward import load_reward_manager

    try:
        manager = load_reward_manager(_compose(IMPORTLIB_OVERRIDES), tokenizer=None)
    except Exception as e:
        return "reward manager via pkg://", False, f"{type(e).__name__}: {e}"
    return "reward manager via pkg://", True, f"{type(manager).__name__} with {manager.reward_config}"


def check_config_keys() -> Check:
    overrides = [
        "reward.reward_manager.name=gr_vl",
        "+gr_vl.reward.preset=gr-vl-eco",
        "data.max_response_length=3072",
    ]
    try:
        from verl.trainer.ppo.reward import load_reward_manager

        manager = load_reward_manager(_compose(overrides), tokenizer=None)
    except Exception as e:
        return "config keys compose", False, f"{type(e).__name__}: {e}"
    return "config keys compose", True, f"ppo_trainer + gr_vl.reward -> {manager.reward_config}"


def _trainer_checks() -> list[Check]:
    try:
        module = importlib.import_module("gr_vl_verl.trainer.checks")
    except ModuleNotFoundError:
        return []
    return list(module.trainer_checks())


CHECKS: list[Callable[[], Check]] = [
    check_entry_point,
    check_fresh_process_registration,
    check_importlib_path,
    check_config_keys,
]


def run_checks() -> list[Check]:
    results: list[Check] = []
    for fn in CHECKS:
        try:
            results.append(fn())
        except Exception as e:  # a check that crashes is a failed check, with the reason
            results.append((fn.__name__, False, f"{type(e).__name__}: {e}"))
    try:
        results.extend(_trainer_checks())
    except Exception as e:
        results.append(("trainer checks", False, f"{type(e).__name__}: {e}"))
    return results


def run(args: argparse.Namespace) -> int:
    results = run_checks()
    if args.json:
        print(json.dumps([{"check": n, "ok": ok, "detail": d} for n, ok, d in results], indent=2))
    else:
        for name, ok, detail in results:
            print(f"[{'ok' if ok else 'FAIL'}] {name}: {detail}")
    failed = [n for n, ok, _ in results if not ok]
    if not args.json:
        print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0
