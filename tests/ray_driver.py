"""Run a test's Ray driver in a child process, so the pytest process never calls ``ray.init``.

After ``ray.shutdown()`` a Ray 2.60 driver keeps its GCS-client and gRPC threads (``gcs_client_io_service``,
``grpc_global_timer``, ``event_engine``, ``timer_manager``, ...) running until the process ends; in the pytest
process they were still running while the interpreter tore down, and the process crashed at exit now and
then (SIGSEGV after "N passed"). A driver here is a fresh interpreter that calls one function, prints its
JSON result and leaves with ``os._exit`` once the result is out, so no Ray thread outlives anything it uses.

Every child leads a process group of its own (:func:`run_in_group`): Ray's processes, vLLM's engine processes
and torchrun's ranks are its grandchildren, and a timeout kills them all, not only the child.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from gr_vl_verl.process_group import run_in_group

_MARK = "@@ray-driver-result@@"
_CODE = f"""
import importlib, json, os, sys
module, function = sys.argv[1].split(":")
result = getattr(importlib.import_module(module), function)(*json.loads(sys.argv[2]))
sys.stdout.write("\\n{_MARK}" + json.dumps(result) + "\\n")
sys.stdout.flush()
sys.stderr.flush()
os._exit(0)
"""


def run_driver(target: str, *args: Any, timeout: int = 900) -> Any:
    """``module:function(*args)`` in a new Python process (``tests/`` importable); its JSON result."""
    tests = str(Path(__file__).resolve().parent)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")])))
    done = run_in_group([sys.executable, "-c", _CODE, target, json.dumps(args)], timeout=timeout, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith(_MARK)]
    if done.returncode != 0 or not lines:
        raise AssertionError(f"Ray driver {target} exited with {done.returncode}:\n{done.stderr[-4000:]}")
    return json.loads(lines[-1][len(_MARK) :])


def run_cli(argv: list[str], timeout: int = 900) -> subprocess.CompletedProcess:
    """``gr-vl ARGV`` in a new Python process, for commands that may start Ray (generate, eval, mine --model):
    the Ray driver then lives and ends in that process, never in the pytest one."""
    return run_in_group([sys.executable, "-m", "gr_vl_verl", *argv], timeout=timeout, env=os.environ)
