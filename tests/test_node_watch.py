"""The node watch (``gr_vl_verl.cluster.node_watch``, ``gr_vl.node_watch``): a Ray driver stops, with a message
naming the node, when a node holding its job's actors is lost, and only then.

The pure part (which nodes count as lost, the checkpoint, the message) on Ray's table shapes; the watch itself
on a real Ray cluster of three nodes of this machine, with drivers stuck as verl's is when a rank's node dies
(waiting on a surviving actor, as ranks wait in a collective). The whole GRPO path (a node lost mid-step, the
run stopped, resumed from its checkpoint) is ``tests/test_e2e_training.py``'s.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest
from ray_driver import run_driver

from gr_vl_verl.checkpoints import TRACKER, last_checkpoint
from gr_vl_verl.cluster.node_loss import LostNode, NodeWatchSettings, actors_by_node, lost_nodes, stop_message

A, B, C = "a" * 56, "b" * 56, "c" * 56


def _actor(cls: str, node: str, state: str = "ALIVE") -> dict:
    """An entry of Ray's actor table as ``ray._private.state.actors`` returns it (the keys read)."""
    return {"ActorClassName": cls, "State": state, "Address": {"IPAddress": "10.0.0.1", "NodeID": node}}


def _node(node: str, alive: bool, address: str = "10.0.0.2") -> dict:
    """An entry of ``ray.nodes()`` (the keys read)."""
    return {"NodeID": node, "Alive": alive, "NodeManagerAddress": address, "NodeManagerHostname": "gpu-7"}


def test_actors_by_node_counts_live_actors_by_class():
    table = [_actor("WorkerDict", A), _actor("WorkerDict", A), _actor("vLLMHttpServer", A),
             _actor("ray::_V1TaskRunner", B), _actor("WorkerDict", C, state="DEAD"), _actor("X", "")]  # fmt: skip
    assert actors_by_node(table) == {
        A: Counter({"WorkerDict": 2, "vLLMHttpServer": 1}),
        B: Counter({"_V1TaskRunner": 1}),
    }


def test_a_node_counts_as_lost_only_if_it_held_the_runs_actors_and_is_dead_or_gone():
    held = {A: Counter({"WorkerDict": 1, "vLLMHttpServer": 2}), B: Counter({"WorkerDict": 1})}
    assert lost_nodes(held, [_node(A, True), _node(B, True), _node(C, False)]) == []  # C held nothing
    (lost,) = lost_nodes(held, [_node(A, False), _node(B, True)])
    assert lost == LostNode(A, "10.0.0.2", "gpu-7", (("vLLMHttpServer", 2), ("WorkerDict", 1)))
    assert [n.node_id for n in lost_nodes(held, [_node(B, True)])] == [A]  # gone from the table: lost too
    assert lost_nodes({}, [_node(A, False)]) == []


def test_last_checkpoint_is_the_trackers_step_when_its_folder_exists(tmp_path):
    assert last_checkpoint(tmp_path) is None and last_checkpoint(None) is None
    (tmp_path / TRACKER).write_text("4")
    assert last_checkpoint(tmp_path) is None  # the tracker names a folder that is not there
    (tmp_path / "global_step_4").mkdir()
    (tmp_path / "global_step_5").mkdir()  # a save cut off before the tracker moved
    assert last_checkpoint(tmp_path) == 4
    (tmp_path / TRACKER).write_text("four")
    assert last_checkpoint(tmp_path) is None


def test_the_stop_message_names_the_node_the_checkpoint_and_the_way_on(tmp_path):
    lost = [LostNode(A, "10.0.0.2", "gpu-7", (("WorkerDict", 2), ("vLLMHttpServer", 1)))]
    said = stop_message(lost, tmp_path, "auto", 10)
    assert said.startswith(f"Ray node {A} at 10.0.0.2 (gpu-7), which held WorkerDict x2, vLLMHttpServer, was lost")
    two = stop_message([*lost, LostNode(B, "", "", ())], tmp_path, "auto", 10)
    assert f"; Ray node {B} at an unknown address, which held none, were lost mid-run" in two
    assert said.endswith(
        f"No checkpoint was complete yet in {tmp_path} (trainer.save_freq=10): a rerun starts from step 0."
    )
    (tmp_path / TRACKER).write_text("20")
    (tmp_path / "global_step_20").mkdir()
    said = stop_message(lost, tmp_path, "auto", 10)
    assert f"The last complete checkpoint is step 20 ({tmp_path / 'global_step_20'})." in said
    assert "rerun the same command: trainer.resume_mode=auto continues from step 20" in said
    said = stop_message(lost, tmp_path, "disable", 10)
    assert "trainer.resume_mode=disable: rerun with trainer.resume_mode=auto" in said


@pytest.mark.parametrize(
    ("values", "error"),
    [({"poll": 1}, "unknown key(s) ['poll'] in gr_vl.node_watch"), ({"poll_s": 0}, "poll_s must be"),
     ({"grace_s": True}, "grace_s must be"), ({"confirm_s": float("inf")}, "confirm_s must be"),
     ({"enable": "yes"}, "enable must be true or false")],
)  # fmt: skip
def test_node_watch_settings_refuse_bad_values(values, error):
    with pytest.raises(ValueError, match=re.escape(error)):
        NodeWatchSettings.from_mapping(values)


def test_the_trainer_config_carries_the_watch_and_validates_it():
    from hydra import compose, initialize_config_module

    from gr_vl_verl.trainer.main_ppo import CONFIG_NAME, SettingsError, validate_settings

    with initialize_config_module("gr_vl_verl.trainer.config", version_base=None):
        config = compose(CONFIG_NAME)
        bad = compose(CONFIG_NAME, overrides=["gr_vl.node_watch.grace_s=-1"])
    assert validate_settings(config).node_watch == NodeWatchSettings()
    with pytest.raises(SettingsError, match="gr_vl.node_watch.grace_s must be"):
        validate_settings(bad)


def test_the_pure_part_loads_no_heavy_module():
    from purity import heavy_modules_loaded

    assert heavy_modules_loaded(["gr_vl_verl.cluster.node_loss"], ("ray", "torch", "verl", "vllm")) == []


@pytest.mark.timeout(400)
def test_a_stuck_driver_stops_when_a_node_with_its_actors_is_lost_and_only_then(tmp_path):
    seen = run_driver("cluster_drivers:node_watch_on_stuck_drivers", str(tmp_path), timeout=360)
    assert seen["alive_after_other_node"], "a node without the job's actors stopped the driver"
    stuck = seen["stuck"]
    assert stuck["rc"] == 1, f"not ended by the watch within 60 s (rc {stuck['rc']}):\n{stuck['log'][-3000:]}"
    said = [line for line in stuck["log"].splitlines() if line.startswith("gr_vl_verl: ")]
    assert len(said) == 1 and re.fullmatch(
        rf"gr_vl_verl: Ray node {stuck['node']} at \S+ \(\S+\), which held Rank, was lost mid-run, so the run "
        r"stops here\. No checkpoint was complete yet: a rerun starts from step 0\.",
        said[0],
    ), stuck["log"][-3000:]
    deaf = seen["deaf"]
    assert "interrupt ignored" in deaf["log"] and deaf["rc"] == 1, deaf["log"][-3000:]
    assert f"gr_vl_verl: Ray node {deaf['node']} at " in deaf["log"]
    assert "(the driver did not end within 5 s)" in deaf["log"]
    assert seen["stop_ended"] == []


def test_tracker_name_is_verls():
    from verl.utils.checkpoint.checkpoint_manager import get_checkpoint_tracker_filename

    assert Path(get_checkpoint_tracker_filename("/x")).name == TRACKER
