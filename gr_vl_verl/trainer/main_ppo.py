"""``python -m gr_vl_verl.trainer.main_ppo``: verl's PPO/GRPO entry point with the GuardReasoner-VL pieces.

The config (``config/gr_vl_trainer.yaml``) is verl's ``ppo_trainer`` plus the plugin's reward manager and a
``gr_vl:`` block, so a user passes exactly the overrides ``verl.trainer.main_ppo`` takes. The only code
difference is the trainer class the task runner builds: ``GRRayPPOTrainer`` on the legacy path
(``trainer.use_v1=false``) and, otherwise, the V1 trainer of ``trainer.v1.trainer_mode`` with the dynamic
clip (verl 0.9.1's default, which needs ``transfer_queue``).

Everything the plugin adds is checked on the driver before Ray starts (:func:`prepare`).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pprint import pprint

import hydra
import ray
from omegaconf import DictConfig, OmegaConf
from verl.trainer.main_ppo import TaskRunnerV1, run_ppo
from verl.trainer.main_ppo_v0 import BaseTaskRunner
from verl.trainer.ppo.utils import need_critic, need_reference_policy
from verl.utils.config import validate_config
from verl.utils.device import auto_set_device

from gr_vl_verl.cluster import node_watch
from gr_vl_verl.cluster.node_loss import LostNode, NodeWatchSettings, stop_message
from gr_vl_verl.cpu import config as cpu_config
from gr_vl_verl.cpu import selection as cpu_selection
from gr_vl_verl.cpu.pins import PinError
from gr_vl_verl.reward.manager import REGISTERED_NAME, GuardRewardManager, check_reward_model_settings
from gr_vl_verl.reward.score import RewardConfig
from gr_vl_verl.settings import gr_vl_block, section, select
from gr_vl_verl.trainer.clip_schedule import ClipSchedule
from gr_vl_verl.trainer.dynamic_clip import (
    GRRayPPOTrainer,
    bypass_mode_warning,
    clip_schedule_from,
    clip_warning,
    v1_trainer_cls,
)
from gr_vl_verl.trainer.replay_poll import ReplayPollSettings

logger = logging.getLogger(__name__)

CONFIG_NAME = "gr_vl_trainer"


class SettingsError(ValueError):
    """A bad ``gr_vl`` setting, or verl keys the method cannot run with: one line naming the key, before
    anything starts."""


@dataclass(frozen=True)
class PluginSettings:
    clip: ClipSchedule
    reward: RewardConfig
    node_watch: NodeWatchSettings
    replay_buffer: ReplayPollSettings


def validate_settings(config: DictConfig) -> PluginSettings:
    """Every section of the ``gr_vl`` block, validated, and the reward settings that would bypass the
    plugin's manager; :class:`SettingsError` names the bad key or value."""
    try:
        gr_vl_block(config)
        if select(config, "reward.reward_manager.name") in (GuardRewardManager.__name__, REGISTERED_NAME):
            check_reward_model_settings(config)
        response_length = select(config, "actor_rollout_ref.rollout.response_length")
        return PluginSettings(
            clip=clip_schedule_from(config),
            reward=RewardConfig.from_settings(section(config, "reward"), response_length),
            node_watch=NodeWatchSettings.from_mapping(section(config, "node_watch")),
            replay_buffer=ReplayPollSettings.from_mapping(section(config, "replay_buffer")),
        )
    except ValueError as e:
        raise SettingsError(str(e)) from None


def check_context_length(config: DictConfig) -> None:
    """vLLM's context (``rollout.max_model_len``) must hold the longest prompt plus the longest response.

    Below that, verl 0.9.1 quietly caps each request's ``max_tokens`` at what is left of the context, so long
    prompts would get shorter answers than ``response_length`` and the length reward would see a different
    budget. None (the model's own limit) is accepted.
    """
    rollout = config.actor_rollout_ref.rollout
    max_model_len = rollout.get("max_model_len")
    needed = int(rollout.prompt_length) + int(rollout.response_length)
    if max_model_len is not None and int(max_model_len) < needed:
        raise SettingsError(
            f"actor_rollout_ref.rollout.max_model_len={max_model_len} is below prompt + response length "
            f"({rollout.prompt_length} + {rollout.response_length} = {needed}); set it to at least {needed}"
        )


def prepare(config: DictConfig) -> PluginSettings:
    """Everything ``main`` does before Ray: the ``gr_vl`` block and the context length; the platform from
    ``trainer.device`` (the CPU one with its settings, every adapter's line checked; or a refusal when
    ``VERL_PLATFORM=cpu`` is left beside another device); then verl's device and config checks, then one warning
    each when the loss or the batching leaves the clip schedule nothing to act on, and when verl's bypass mode
    asks for a loss the workers will not run."""
    settings = validate_settings(config)
    check_context_length(config)
    try:
        on_cpu = cpu_selection.start(config.trainer.device)
    except (cpu_selection.SelectionError, PinError) as e:
        raise SettingsError(str(e)) from None
    if on_cpu:
        cpu_config.apply(config)
    auto_set_device(config)
    validate_config(config=config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
    for warning in (clip_warning(config), bypass_mode_warning(config)):
        if warning:
            logger.warning(warning)
    return settings


def trainer_class(config: DictConfig) -> type:
    """The trainer a task runner builds for this config."""
    if config.trainer.use_v1:
        return v1_trainer_cls(config.trainer.v1.trainer_mode)
    return GRRayPPOTrainer


class _LegacyTaskRunner(BaseTaskRunner):
    """verl's legacy task runner steps (``main_ppo_v0.TaskRunner.run``) building :class:`GRRayPPOTrainer`."""

    def run(self, config: DictConfig) -> None:
        from verl.trainer.ppo.utils import create_rl_dataset, create_rl_sampler
        from verl.utils.config import omega_conf_to_dataclass
        from verl.utils.dataset.rl_dataset import collate_fn

        print(f"TaskRunner hostname: {socket.gethostname()}, PID: {os.getpid()}")
        pprint(OmegaConf.to_container(config, resolve=True))
        OmegaConf.resolve(config)

        actor_rollout_cls, worker_group_cls = self.add_actor_rollout_worker(config)
        self.add_critic_worker(config)
        self.add_reward_model_resource_pool(config)
        self.add_teacher_model_resource_pool(config)
        self.add_ref_policy_worker(config, actor_rollout_cls)
        validate_config(
            config=config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config)
        )

        model_config = omega_conf_to_dataclass(config.actor_rollout_ref.model)
        tokenizer, processor = model_config.tokenizer, model_config.processor

        def dataset(files, is_train: bool, max_key: str):
            return create_rl_dataset(
                files,
                config.data,
                tokenizer,
                processor,
                is_train=is_train,
                max_samples=config.data.get(max_key, -1),
            )

        train_dataset = dataset(config.data.train_files, True, "train_max_samples")
        val_dataset = dataset(config.data.val_files, False, "val_max_samples")
        trainer = GRRayPPOTrainer(
            config=config,
            tokenizer=tokenizer,
            processor=processor,
            role_worker_mapping=self.role_worker_mapping,
            resource_pool_manager=self.init_resource_pool_mgr(config),
            ray_worker_group_cls=worker_group_cls,
            train_dataset=train_dataset,
            val_dataset=val_dataset,
            collate_fn=collate_fn,
            train_sampler=create_rl_sampler(config.data, train_dataset),
        )
        trainer.init_workers()
        trainer.fit()


class _V1TaskRunner(TaskRunnerV1.__ray_actor_class__):
    """verl's ``TaskRunnerV1.run`` building the V1 trainer with the dynamic clip; the agent-loop set-up is
    inherited unchanged."""

    def run(self, config: DictConfig) -> None:
        import transfer_queue as tq
        from verl.utils.logging_utils import configure_verl_logging

        configure_verl_logging()
        trainer_cls = trainer_class(config)
        config.transfer_queue.enable = True
        pprint(OmegaConf.to_container(config, resolve=True))
        OmegaConf.resolve(config)
        self.config = config

        tq.init(config.transfer_queue)
        succeeded = False
        try:
            self.trainer = trainer_cls(config=config)
            self.trainer.init()
            self.init_agent_loop_manager()
            self.trainer.fit(self.agent_loop_manager)
            succeeded = True
        finally:
            try:
                tracking = getattr(self.trainer, "logger", None)
                if tracking is not None:
                    tracking.finish(exit_code=0 if succeeded else 1)
            finally:
                tq.close()


GRTaskRunner = ray.remote(_LegacyTaskRunner)
GRTaskRunnerV1 = ray.remote(_V1TaskRunner)


def task_runner_class(config: DictConfig):
    return GRTaskRunnerV1 if config.trainer.use_v1 else GRTaskRunner


def node_loss_message(config: DictConfig) -> Callable[[list[LostNode]], str]:
    """The text said when a node is lost under this run: its checkpoint folder and resume setting."""
    trainer = config.trainer
    folder = trainer.get("default_local_dir")
    folder = os.path.abspath(folder) if folder else None

    def message(lost: list[LostNode]) -> str:
        return stop_message(lost, folder, trainer.get("resume_mode"), trainer.get("save_freq"))

    return message


@hydra.main(config_path="config", config_name=CONFIG_NAME, version_base=None)
def main(config: DictConfig) -> None:
    try:
        settings = prepare(config)
    except SettingsError as e:  # a bad setting: say which, without a hydra traceback
        raise SystemExit(f"gr_vl_verl: {e}") from None
    if not config.trainer.use_v1:
        logger.warning("trainer.use_v1=false: running verl's legacy RayPPOTrainer with the dynamic clip")
    # A Ray node lost under the run ends it at once, with one message naming the node and the checkpoint
    node_watch.run_watched(
        lambda: run_ppo(config, task_runner_class=task_runner_class(config)),
        settings.node_watch,
        node_loss_message(config),
    )


if __name__ == "__main__":
    main()
