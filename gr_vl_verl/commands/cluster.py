"""Start a Ray cluster of several nodes on this machine, print its address, stop it cleanly.

    gr-vl cluster --nodes 2 --num-cpus 1                 # up until Ctrl-C or SIGTERM
    gr-vl cluster --nodes 2 -- gr-vl generate --data rl.parquet --model CKPT --out gens --concurrency 2

Each node is its own ``ray start`` with ``--num-cpus`` CPUs and ``--cpu-devices`` ``gr_vl_cpu_device``
resources; the first one is the head. With a command after ``--``, the command runs with ``RAY_ADDRESS`` set to
the cluster (``gr-vl`` commands then join it, as with ``--ray-address``) and the cluster stops when it ends; its
exit code is the command's. See docs/cluster.md.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from typing import Any

from gr_vl_verl.commands import UsageError, WorkError, emit, results_stream


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nodes", type=int, default=2, help="Ray nodes, the head included (default 2)")
    parser.add_argument("--num-cpus", type=int, default=1, help="CPUs each node offers Ray (default 1)")
    parser.add_argument(
        "--cpu-devices", type=int, default=1, help="gr_vl_cpu_device resources per node: CPU ranks (default 1)"
    )
    parser.add_argument("--object-store-mb", type=int, default=512, help="object store per node, MB (default 512)")
    parser.add_argument("--keep-logs", action="store_true", help="keep the nodes' Ray logs (their folder is printed)")
    # not "command": gr-vl's own parser keeps the command's name there
    parser.add_argument(
        "argv", nargs=argparse.REMAINDER, metavar="COMMAND", help="command to run on the cluster (after --)"
    )


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    from gr_vl_verl.cluster.local import CPU_DEVICE_RESOURCE, ClusterError, LocalCluster

    command = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    try:
        cluster = LocalCluster(nodes=args.nodes, num_cpus=args.num_cpus, cpu_devices=args.cpu_devices,
                               object_store_mb=args.object_store_mb, keep_logs=args.keep_logs)  # fmt: skip
    except ValueError as e:
        raise UsageError(str(e)) from None
    previous = signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM stops the cluster as Ctrl-C does
    code = 0
    try:
        try:
            cluster.start()
        except ClusterError as e:
            raise WorkError(str(e)) from None
        emit(f"address: {cluster.address}")
        each = f"CPU {args.num_cpus}  {CPU_DEVICE_RESOURCE} {args.cpu_devices}"
        for node in cluster.members:
            emit(f"node {node.index} ({'head' if node.head else 'worker'}): {node.node_id}  {each}")
        if args.keep_logs:
            emit(f"logs: {cluster.temp_dir}")
        results_stream().flush()
        if command:
            code = _run_command(command, cluster.address)
        else:
            print("gr-vl cluster: up; Ctrl-C or SIGTERM stops it", file=sys.stderr, flush=True)
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        code = 0 if not command else 130
    finally:
        left = cluster.stop()
        signal.signal(signal.SIGTERM, previous)
    emit(f"stopped: {len(cluster.members)} node(s)" + (f", {len(left)} process(es) left by them ended" if left else ""))
    return code


def _run_command(command: list[str], address: str) -> int:
    """``command`` with ``RAY_ADDRESS`` set, its stdout this command's; SIGTERM to it if we are interrupted."""
    out = results_stream()
    try:
        proc = subprocess.Popen(command, env={**os.environ, "RAY_ADDRESS": address}, stdout=out)
    except OSError as e:
        raise UsageError(f"cannot run {command[0]!r}: {e}") from None
    try:
        return proc.wait()
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
