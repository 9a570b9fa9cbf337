"""Driver of the multi-node tests, run in a child process (``ray_driver.run_driver``): it owns a two-node Ray
cluster of this machine (:class:`gr_vl_verl.cluster.local.LocalCluster`) and runs ``gr-vl`` against it in
processes of their own, each with a timeout that kills its whole process group. Neither this process nor the
pytest one ever holds a Ray driver.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from gr_vl_verl.process_group import run_in_group, wait_group

#: Each `gr-vl` run's limit, and how long the lost node's engine processes get to end.
RUN_LIMIT, SETTLE_S = 420, 60
#: How long a trainer may take to stop once a node under it is lost (gloo's own timeout is 30 minutes).
STOP_LIMIT = 120
#: The GCS declares a node dead after health checks fail this often this far apart (Ray: 5 x 3 s).
FAST_HEALTH = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3"}
#: The actors' vLLM engines as vLLM runs them off the CPU build: an engine core and a worker in processes of their
#: own (the CPU build's default in the plugin is one process; docs/cpu.md), whose fate the lost-node run checks.
ENGINE_PROCESSES = {"VLLM_ENABLE_V1_MULTIPROCESSING": "1"}


def _gr_vl(argv: list[str], log: Path) -> subprocess.CompletedProcess:
    done = run_in_group([sys.executable, "-m", "gr_vl_verl", *argv], timeout=RUN_LIMIT)
    log.write_text(done.stderr)
    return done


def outputs(folder: Path) -> list[list[Any]]:
    from gr_vl_verl.data.schemas import read_generations

    return [
        [r["id"], r["sample"], r["output"], r["output_tokens"], r["finish_reason"]] for r in read_generations(folder)
    ]


def _summary(folder: Path) -> dict[str, Any] | None:
    import json

    path = folder / "generate_summary.json"
    return json.loads(path.read_text()) if path.exists() else None


def _first_shard_or_exit(proc: subprocess.Popen, out: Path, limit_s: float) -> bool:
    """Wait until ``out`` holds a finished shard (rows are flowing); False if the run ended or timed out first."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline and proc.poll() is None:
        if any(out.glob("shard-*.parquet")):
            return True
        time.sleep(0.05)
    return False


def _settled(cluster: Any, node: Any, limit_s: float) -> list[dict[str, Any]]:
    """vLLM processes left in ``node``'s session (None: the cluster's) once they had ``limit_s`` seconds to end."""
    deadline = time.monotonic() + limit_s
    left = cluster.vllm_processes(node)
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = cluster.vllm_processes(node)
    return left


def _engines_up(cluster: Any, node: Any, proc: subprocess.Popen, limit_s: float) -> list[dict[str, Any]]:
    """``node``'s vLLM processes once its engine core and worker both run (or the run ended, or ``limit_s``)."""
    deadline = time.monotonic() + limit_s
    found = cluster.vllm_processes(node)
    while len(found) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
        found = cluster.vllm_processes(node)
    return found


def two_nodes_and_a_lost_node(data: str, model: str, work: str, flags: list[str]) -> dict[str, Any]:
    """The same sampled generation (seeded per row) twice: on two nodes, one engine each; on two nodes of which
    one is lost while its rows are in flight, and not replaced."""
    from gr_vl_verl.cluster.local import LocalCluster

    work_dir = Path(work)
    seen: dict[str, Any] = {}
    base = ["generate", "--data", data, "--model", model, *flags]

    cluster = LocalCluster(nodes=2, num_cpus=1, env={**FAST_HEALTH, **ENGINE_PROCESSES}).start()
    try:
        seen["cluster"] = cluster.describe()
        two = work_dir / "two"
        done = _gr_vl([*base, "--out", str(two), "--concurrency", "2", "--ray-address", cluster.address],
                      work_dir / "two.log")  # fmt: skip
        seen["two"] = {"rc": done.returncode, "stdout": done.stdout, "summary": _summary(two), "outputs": outputs(two)}

        # The last run's engines (and so its actors) must be gone first: until Ray frees their CPUs the next
        # run finds no room for its whole pool, sends rows to the first engine up, and the worker node's engine
        # may still be loading (no vLLM process there yet) when it is lost.
        seen["engines_before_loss_run"] = _settled(cluster, None, SETTLE_S)
        time.sleep(3)  # Ray marks the dead actors' resources free shortly after their processes end
        lost = work_dir / "lost"
        argv = [sys.executable, "-m", "gr_vl_verl", *base, "--out", str(lost), "--concurrency", "2", "--ray-address",
                cluster.address]  # fmt: skip
        with open(work_dir / "lost.log", "w") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            # the worker node's engine up (it may start after the head's), then rows flowing, then the loss
            engines_at_loss = _engines_up(cluster, cluster.members[1], proc, limit_s=240)
            flowing = _first_shard_or_exit(proc, lost, RUN_LIMIT)
            killed = cluster.lose_node(1)
            rc = wait_group(proc, timeout=RUN_LIMIT)  # no node replaces the lost one
        seen["lost"] = {
            "rc": rc,
            "flowing_at_loss": flowing,
            "killed": len(killed),
            "engines_at_loss": engines_at_loss,
            "engines_left": _settled(cluster, cluster.members[1], SETTLE_S),
            "summary": _summary(lost),
            "outputs": outputs(lost),
            "log": (work_dir / "lost.log").read_text()[-3000:],
        }
        seen["cluster_after"] = cluster.describe()
        seen["engines_after_runs"] = _settled(cluster, None, SETTLE_S)
    finally:
        seen["stop_ended"] = cluster.stop()
    seen["left_after_stop"] = sorted(cluster.processes())
    return seen


def _setting(argv: list[str], key: str) -> str:
    """The value of a ``key=value`` override in a trainer command (the last one wins, as with Hydra)."""
    values = [a.split("=", 1)[1] for a in argv if a.startswith(f"{key}=")]
    assert values, f"{key} not in the command"
    return values[-1]


def _wait_for_checkpoint(folder: Path, step: int, proc: subprocess.Popen, limit_s: float) -> bool:
    """Wait until verl's tracker names ``step`` (checkpoint ``step`` complete); False if the run ended first."""
    from gr_vl_verl.checkpoints import last_checkpoint

    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline and proc.poll() is None:
        if last_checkpoint(folder) == step:
            return True
        time.sleep(0.2)
    return False


def grpo_on_two_nodes(argv: list[str], out: str, name: str, limit_s: float, lose_after: int = 0) -> dict[str, Any]:
    """A verl trainer command (``trainer.nnodes=2``) against a two-node Ray cluster of this machine, each node
    with 8 CPUs and one ``gr_vl_cpu_device``: the run's result, and on which node each vLLM server ran (sampled
    from the nodes' process tables while the run lasts).

    With ``lose_after`` = k > 0 the worker node is lost once checkpoint k is complete (step k + 1 under way),
    the run must end within ``STOP_LIMIT`` s of that, and, with a new node in its place, the same command runs
    again (``<name>_resumed``): verl's ``trainer.resume_mode=auto`` continues it from checkpoint k."""
    from gr_vl_verl.cluster.local import LocalCluster
    from gr_vl_verl.trainer import launch

    cluster = LocalCluster(nodes=2, num_cpus=8, cpu_devices=1, env=FAST_HEALTH).start()
    servers: dict[int, set[int]] = {}
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.5):
            for node in cluster.members:
                for pid, (_start, cmd) in cluster.processes(node).items():
                    if "vLLMHttpServer" in cmd:
                        servers.setdefault(node.index, set()).add(pid)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    seen: dict[str, Any] = {"nodes": cluster.describe()["nodes"]}
    env = {"RAY_ADDRESS": cluster.address}
    try:
        if not lose_after:
            seen["seconds"] = launch.run(argv, Path(out), name, timeout=limit_s, env=env).seconds
        else:
            seen["lost"] = _lose_a_node_mid_run(cluster, argv, Path(out), name, env, limit_s, lose_after)
            seen["servers_before_loss"] = {str(k): sorted(v) for k, v in servers.items()}
            cluster.add_node()
            seen["nodes_resumed"] = cluster.describe()["nodes"]
            seen["seconds"] = launch.run(argv, Path(out), f"{name}_resumed", timeout=limit_s, env=env).seconds
    finally:
        done.set()
        watcher.join(10)
        seen["servers"] = {str(k): sorted(v) for k, v in servers.items()}
        seen["stop_ended"] = cluster.stop()
        seen["left_after_stop"] = sorted(cluster.processes())
    return seen


def _lose_a_node_mid_run(
    cluster: Any, argv: list[str], out: Path, name: str, env: dict[str, str], limit_s: float, after: int
) -> dict:
    from gr_vl_verl.checkpoints import last_checkpoint
    from gr_vl_verl.trainer import launch

    checkpoints = Path(_setting(argv, "trainer.default_local_dir"))
    run = launch.start(argv, out, name, env=env)
    try:
        reached = _wait_for_checkpoint(checkpoints, after, run.proc, limit_s)
        time.sleep(2)  # the next step's rollout under way
        task_runner = [n.index for n in cluster.members for _, cmd in cluster.processes(n).values()
                       if "TaskRunner" in cmd]  # fmt: skip
        lost_id = cluster.members[1].node_id
        cluster.lose_node(1)
        lost_at = time.monotonic()
        rc = wait_group(run.proc, STOP_LIMIT)  # None: still running at the limit (then killed, group and all)
        stop_s = time.monotonic() - lost_at
    finally:
        wait_group(run.proc, 0.1)
    return {
        "checkpoint_reached": reached,
        "node_id": lost_id,
        "task_runner_nodes": task_runner,
        "rc": rc,
        "stop_s": stop_s,
        "said": [line for line in run.log.read_text(errors="replace").splitlines() if "gr_vl_verl: " in line],
        "log": launch.log_tail(run.log, 40),
        "checkpoint_after": last_checkpoint(checkpoints),
        "step_folders": sorted(p.name for p in checkpoints.glob("global_step_*")),
    }


# A Ray driver under the node watch, waiting forever on an actor of the head node, as verl's surviving ranks
# wait in a collective for a lost one; another actor of the job sits on ``node``. "deaf" also ignores the
# watch's interrupt, as a driver stuck outside Python would, so only the watch's grace exit ends it.
_STUCK = """
import sys, time
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy as On
from gr_vl_verl.cluster import node_watch
from gr_vl_verl.cluster.node_loss import NodeWatchSettings, stop_message

address, node, head, mode = sys.argv[1:5]


@ray.remote(num_cpus=0)
class Rank:
    def wait(self):
        time.sleep(3600)


def work():
    ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    there, here = (Rank.options(scheduling_strategy=On(n, soft=False)).remote() for n in (node, head))
    ray.get([there.__ray_ready__.remote(), here.__ray_ready__.remote()])
    print("ready", flush=True)
    while mode == "deaf":
        try:
            time.sleep(3600)
        except KeyboardInterrupt:
            print("interrupt ignored", flush=True)
    ray.get(here.wait.remote())


settings = NodeWatchSettings(poll_s=0.5, confirm_s=10.0, grace_s=5.0 if mode == "deaf" else 60.0)
node_watch.run_watched(work, settings, lambda lost: stop_message(lost, None, "auto", None))
"""


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _stuck_driver(cluster: Any, node: Any, mode: str, log: Path) -> subprocess.Popen:
    """The driver, started as from a script's ``cmd &`` (SIGINT ignored, so Python installs no handler for it)."""
    argv = [sys.executable, "-c", _STUCK, cluster.address, node.node_id, cluster.members[0].node_id, mode]
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=_ignore_sigint)  # fmt: skip
    deadline = time.monotonic() + 120
    while "ready" not in log.read_text() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    return proc


def node_watch_on_stuck_drivers(work: str) -> dict[str, Any]:
    """Three nodes, two drivers stuck on the head at once, each with an actor on a node of its own (1: "stuck",
    2: "deaf"). Node 2 lost: the deaf driver is ended by its watch's grace exit, and the stuck one, none of whose
    actors were there, keeps running; node 1 lost: the stuck driver ends."""
    from gr_vl_verl.cluster.local import LocalCluster

    work_dir = Path(work)
    seen: dict[str, Any] = {}
    cluster = LocalCluster(nodes=3, num_cpus=1, env=FAST_HEALTH).start()
    try:
        ids = [n.node_id for n in cluster.members]
        stuck = _stuck_driver(cluster, cluster.members[1], "stuck", work_dir / "stuck.log")
        deaf = _stuck_driver(cluster, cluster.members[2], "deaf", work_dir / "deaf.log")
        cluster.lose_node(2)
        seen["deaf"] = {"rc": wait_group(deaf, 60), "log": (work_dir / "deaf.log").read_text(), "node": ids[2]}
        time.sleep(1)  # both watches read the same tables every 0.5 s: the stuck one has seen node 2 go too
        seen["alive_after_other_node"] = stuck.poll() is None
        cluster.lose_node(1)
        seen["stuck"] = {"rc": wait_group(stuck, 60), "log": (work_dir / "stuck.log").read_text(), "node": ids[1]}
    finally:
        seen["stop_ended"] = cluster.stop()
    return seen
