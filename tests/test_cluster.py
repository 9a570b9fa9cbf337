"""Generation on a Ray cluster of two nodes of this machine (``gr_vl_verl.cluster.local``, ``gr-vl cluster``).

Engines on both nodes write every row's own seeded samples, and the summary says which node served which rows
(that the number of engines changes no sample is ``tests/test_generation_ray.py``'s check, byte for byte); a node
lost while its rows are in flight, and not replaced, loses no row and repeats none (Ray restarts its actor
where there is room, or Ray Data hands its rows to the other), and the lost actor's vLLM engine processes (an
engine core and a worker, as vLLM runs them off the CPU build) end with it; stopping the cluster leaves no
process.

Real vLLM (its CPU build), the tiny Qwen2.5-VL, 32 rows, two samples each at temperature 1: every sample's seed
is its row's and its index's, so the outputs are the same whichever engine on whichever node draws them (the
stronger claim; greedy decoding, which has no seed, is the special case). Four engine starts in all. Ray and
vLLM run in child processes (``cluster_drivers.py``), never in the pytest process.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from data_helpers import VLTRAIN
from ray_driver import run_driver

from gr_vl_verl.process_group import kill_group, run_in_group

pytestmark = pytest.mark.timeout(1500)
# Enough rows and tokens that rows are still in flight on the worker node's engine, which can start 10 s after
# the head's, when the first shard is written
ROWS, N = 32, 2
ENGINE = json.dumps({"max_model_len": 2048, "enforce_eager": True})
FLAGS = ["--backend", "vllm", "--max-tokens", "64", "--seed", "3", "--temperature", "1.0", "--n", str(N),
         "--batch-size", "1", "--shard-size", "2",
         "--engine-kwargs", ENGINE, "--min-pixels", "784", "--max-pixels", "12544", "--no-progress"]  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from gr_vl_verl.cli import main

    out = tmp_path_factory.mktemp("prep_cluster")
    argv = ["prep", "vltrain", "--data-root", str(VLTRAIN), "--out", str(out), "--formats", "rl", "--min-pixels",
            "784", "--max-pixels", "12544", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    table = pq.read_table(out / "rl_train.parquet")
    assert table.num_rows > ROWS
    pq.write_table(table.slice(0, ROWS), out / "rl_rows.parquet")  # the schema's metadata (the kind) comes along
    return out / "rl_rows.parquet"


@pytest.fixture(scope="module")
def runs(data, tiny_model_dir, tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("cluster")
    return run_driver("cluster_drivers:two_nodes_and_a_lost_node", str(data), str(tiny_model_dir), str(work),
                      FLAGS, timeout=1400)  # fmt: skip


def _ids(outputs: list[list]) -> list[str]:
    return [o[0] for o in outputs]


def _row_ids(data: Path) -> list[str]:
    return [info["id"] for info in pq.read_table(data, columns=["extra_info"]).column("extra_info").to_pylist()]


def test_two_nodes_write_every_rows_samples_once_and_the_summary_names_the_nodes(runs, data):
    two = runs["two"]
    assert two["rc"] == 0, two["stdout"]
    assert len(two["outputs"]) == ROWS * N and sorted(set(_ids(two["outputs"]))) == sorted(_row_ids(data))
    assert len({tuple(o[:2]) for o in two["outputs"]}) == ROWS * N  # each row's samples, once each
    assert any(len({o[2] for o in two["outputs"] if o[0] == i}) > 1 for i in _ids(two["outputs"])), "sampled"
    head, worker = (n["node_id"] for n in runs["cluster"]["nodes"])
    actors = two["summary"]["actors"]
    # one engine on each node, each with its share of the rows, every row once
    assert sorted(a["node"] for a in actors) == sorted([head, worker])
    assert all(a["rows"] > 0 for a in actors) and sum(a["rows"] for a in actors) == ROWS
    assert "actors: 2, rows each: " in two["stdout"]


def test_a_node_lost_mid_run_loses_no_row_and_repeats_none(runs):
    lost, two = runs["lost"], runs["two"]
    # rows were flowing, and the worker node ran an engine (vLLM's engine core and its worker) when it was lost
    assert lost["flowing_at_loss"], lost["log"]
    engines = {e["cmd"].split("_")[0] for e in lost["engines_at_loss"]}
    assert engines == {"VLLM::EngineCore", "VLLM::Worker"}, (lost["summary"], runs["cluster"], lost["killed"])
    assert lost["killed"] >= 3  # `ray start`, its raylet, the actor's worker (and Ray's agents)
    assert lost["rc"] == 0, lost["log"]
    ids = _ids(lost["outputs"])
    samples = [tuple(o[:2]) for o in lost["outputs"]]
    assert sorted(ids) == sorted(_ids(two["outputs"])) and len(samples) == len(set(samples)) == ROWS * N
    assert lost["outputs"] == two["outputs"]  # the same text, tokens and finish reason, sample by sample
    head, gone = runs["cluster_after"]["nodes"]
    assert (head["lost"], gone["lost"]) == (False, True)
    # No node replaced the lost one. Which actor serves the rows the lost one held is Ray's choice, by timing: its
    # restart on the head once Ray Data has released the other actor (Ray retries an actor's tasks on its
    # restart), or the surviving actor when Ray Data sends the failed blocks there first. Either way each row is
    # served once, by an actor on a node of the cluster.
    actors = lost["summary"]["actors"]
    assert 1 <= len({a["actor"] for a in actors}) <= 2 and sum(a["rows"] for a in actors) == ROWS, actors
    assert all(a["rows"] > 0 for a in actors) and {a["node"] for a in actors} <= {head["node_id"], gone["node_id"]}


def test_the_lost_actors_vllm_engine_ends_with_it(runs):
    """vLLM's ``EngineCore`` and ``Worker`` of the actor on the lost node do not outlive it (they did: orphaned
    to init, running minutes later), and no engine is left once the runs are over."""
    lost = runs["lost"]
    assert lost["engines_left"] == [], lost["engines_left"]
    assert runs["engines_after_runs"] == []


def test_the_cluster_stops_leaving_no_process(runs):
    assert runs["left_after_stop"] == []
    assert runs["stop_ended"] == []  # Ray stopped its own processes: none needed ending after it


PROBE = """
import json, os, ray
ray.init(log_to_driver=False, logging_level="ERROR")
nodes = [n for n in ray.nodes() if n["Alive"]]
print(json.dumps({"address": os.environ["RAY_ADDRESS"], "nodes": [n["Resources"] for n in nodes]}), flush=True)
os._exit(0)
"""


def test_gr_vl_cluster_runs_a_command_on_its_nodes_and_stops_them():
    done = run_in_group([sys.executable, "-m", "gr_vl_verl", "cluster", "--nodes", "2", "--num-cpus", "1",
                         "--cpu-devices", "2", "--object-store-mb", "128", "--", sys.executable, "-c", PROBE],
                        timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    address = lines[0].removeprefix("address: ")
    assert lines[0].startswith("address: 127.0.0.1:")
    assert lines[1].startswith("node 0 (head): ") and lines[2].startswith("node 1 (worker): ")
    node_ids = [line.split()[3] for line in lines[1:3]]
    probe = json.loads(lines[3])
    assert probe["address"] == address  # the command ran with RAY_ADDRESS set to the cluster, and joined it
    assert len(probe["nodes"]) == 2
    assert all(r["CPU"] == 1 and r["gr_vl_cpu_device"] == 2 for r in probe["nodes"])
    assert lines[4] == "stopped: 2 node(s)"  # nothing was left for the command to end itself
    assert _running_with(node_ids) == []


def test_gr_vl_cluster_stays_up_until_sigterm_then_stops_its_nodes():
    argv = [sys.executable, "-m", "gr_vl_verl", "cluster", "--nodes", "2", "--object-store-mb", "128"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        lines = [proc.stdout.readline() for _ in range(3)]  # the address and the two nodes, once they are up
        node_ids = [line.split()[3] for line in lines[1:]]
        assert lines[0].startswith("address: ") and len(node_ids) == 2 and _running_with(node_ids)
        assert proc.poll() is None  # it holds the cluster until told to stop
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=120)
    finally:
        kill_group(proc.pid)
    assert proc.returncode == 0 and rest == "stopped: 2 node(s)\n"
    assert _running_with(node_ids) == []


def _running_with(words: list[str]) -> list[str]:
    """Command lines of running processes that mention any of ``words``."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if any(w in cmd for w in words):
                found.append(cmd[:200])
    return found
