"""verl on a CPU-only machine: a ``cpu`` platform for verl's platform registry and the few adapters it needs.

Selected by ``trainer.device=cpu`` (or ``VERL_PLATFORM=cpu``); on a machine with accelerators nothing here is
active unless asked for. ``docs/cpu.md`` lists what is set and why, with the verl and vLLM lines involved.
"""
