"""A Ray node lost under a training run: which node, what of the run it held, and what to do next. Pure Python.

A run spread over nodes cannot go on without one of them: FSDP's ranks are fixed at start, and a rank on a
lost node leaves the others waiting in a collective (gloo's or NCCL's timeout is 30 minutes by default), or
the run ends with Ray's ``ActorUnavailableError``, which names an actor id, not the node. The driver-side watch
(:mod:`gr_vl_verl.cluster.node_watch`) notices the node's loss in Ray's node table and stops the run at once;
this module decides what counts as lost and writes the one message the user reads: the node, the run's
actors it held, the last complete checkpoint, and the command that continues from it.

``gr_vl.node_watch`` (``gr_vl_trainer.yaml``) configures it: :class:`NodeWatchSettings`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gr_vl_verl.checkpoints import last_checkpoint
from gr_vl_verl.settings import from_block, is_seconds


@dataclass(frozen=True)
class NodeWatchSettings:
    """``gr_vl.node_watch``.

    ``poll_s``: how often the driver reads Ray's node and actor tables. ``confirm_s``: when the run fails with
    a Ray error first (the task runner itself was on the lost node), how long to wait for Ray to declare a
    node dead before passing the error on unchanged (Ray's default health check needs up to 15 s). ``grace_s``:
    once a loss is seen, how long the driver gets to end on its own before the process exits anyway.
    """

    enable: bool = True
    poll_s: float = 1.0
    confirm_s: float = 30.0
    grace_s: float = 60.0

    def __post_init__(self) -> None:
        if not isinstance(self.enable, bool):
            raise ValueError(f"gr_vl.node_watch.enable must be true or false, got {self.enable!r}")
        for name in ("poll_s", "confirm_s", "grace_s"):
            if not is_seconds(value := getattr(self, name)):
                raise ValueError(f"gr_vl.node_watch.{name} must be a number of seconds > 0, got {value!r}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> NodeWatchSettings:
        """From the ``gr_vl.node_watch`` block; unknown keys are an error."""
        return from_block(cls, values, "gr_vl.node_watch")


@dataclass(frozen=True)
class LostNode:
    node_id: str
    address: str
    hostname: str
    #: The run's live actors on the node when it was last seen alive, by class: (class, count), most first.
    actors: tuple[tuple[str, int], ...]

    def describe(self) -> str:
        held = ", ".join(f"{name} x{count}" if count > 1 else name for name, count in self.actors) or "none"
        where = " ".join(filter(None, [self.address, f"({self.hostname})" if self.hostname else ""]))
        return f"Ray node {self.node_id} at {where or 'an unknown address'}, which held {held}"


def actors_by_node(actors: Iterable[Mapping[str, Any]]) -> dict[str, Counter[str]]:
    """The live actors of Ray's actor table (``State`` ALIVE), counted by class on each node id."""
    held: dict[str, Counter[str]] = {}
    for actor in actors:
        if actor.get("State") != "ALIVE":
            continue
        node = (actor.get("Address") or {}).get("NodeID")
        if node:
            held.setdefault(node, Counter())[_class_name(actor.get("ActorClassName", ""))] += 1
    return held


def _class_name(name: str) -> str:
    """``ray::_V1TaskRunner`` or a dotted path as its last part."""
    return name.rsplit(".", 1)[-1].removeprefix("ray::") or "an actor"


def lost_nodes(held: Mapping[str, Counter[str]], nodes: Iterable[Mapping[str, Any]]) -> list[LostNode]:
    """Nodes that held the run's actors (``held``, from the last poll) and are no longer alive in Ray's node
    table (``ray.nodes()``: ``NodeID``, ``Alive``, ``NodeManagerAddress``, ``NodeManagerHostname``). A node
    missing from the table counts as lost."""
    table = {n.get("NodeID"): n for n in nodes}
    lost = []
    for node_id, classes in held.items():
        info = table.get(node_id)
        if info is not None and info.get("Alive"):
            continue
        info = info or {}
        lost.append(
            LostNode(
                node_id=node_id,
                address=str(info.get("NodeManagerAddress") or ""),
                hostname=str(info.get("NodeManagerHostname") or ""),
                actors=tuple(sorted(classes.items(), key=lambda kv: (-kv[1], kv[0]))),
            )
        )
    return sorted(lost, key=lambda n: n.node_id)


def stop_message(
    lost: list[LostNode], checkpoint_dir: str | Path | None, resume_mode: str | None, save_freq: int | None
) -> str:
    """What the driver says when it stops for a lost node: the node(s), the checkpoint, how to continue."""
    nodes = "; ".join(n.describe() for n in lost)
    head = f"{nodes}, {'was' if len(lost) == 1 else 'were'} lost mid-run, so the run stops here."
    step = last_checkpoint(checkpoint_dir)
    if step is None:
        where = f" in {checkpoint_dir}" if checkpoint_dir else ""
        every = f" (trainer.save_freq={save_freq})" if save_freq is not None else ""
        return f"{head} No checkpoint was complete yet{where}{every}: a rerun starts from step 0."
    saved = f" The last complete checkpoint is step {step} ({Path(checkpoint_dir) / f'global_step_{step}'})."
    if resume_mode == "auto":
        how = (
            f" Once the cluster has its nodes again, rerun the same command: trainer.resume_mode=auto continues "
            f"from step {step}, the clip schedule with it."
        )
    else:
        how = (
            f" trainer.resume_mode={resume_mode}: rerun with trainer.resume_mode=auto (or resume_path) to continue "
            f"from step {step} once the cluster has its nodes again."
        )
    return head + saved + how
