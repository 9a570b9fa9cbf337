"""Run verl's SFT trainer and the plugin's GRPO entry point as child processes, as a user's shell would.

The demo, the end-to-end tests and the benchmarks launch the real trainers this way: ``torchrun -m
verl.trainer.sft_trainer`` with ``gr_vl_sft.yaml``, and ``python -m gr_vl_verl.trainer.main_ppo``. Each run gets
a time limit, writes its whole log to a file, and logs its metrics through verl's own file logger
(``trainer.logger=[console,file]``, ``VERL_FILE_LOGGER_PATH``: one JSON line per step). A failed run raises
:class:`TrainingRunError` with the tail of that log. The argument lists hold toy sizes only when asked for;
the method's settings come from the yaml configs, as for a cluster run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gr_vl_verl.checkpoints import last_checkpoint
from gr_vl_verl.process_group import wait_group
from gr_vl_verl.trainer.metrics_file import read_metrics

#: How much of a failed run's log an error shows.
LOG_TAIL_LINES = 60


class TrainingRunError(RuntimeError):
    """A trainer run exited non-zero or ran out of time; the message ends with the tail of its log."""


@dataclass(frozen=True)
class RunResult:
    log: Path
    metrics_file: Path
    seconds: float

    def metrics(self) -> dict[int, dict[str, Any]]:
        """Metrics per step, from verl's file logger (later lines for a step update earlier ones)."""
        return read_metrics(self.metrics_file)


def sft_command(
    model: Path,
    train: Path,
    out: Path,
    steps: int,
    *,
    lr: float = 3e-3,
    batch_size: int = 1,
    max_length: int = 1024,
    device: str | None = "cpu",
    extra: Sequence[str] = (),
) -> list[str]:
    """``torchrun -m verl.trainer.sft_trainer`` with the plugin's R-SFT config, one process.

    One row per step by default (toy size: a step is a fraction of a second on a CPU); a batch may mix text
    and image rows (the config's dataset class, :mod:`gr_vl_verl.trainer.sft_dataset`). ``device=None`` leaves
    ``trainer.device`` to the config (``extra`` may name another one with ``--config-path``/``--config-name``).
    """
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
        "-m", "verl.trainer.sft_trainer",
        "--config-path=pkg://gr_vl_verl.trainer.config", "--config-name=gr_vl_sft",
        *([f"trainer.device={device}"] if device else []), f"model.path={model}",
        f"data.train_files={train}", "data.val_files=null",
        f"data.train_batch_size={batch_size}", "data.micro_batch_size_per_gpu=1", f"data.max_length={max_length}",
        "data.num_workers=0", "model.enable_gradient_checkpointing=false", "engine.dtype=float32",
        f"optim.lr={lr}", "optim.lr_scheduler_type=constant",
        f"trainer.total_training_steps={steps}", "trainer.total_epochs=1000", f"trainer.save_freq={steps}",
        "trainer.test_freq=-1", "trainer.n_gpus_per_node=1", "trainer.logger=[console,file]",
        f"trainer.default_local_dir={out}", "trainer.project_name=gr_vl", "trainer.experiment_name=r_sft",
        *hydra_dir(out), *extra,
    ]  # fmt: skip


def grpo_command(
    model: Path,
    train: Path,
    val: Path,
    out: Path,
    steps: int,
    *,
    prompts: int = 2,
    n: int = 4,
    response_length: int = 64,
    prompt_length: int = 1024,
    lr: float = 1e-4,
    val_samples: int = 4,
    micro_batch: int = 1,
    image_pixels: tuple[int, int] = (784, 12544),
    device: str = "cpu",
    extra: Sequence[str] = (),
) -> list[str]:
    """``python -m gr_vl_verl.trainer.main_ppo`` at the given sizes, one rank, one vLLM server.

    Each prompt is its own mini-batch (``ppo_mini_batch_size=1``), so a step makes ``prompts`` updates and the
    clip range has ratios to act on; the Hugging Face folder of the actor is saved with each checkpoint.
    ``micro_batch`` answers go through the model at once (in the update and both log-prob passes): fewer,
    larger passes, and verl's token-mean loss is taken over them together rather than answer by answer (the
    demo's ``n`` = 4 on two CPU cores: the update 9-11 s a step instead of 12-14 s).
    """
    return [
        sys.executable, "-m", "gr_vl_verl.trainer.main_ppo", f"trainer.device={device}",
        f"data.train_files={train}", f"data.val_files={val}", f"data.train_batch_size={prompts}",
        f"data.max_prompt_length={prompt_length}", f"data.max_response_length={response_length}",
        f"data.val_max_samples={val_samples}", "data.dataloader_num_workers=0",
        f"data.mm_processor_kwargs.min_pixels={image_pixels[0]}",
        f"data.mm_processor_kwargs.max_pixels={image_pixels[1]}",
        f"actor_rollout_ref.model.path={model}", "actor_rollout_ref.model.enable_gradient_checkpointing=false",
        "actor_rollout_ref.actor.ppo_mini_batch_size=1",
        f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={micro_batch}",
        "actor_rollout_ref.actor.use_dynamic_bsz=false", f"actor_rollout_ref.actor.optim.lr={lr}",
        "actor_rollout_ref.actor.checkpoint.save_contents=[model,optimizer,extra,hf_model]",
        f"actor_rollout_ref.rollout.n={n}", "actor_rollout_ref.rollout.tensor_model_parallel_size=1",
        f"actor_rollout_ref.rollout.max_model_len={prompt_length + response_length}",
        f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={micro_batch}",
        f"actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu={micro_batch}",
        "trainer.n_gpus_per_node=1", "trainer.nnodes=1", f"trainer.total_training_steps={steps}",
        "trainer.logger=[console,file]", f"trainer.test_freq={steps}", f"trainer.save_freq={steps}",
        "trainer.val_before_train=false", f"trainer.default_local_dir={out / 'checkpoints'}",
        "trainer.project_name=gr_vl", "trainer.experiment_name=grpo",
        *hydra_dir(out), *extra,
    ]  # fmt: skip


def hydra_dir(out: Path) -> list[str]:
    """Hydra's run folder inside the run's output: by default it is ``outputs/<date>/<time>`` under the
    current directory, which would litter whatever folder the trainer was started from."""
    return [f"hydra.run.dir={Path(out) / 'hydra'}"]


@dataclass
class Started:
    """A trainer run under way (:func:`start`): its process, which leads a process group of its own."""

    proc: subprocess.Popen
    log: Path
    metrics_file: Path
    started: float

    def wait(self, timeout: float, name: str) -> RunResult:
        """Wait up to ``timeout`` s; the whole group is killed past it (:class:`TrainingRunError` either way when
        the run did not end with 0)."""
        import time

        returncode = wait_group(self.proc, timeout)
        if returncode is None:
            raise TrainingRunError(f"{name} ran past {timeout:.0f} s; log {self.log}:\n{log_tail(self.log)}")
        if returncode != 0:
            raise TrainingRunError(f"{name} exited {returncode}; log {self.log}:\n{log_tail(self.log)}")
        return RunResult(log=self.log, metrics_file=self.metrics_file, seconds=time.perf_counter() - self.started)


def start(
    argv: Sequence[str], out: Path, name: str, env: dict[str, str] | None = None, metrics: Path | None = None
) -> Started:
    """Start ``argv`` with its log in ``out/<name>.log`` and its metrics in ``metrics`` (by default
    ``out/<name>_metrics.jsonl``; the demo keeps them beside the run's checkpoints, for ``gr-vl curves``), in a
    process group of its own."""
    import time

    out.mkdir(parents=True, exist_ok=True)
    log = out / f"{name}.log"
    metrics = Path(metrics) if metrics is not None else out / f"{name}_metrics.jsonl"
    metrics.parent.mkdir(parents=True, exist_ok=True)
    environ = {
        **os.environ,
        "VERL_FILE_LOGGER_PATH": str(metrics),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "WANDB_MODE": "disabled",
        "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled"),
        **(env or {}),
    }
    argv = [*argv, *worker_env_overrides(argv, environ)]
    started = time.perf_counter()
    with log.open("wb") as fh:
        proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, env=environ, start_new_session=True)
    return Started(proc=proc, log=log, metrics_file=metrics, started=started)


def run(
    argv: Sequence[str],
    out: Path,
    name: str,
    timeout: float,
    env: dict[str, str] | None = None,
    metrics: Path | None = None,
) -> RunResult:
    """:func:`start`, then wait up to ``timeout`` s. The whole process group is killed on a timeout, and
    whatever of it outlives a normal exit too."""
    return start(argv, out, name, env, metrics).wait(timeout, name)


#: What :func:`run` sets for the run and verl reads inside Ray's workers (its file logger is in the task runner).
WORKER_ENV = ("VERL_FILE_LOGGER_PATH", "HF_HUB_OFFLINE", "TOKENIZERS_PARALLELISM", "WANDB_MODE")


def worker_env_overrides(argv: Sequence[str], environ: dict[str, str]) -> list[str]:
    """For a GRPO run that joins a running Ray cluster (``RAY_ADDRESS``), :data:`WORKER_ENV` as overrides of
    ``ray_kwargs.ray_init.runtime_env.env_vars``; nothing otherwise.

    A Ray worker gets the environment of its node's ``ray start``, not the driver's. When the driver starts Ray
    itself its nodes inherit the driver's environment; on a cluster started before, the run's metrics file
    (``VERL_FILE_LOGGER_PATH``) would otherwise be opened under the task runner's working directory.
    """
    if "gr_vl_verl.trainer.main_ppo" not in argv or not environ.get("RAY_ADDRESS"):
        return []
    key = "ray_kwargs.ray_init.runtime_env.env_vars"
    # quoted: Ray takes only strings there, and hydra would read 1 as a number
    return [f"++{key}.{name}='{_quoted(environ[name])}'" for name in WORKER_ENV if name in environ]


def _quoted(value: str) -> str:
    return value.replace("'", "\\'")


def log_tail(log: Path, lines: int = LOG_TAIL_LINES) -> str:
    text = log.read_text(errors="replace").splitlines() if log.exists() else []
    return "\n".join(text[-lines:])


def last_step(checkpoints: Path) -> int:
    """The step of the last checkpoint a run wrote: verl's tracker where it wrote one (:func:`last_checkpoint`),
    else the highest ``global_step_<N>`` folder. A run can end before its configured step count (the data ran
    out), so later stages look here rather than at the step they asked for."""
    step = last_checkpoint(checkpoints)
    if step is not None:
        return step
    steps = [int(p.name.removeprefix("global_step_")) for p in Path(checkpoints).glob("global_step_*")
             if p.name.removeprefix("global_step_").isdigit()]  # fmt: skip
    if not steps:
        raise TrainingRunError(f"{checkpoints}: the run wrote no checkpoint")
    return max(steps)


def hf_folder(checkpoints: Path, step: int, actor: bool) -> Path:
    """The Hugging Face folder verl saved at ``step`` (GRPO keeps it under ``actor/``)."""
    base = checkpoints / f"global_step_{step}"
    return (base / "actor" / "huggingface") if actor else (base / "huggingface")
