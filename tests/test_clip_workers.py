"""The worker side of the clip push: verl 0.9.1's own actor worker receives the pushed loss and trains with it.

Real: ``ActorRolloutRefWorker.__init__`` and ``init_model`` (role ``actor``: it builds the worker's own
``partial(ppo_loss, ...)`` and its ``TrainingWorker``), ``ActorRolloutRefWorker.set_loss_fn`` /
``update_actor``, ``TrainingWorker.set_loss_fn`` / ``train_mini_batch`` / ``train_batch``,
``BaseEngine.train_batch``, a one-rank gloo process group, and the plugin's legacy trainer running verl's
``_update_actor``. Not real: the FSDP engine (it has no CPU device), replaced by :class:`RecordingEngine`
registered for the CPU under verl's ``fsdp``/``fsdp2`` backend names; the Ray worker group's one-rank dispatch, which is
a direct call on the worker here so that object identity can be checked; and the device verl's platform
probe reports (CUDA, as verl 0.9.1 has no CPU platform), set to ``cpu`` on the training worker.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from pathlib import Path

import pytest
import torch
import torch.distributed
from clip_helpers import RESPONSE_LENS, call_like_engine, compose_config, hand_loss, legacy_trainer, padded_batch
from verl.utils.metric.utils import Metric
from verl.workers.engine import BaseEngine, EngineRegistry
from verl.workers.engine_workers import ActorRolloutRefWorker
from verl.workers.utils.losses import ppo_loss

STEP, TOTAL = 2, 4  # linear from 0.2: eps(2) = 0.1


class RecordingEngine(BaseEngine):
    """The training engine the worker builds, minus the model: it records the loss function of every
    ``train_batch`` call and runs it on log-probs the test sets, as ``FSDPEngine.forward_backward_batch``
    runs it on the model's."""

    new_log_probs: torch.Tensor | None = None

    def __init__(self, model_config, engine_config, optimizer_config, checkpoint_config) -> None:
        self.engine_config = engine_config
        self.received: list = []
        self.mode = None

    def initialize(self) -> None:
        pass

    is_param_offload_enabled = False
    is_optimizer_offload_enabled = False

    def train_mode(self, **kwargs):
        return nullcontext()

    def train_batch(self, data, loss_function):
        self.received.append(loss_function)
        return super().train_batch(data, loss_function)  # verl's: zero_grad, forward_backward, step

    def forward_backward_batch(self, data, loss_function, forward_only=False):
        loss, metrics = call_like_engine(loss_function, data, self.new_log_probs)
        metrics = {k: v.aggregate() if isinstance(v, Metric) else v for k, v in metrics.items()}
        return {"loss": [loss], "metrics": {**metrics, "mfu": 0.0}, "model_output": {}}

    def optimizer_zero_grad(self) -> None:
        pass

    def optimizer_step(self) -> float:
        return 0.0

    def lr_scheduler_step(self) -> float:
        return 1e-6

    def get_data_parallel_size(self) -> int:
        return 1

    def get_data_parallel_rank(self) -> int:
        return 0

    def get_data_parallel_group(self):
        return None

    def is_mp_src_rank_with_outputs(self) -> bool:
        return True


class OneRankGroup:
    """``actor_rollout_wg`` for one rank: each call goes straight to the worker's registered method."""

    def __init__(self, worker: ActorRolloutRefWorker) -> None:
        self.worker = worker
        self.pushed: list = []

    def set_loss_fn(self, loss_fn) -> None:
        self.pushed.append(loss_fn)
        self.worker.set_loss_fn(loss_fn)

    def update_actor(self, data):
        return self.worker.update_actor(data)


@contextmanager
def built_actor_worker(tiny_model_dir, store: Path):
    """verl's actor worker, built by its own ``init_model`` on one CPU rank; on leaving, the gloo process group
    is destroyed and verl's engine registry is as it was."""
    registry = EngineRegistry._engines["language_model"]
    saved = {b: dict(registry[b]) for b in ("fsdp", "fsdp2")}  # restored below: other tests see verl's registry
    backends = [b for b in saved if "cpu" not in registry[b]]
    if backends:
        EngineRegistry.register(model_type="language_model", backend=backends, device="cpu")(RecordingEngine)
    env = {"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "0"}
    env["VERL_ENGINE_DEVICE"] = "cpu"  # verl's engine lookup names the device; its platform probe says cuda
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        try:
            torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
            config = compose_config(
                f"actor_rollout_ref.model.path={tiny_model_dir}",
                "actor_rollout_ref.actor.shuffle=false",  # one mini-batch in input order
                "actor_rollout_ref.actor.ppo_mini_batch_size=2",  # x rollout.n = 4 = the whole batch
                "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=4",
            )
            worker = ActorRolloutRefWorker(config.actor_rollout_ref, role="actor")
            worker.init_model()
            # verl 0.9.1 registers no CPU platform and falls back to CUDA: sum the loss on the CPU, and skip
            # the MFU estimate, which asks the CUDA device for its name (the engine reports an MFU of 0)
            worker.actor.device_name = "cpu"
            worker.actor.flops_counter = None
            yield config, worker
        finally:
            if torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()
            for b, engines in saved.items():
                registry[b].clear()
                registry[b].update(engines)


@pytest.fixture(scope="module")
def actor_worker(tiny_model_dir, tmp_path_factory):
    with built_actor_worker(tiny_model_dir, tmp_path_factory.mktemp("gloo") / "store") as built:
        yield built


def test_building_the_worker_leaves_no_process_group_and_verls_registry_as_it_was(tiny_model_dir, tmp_path):
    registry = EngineRegistry._engines["language_model"]
    before = {b: dict(registry[b]) for b in ("fsdp", "fsdp2")}
    with built_actor_worker(tiny_model_dir, tmp_path / "store") as (_, worker):
        assert isinstance(worker.actor.engine, RecordingEngine) and torch.distributed.is_initialized()
    assert not torch.distributed.is_initialized()
    assert {b: dict(registry[b]) for b in before} == before


def test_the_engine_trains_with_the_function_object_the_trainer_pushed(actor_worker) -> None:
    config, worker = actor_worker
    engine = worker.actor.engine
    assert isinstance(engine, RecordingEngine)
    own = worker.loss_fn  # what init_model built and gave the TrainingWorker
    assert own.func is ppo_loss and own.keywords["config"].clip_ratio_low == 0.2
    batch, new_lp = padded_batch()
    RecordingEngine.new_log_probs = new_lp
    group = OneRankGroup(worker)
    trainer = legacy_trainer(config, group, STEP)
    trainer.total_training_steps = TOTAL

    out = trainer._update_actor(batch)  # push, then verl's update_actor -> train_mini_batch -> train_batch

    (pushed,) = group.pushed
    assert worker.actor.loss_fn is pushed  # TrainingWorker.set_loss_fn stored it
    assert engine.received and all(fn is pushed for fn in engine.received)  # and the engine trained with it
    assert pushed is not own and pushed.func is ppo_loss
    eps = 0.2 * (TOTAL - STEP) / TOTAL
    assert pushed.keywords["config"].clip_ratio_low == pytest.approx(eps)
    assert pushed.keywords["config"].clip_ratio_high == pytest.approx(eps)
    metrics = out.meta_info["metrics"]
    want_loss, want_frac = hand_loss(eps, eps)
    assert metrics["actor/pg_clipfrac"] == [pytest.approx(want_frac)]
    assert metrics["actor/pg_loss"] == [pytest.approx(want_loss, rel=1e-5, abs=1e-6)]
    assert metrics["actor/clip_eps_low"] == pytest.approx(eps)
    # the range reported from inside the loss the engine ran, once per micro-batch
    assert metrics["actor/loss_clip_low"] == metrics["actor/loss_clip_high"] == [pytest.approx(eps)]
    assert want_frac != hand_loss(0.2, 0.2)[1]  # the worker's own clip range would have given another loss


def test_each_step_replaces_the_workers_loss(actor_worker) -> None:
    config, worker = actor_worker
    engine = worker.actor.engine
    batch, new_lp = padded_batch()
    RecordingEngine.new_log_probs = new_lp
    group = OneRankGroup(worker)
    trainer = legacy_trainer(config, group, 1)
    trainer.total_training_steps = TOTAL
    fracs, applied = [], []
    for step in (1, 3):
        trainer.global_steps = step
        engine.received.clear()
        metrics = trainer._update_actor(batch).meta_info["metrics"]
        fracs.append(metrics["actor/pg_clipfrac"][0])
        applied.append((metrics["actor/loss_clip_low"][0], metrics["actor/loss_clip_high"][0]))
        assert engine.received[-1] is group.pushed[-1]
    assert [fn.keywords["config"].clip_ratio_low for fn in group.pushed] == pytest.approx([0.15, 0.05])
    assert applied == [pytest.approx((0.15, 0.15)), pytest.approx((0.05, 0.05))]  # 0.2 * (4 - step) / 4
    assert fracs == pytest.approx([hand_loss(0.15, 0.15)[1], hand_loss(0.05, 0.05)[1]])
    assert sum(RESPONSE_LENS) == int(batch.batch["response_mask"].sum())
