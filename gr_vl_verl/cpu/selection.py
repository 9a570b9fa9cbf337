"""When the CPU platform is on, and switching it on in a process.

One rule (:func:`choose`): the run's ``trainer.device`` — from its command line or its config — beats the
environment. ``trainer.device=cpu`` selects the platform; ``VERL_PLATFORM=cpu`` selects it only where the run
names no device, which is how the driver hands the choice to its Ray workers (``runtime_env``); a leftover
``VERL_PLATFORM=cpu`` beside ``trainer.device=cuda`` is refused (:class:`SelectionError`) rather than letting
verl, which reads that variable itself, quietly run on the CPU.

verl resolves its platform once per process, at the first ``get_platform()`` call, long before any trainer
reads the config, and some of its modules keep the device name they saw at import. So the plugin, imported
with verl in every process, first looks at the command line (``python -m gr_vl_verl.trainer.main_ppo ...
trainer.device=cpu``, ``torchrun -m verl.trainer.sft_trainer ... trainer.device=cpu``) and the environment.
Where only the composed config says ``cpu`` (a yaml file), the entry point decides once the config exists:
``gr_vl_verl.trainer.main_ppo`` before Ray starts (its driver builds no model, its workers get
``VERL_PLATFORM=cpu``), and verl's ``sft_trainer`` at its ``auto_set_device(config)`` call, where the
process, whose verl modules were imported for another device, starts again with ``VERL_PLATFORM=cpu``
(:func:`_sft_selection`). With ``trainer.device=cuda`` (or nothing) on a GPU machine, verl's own detection is
untouched.
"""

from __future__ import annotations

import logging
import os
import sys
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from gr_vl_verl import import_hooks

logger = logging.getLogger(__name__)

ENV = "VERL_PLATFORM"
_KEYS = ("trainer.device=", "+trainer.device=", "++trainer.device=")
_ACTIVE = False


class SelectionError(ValueError):
    """The run's device and ``VERL_PLATFORM`` disagree; one line saying what to change."""


def device_from_argv(argv: Sequence[str]) -> str | None:
    """The value of the last ``trainer.device=...`` override on a command line, or None."""
    found = None
    for arg in argv:
        arg = arg.strip()
        for key in _KEYS:
            if arg.startswith(key):
                found = arg[len(key) :].strip().strip("'\"").lower()
    return found


def choose(device: str | None, environ: Mapping[str, str] | None = None) -> bool:
    """Whether the CPU platform is on for a run whose ``trainer.device`` is ``device`` (None: not known).

    The run's device decides; the environment only where the run names none. ``VERL_PLATFORM=cpu`` with another
    device raises :class:`SelectionError`.
    """
    environ = os.environ if environ is None else environ
    env = environ.get(ENV, "").strip().lower()
    if device is None:
        return env == "cpu"
    device = str(device).strip().lower()
    if device == "cpu":
        return True
    if env == "cpu":
        raise SelectionError(
            f"{ENV}=cpu is set in the environment but the run says trainer.device={device}; "
            f"unset {ENV} to run on {device}, or set trainer.device=cpu to run on the CPU"
        )
    return False


def requested(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> bool:
    """At import: whether the command line (else the environment) selects the platform. A conflict is not
    decided here (verl would swallow the error); the entry point refuses it once it has the config."""
    try:
        return choose(device_from_argv(sys.argv if argv is None else argv), environ)
    except SelectionError:
        return False


def active() -> bool:
    """Whether :func:`activate` ran in this process."""
    return _ACTIVE


def activate() -> None:
    """Select the platform in this process and its children (``VERL_PLATFORM=cpu``); install the adapters.

    The adapters' lines are checked first: with one missing, no adapter is installed, and
    :func:`gr_vl_verl.cpu.adapters.verify`, which every entry point calls before it starts anything, stops
    the run with that line.
    """
    global _ACTIVE
    _ACTIVE = True
    os.environ[ENV] = "cpu"
    from gr_vl_verl.cpu import adapters, pins

    problems = pins.problems()
    if problems:
        logger.error("gr_vl cpu: %s", problems[0])
    else:
        adapters.install()
    if "verl.plugin.platform.platform_manager" in sys.modules:  # resolved before the switch was known
        from verl.plugin.platform.platform_manager import get_platform, set_platform

        from gr_vl_verl.cpu.verl_platform import CPUPlatform, register

        register()
        if not isinstance(get_platform(), CPUPlatform):
            set_platform(CPUPlatform())


def start(device: Any) -> bool:
    """What an entry point calls once it has the composed config's ``trainer.device``: apply :func:`choose`
    (raising :class:`SelectionError` on a conflict), switch the platform on if chosen, and check its adapters
    (:class:`~gr_vl_verl.cpu.pins.PinError`). Returns whether the CPU platform is on."""
    if not choose(None if device is None else str(device)):
        return False
    activate()
    from gr_vl_verl.cpu import adapters

    adapters.verify()
    return True


def _restart_on_cpu() -> None:
    """Run this process again from its own command line, with ``VERL_PLATFORM=cpu``; never returns."""
    os.environ[ENV] = "cpu"
    # straight to stderr: no logging handler is set up in torchrun's rank this early, and a warning could vanish
    print(
        f"gr_vl cpu: trainer.device=cpu comes from the run's config, after verl's modules were imported for "
        f"another device; starting this process again with {ENV}=cpu",
        file=sys.stderr,
    )
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


def _sft_selection(module: types.ModuleType) -> None:
    """``verl.utils.device.auto_set_device`` that first applies the selection rule to the composed config.

    verl's ``sft_trainer`` runs as ``__main__`` under torchrun, so nothing can wrap its ``main``; its
    ``auto_set_device(config)`` is the first call that sees the composed config and comes before ``run_sft``
    builds anything (pin ``sft_selection``). No configuration reaches that point: selecting a platform is not a
    config value verl reads, and verl's own ``auto_set_device`` would rewrite ``trainer.device=cpu`` to the
    detected ``cuda``. Without ``cpu`` in the config or in ``VERL_PLATFORM`` it only calls verl's function.
    """

    def build(original: Callable[..., Any]) -> Callable[..., Any]:
        def auto_set_device(config: Any) -> None:
            trainer = config.get("trainer") if config is not None and hasattr(config, "get") else None
            device = trainer.get("device") if trainer is not None and hasattr(trainer, "get") else None
            if device is not None and (str(device).lower() == "cpu" or os.environ.get(ENV)):
                from gr_vl_verl.cpu.pins import PinError

                try:
                    if not active() and choose(str(device)) and os.environ.get(ENV) != "cpu":
                        _restart_on_cpu()
                    start(device)
                except (SelectionError, PinError) as e:
                    raise SystemExit(f"gr_vl_verl: {e}") from None
            original(config)

        return auto_set_device

    import_hooks.replace(module, "auto_set_device", build)


def _register_platform(_module: types.ModuleType) -> None:
    from gr_vl_verl.cpu import verl_platform

    verl_platform.register()


def install() -> None:
    """Called by the plugin at import: register the platform with verl, watch for an SFT config; switch the
    platform on if the command line (else the environment) asks for it."""
    import_hooks.after_import("verl.plugin.platform", _register_platform)
    import_hooks.after_import("verl.utils.device", _sft_selection)
    if requested():
        activate()
