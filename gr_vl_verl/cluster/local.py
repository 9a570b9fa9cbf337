"""A Ray cluster of several nodes on one machine, so multi-node paths run without a cluster.

Each node is one ``ray start --block`` with CPUs of its own and a ``gr_vl_cpu_device`` resource of its own
(the CPU platform's "device", :mod:`gr_vl_verl.cpu.verl_platform`), all on 127.0.0.1 with ports chosen free.
A node leads a session of its own, and everything it starts (raylet, Ray's workers and agents, whatever a
worker starts: vLLM's engine processes) stays in that session, adopted or not; so :meth:`LocalCluster.stop`
ends all of it, and a test can ask what a node left behind.

:meth:`LocalCluster.lose_node` simulates a node that dies: SIGKILL to that node's Ray processes (``ray
start`` and its reaper, the raylet, Ray's workers and agents) and to nothing else, so what Ray's workers
started is left to its own devices, as when a machine's raylet crashes.

Only the standard library here: the Ray driver that checks the nodes runs in a child process.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from gr_vl_verl.fate_share import Stat, alive, children_die_with_this_process, end_all, process_table

#: The CPU platform's Ray resource (``gr_vl_verl.cpu.verl_platform.RAY_RESOURCE``; that module imports verl).
CPU_DEVICE_RESOURCE = "gr_vl_cpu_device"
HOST = "127.0.0.1"
#: Settings every node reads from its environment unless the caller's has them. Ray's workers at niceness 0
#: (Ray's default 15): the nodes share this machine with the driver, and at 15 the engines, which do the work,
#: lose every core to it. No drain on SIGTERM: ``ray start`` would wait up to 30 s for a node that serves nothing.
NODE_DEFAULTS = {"RAY_worker_niceness": "0", "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}

# Lists the nodes Ray's GCS reports alive once each has the given node ids: run in a child process, so the
# process that owns the cluster never holds a Ray driver.
_PROBE = """
import json, os, sys, time
import ray
ray.init(address=sys.argv[1], log_to_driver=False, logging_level="ERROR")
want, deadline = set(json.loads(sys.argv[2])), time.monotonic() + float(sys.argv[3])
while True:
    alive = {n["NodeID"]: n["Resources"] for n in ray.nodes() if n["Alive"]}
    if want <= set(alive) or time.monotonic() > deadline:
        break
    time.sleep(0.2)
sys.stdout.write(json.dumps(alive) + "\\n")
sys.stdout.flush()
os._exit(0)
"""


class ClusterError(RuntimeError):
    """A node did not start, or the cluster did not come up as asked."""


@dataclass
class Node:
    index: int
    head: bool
    proc: subprocess.Popen
    log: Path
    node_id: str = ""
    lost: bool = False

    @property
    def session(self) -> int:
        """The session this node's processes belong to (``ray start`` leads it)."""
        return self.proc.pid


@dataclass
class LocalCluster:
    """``nodes`` Ray nodes on this machine, the first one the head; see the module docstring.

    ``num_cpus`` and ``cpu_devices`` are per node. ``env`` is added to the nodes' environment (Ray settings such
    as ``RAY_health_check_period_ms``). Use as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    nodes: int = 2
    num_cpus: int = 1
    cpu_devices: int = 1
    object_store_mb: int = 256
    env: dict[str, str] = field(default_factory=dict)
    start_timeout_s: float = 180.0
    keep_logs: bool = False
    address: str = ""
    members: list[Node] = field(default_factory=list)
    temp_dir: Path | None = None

    def __post_init__(self) -> None:
        if self.nodes < 1 or self.num_cpus < 0 or self.cpu_devices < 0 or self.object_store_mb < 75:
            raise ValueError(
                f"a cluster needs >= 1 node, >= 0 CPUs and devices per node and >= 75 MB of object store, got "
                f"nodes={self.nodes} num_cpus={self.num_cpus} cpu_devices={self.cpu_devices} "
                f"object_store_mb={self.object_store_mb}"
            )

    # -- lifecycle -------------------------------------------------------------------------------
    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> LocalCluster:
        """Start every node; return once Ray lists them all alive (:class:`ClusterError` otherwise)."""
        children_die_with_this_process()  # if this process is killed, its nodes stop (SIGTERM) with it
        # A short root: Ray's socket paths under it must stay within the 107 characters of a Unix socket name.
        self.temp_dir = Path(tempfile.mkdtemp(prefix="gr_vl_ray_", dir="/tmp"))
        self.address = f"{HOST}:{_free_port()}"
        try:
            for i in range(self.nodes):
                self._launch(head=i == 0)
            self._wait_alive(self.members)
        except BaseException:
            self.stop()
            raise
        return self

    def add_node(self) -> Node:
        """One more worker node (a lost node coming back is a new node to Ray, with a new id)."""
        node = self._launch(head=False)
        self._wait_alive([node])
        return node

    def lose_node(self, index: int) -> list[int]:
        """SIGKILL node ``index``'s Ray processes (not the head's: that is the cluster); the pids killed."""
        node = self.members[index]
        if node.head:
            raise ValueError("the head node holds the cluster (GCS); lose a worker node")
        table = process_table()
        root = node.proc.pid
        kids = _children(root, table)
        raylets = [p for p in kids if _comm(p) == "raylet"]
        ray_side = [p for p in kids if p not in raylets] + raylets + [p for r in raylets for p in _children(r, table)]
        # The reaper first: once `ray start` is gone it would end the node's whole session, engines included.
        ray_side.sort(key=lambda p: "ray_process_reaper" not in _cmdline(p))
        killed = []
        for pid in ray_side[:1] + [root] + ray_side[1:]:
            if _signal(pid, table[pid][1] if pid in table else None, signal.SIGKILL):
                killed.append(pid)
        node.proc.wait(timeout=30)
        node.lost = True
        return killed

    def stop(self, timeout_s: float = 30.0, grace_s: float = 10.0) -> list[str]:
        """Stop every node (SIGTERM to ``ray start``, which stops its node), then end whatever is left in the
        nodes' sessions. Returns what had to be ended that way (``pid command`` each).

        A raylet ends its workers as it goes, without waiting for them: an actor's worker still tearing down its
        vLLM engine can outlive ``ray start`` by a few seconds. Those get ``grace_s`` to end on their own."""
        for group in ([n for n in self.members if not n.head], [n for n in self.members if n.head]):
            for node in group:
                if node.proc.poll() is None:
                    node.proc.send_signal(signal.SIGTERM)
            for node in group:
                try:
                    node.proc.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    node.proc.kill()
                    node.proc.wait(timeout=timeout_s)
        deadline = time.monotonic() + grace_s
        left = self.processes()
        while left and time.monotonic() < deadline:
            time.sleep(0.2)
            left = self.processes()
        end_all({pid: start for pid, (start, _cmd) in left.items()})
        if self.temp_dir is not None and not self.keep_logs:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
        return [f"{pid} {cmd}" for pid, (_start, cmd) in sorted(left.items())]

    # -- what is running -------------------------------------------------------------------------
    def processes(self, node: Node | None = None) -> dict[int, tuple[int, str]]:
        """pid -> (start time, command line) of every live process in the sessions of the cluster's nodes
        (or of ``node``): Ray's and whatever Ray's workers started, wherever they were re-parented."""
        sessions = {n.session for n in ([node] if node is not None else self.members)}
        found = {}
        for pid, (_ppid, start) in process_table().items():
            try:
                if os.getsid(pid) in sessions:
                    found[pid] = (start, _cmdline(pid))
            except OSError:
                continue
        return found

    def vllm_processes(self, node: Node | None = None) -> list[dict[str, object]]:
        """vLLM's engine processes (``VLLM::EngineCore``, ``VLLM::Worker...``) in the cluster (or ``node``)."""
        table = process_table()
        return [
            {"pid": pid, "ppid": table[pid][0], "cmd": cmd}
            for pid, (_start, cmd) in sorted(self.processes(node).items())
            if cmd.startswith("VLLM::") and pid in table
        ]

    def describe(self) -> dict[str, object]:
        return {
            "address": self.address,
            "nodes": [
                {"index": n.index, "head": n.head, "node_id": n.node_id, "lost": n.lost, "log": str(n.log)}
                for n in self.members
            ],
        }

    # -- internals -------------------------------------------------------------------------------
    def _launch(self, head: bool) -> Node:
        assert self.temp_dir is not None
        index = len(self.members)
        resources = json.dumps({CPU_DEVICE_RESOURCE: self.cpu_devices})
        argv = [_ray_cli(), "start", "--block", f"--node-ip-address={HOST}", f"--num-cpus={self.num_cpus}",
                f"--resources={resources}", f"--object-store-memory={self.object_store_mb * 1024 * 1024}",
                f"--temp-dir={self.temp_dir}", f"--dashboard-agent-listen-port={_free_port()}",
                "--disable-usage-stats"]  # fmt: skip
        if head:
            port = self.address.rsplit(":", 1)[1]
            argv += ["--head", f"--port={port}", "--include-dashboard=false"]
            argv += [f"--ray-client-server-port={_free_port()}"]
        else:
            argv += [f"--address={self.address}", "--include-log-monitor=false"]  # one log monitor per machine
        env = {**NODE_DEFAULTS, **os.environ, **self.env}
        env.pop("RAY_ADDRESS", None)
        log = self.temp_dir / f"node-{index}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True)  # fmt: skip
        node = Node(index=index, head=head, proc=proc, log=log)
        self.members.append(node)
        node.node_id = self._raylet_node_id(node)
        return node

    def _raylet_node_id(self, node: Node) -> str:
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if node.proc.poll() is not None:
                raise ClusterError(f"node {node.index} exited with {node.proc.returncode}: {_tail(node.log)}")
            for pid in _children(node.proc.pid, process_table()):
                if _comm(pid) == "raylet":
                    for arg in _cmdline(pid).split():
                        if arg.startswith("--node_id="):
                            return arg.split("=", 1)[1]
            time.sleep(0.2)
        raise ClusterError(f"node {node.index}: no raylet after {self.start_timeout_s:g} s: {_tail(node.log)}")

    def _wait_alive(self, nodes: list[Node]) -> None:
        want = [n.node_id for n in nodes]
        done = subprocess.run([sys.executable, "-c", _PROBE, self.address, json.dumps(want), str(self.start_timeout_s)],
                              capture_output=True, text=True, timeout=self.start_timeout_s + 60,
                              env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})  # fmt: skip
        lines = done.stdout.strip().splitlines()
        alive = json.loads(lines[-1]) if done.returncode == 0 and lines else {}
        missing = [i for i in want if i not in alive]
        if missing:
            raise ClusterError(f"node(s) {missing} not alive in Ray at {self.address}: {done.stderr[-2000:]}")


def _ray_cli() -> str:
    """The ``ray`` executable of this interpreter's environment."""
    here = Path(sys.executable).parent / "ray"
    return str(here) if here.exists() else (shutil.which("ray") or "ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _children(pid: int, table: dict[int, Stat]) -> list[int]:
    return [p for p, (ppid, _) in table.items() if ppid == pid]


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _signal(pid: int, start: int | None, sig: int) -> bool:
    """Send ``sig`` to ``pid`` if it is still the process that started at ``start``."""
    if start is None or not alive(pid, start):
        return False
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _tail(path: Path, chars: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""
