"""When the CPU platform is on, and switching it on in a process.

The switch is verl's own key, ``trainer.device=cpu``. verl resolves its platform once per process, at the first
``get_platform()`` call, long before any trainer reads the config, and in Ray workers that never see the
command line. So the plugin, imported with verl in every process, reads it from where it is known first: the
command line of a verl entry point (``python -m gr_vl_verl.trainer.main_ppo ... trainer.device=cpu``,
``torchrun -m verl.trainer.sft_trainer ... trainer.device=cpu``), or ``VERL_PLATFORM=cpu``, which is how the
driver hands the choice to its Ray workers (``runtime_env``). Nothing else turns it on: with
``trainer.device=cuda`` (or nothing) on a GPU machine, verl's own detection is untouched.
"""

from __future__ import annotations

import os
import sys

from gr_vl_verl import import_hooks

ENV = "VERL_PLATFORM"
_SWITCHES = {"trainer.device=cpu", "+trainer.device=cpu", "++trainer.device=cpu"}


def requested(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> bool:
    """Whether this process runs verl on the CPU: ``VERL_PLATFORM=cpu``, or ``trainer.device=cpu`` in argv."""
    environ = os.environ if environ is None else environ
    chosen = environ.get(ENV, "").strip().lower()
    if chosen:
        return chosen == "cpu"
    return any(arg.strip() in _SWITCHES for arg in (sys.argv if argv is None else argv))


def activate() -> None:
    """Select the platform in this process and its children (``VERL_PLATFORM=cpu``); install the adapters."""
    os.environ[ENV] = "cpu"
    from gr_vl_verl.cpu import adapters

    adapters.install()
    if "verl.plugin.platform.platform_manager" in sys.modules:  # resolved before the switch was known
        from verl.plugin.platform.platform_manager import get_platform, set_platform

        from gr_vl_verl.cpu.platform import CPUPlatform, register

        register()
        if not isinstance(get_platform(), CPUPlatform):
            set_platform(CPUPlatform())


def _register_platform(_module) -> None:  # noqa: ANN001
    from gr_vl_verl.cpu import platform

    platform.register()


def install() -> None:
    """Called by the plugin at import: register the platform with verl; switch it on if asked for."""
    import_hooks.after_import("verl.plugin.platform", _register_platform)
    if requested():
        activate()
