"""A GRPO run's step count: the configured total capped by what the data gives, in every schedule that reads it."""

import pytest
from omegaconf import OmegaConf

from gr_vl_verl.trainer.clip_schedule import ClipSchedule
from gr_vl_verl.trainer.run_length import planned_steps


@pytest.mark.parametrize(
    ("configured", "batches", "epochs", "steps", "warns"),
    [(None, 2, 3, 6, False), (4, 2, 3, 4, False), (6, 2, 3, 6, False), (3, 2, 1, 2, True), (100, 5, 2, 10, True)],
)
def test_planned_steps(configured, batches, epochs, steps, warns):
    got, warning = planned_steps(configured, batches, epochs)
    assert got == steps and (warning is not None) == warns
    if warns:
        assert f"total_training_steps={configured}" in warning and f"= {steps}" in warning


def test_no_data_is_an_error():
    with pytest.raises(ValueError, match="at least one batch"):
        planned_steps(3, 0, 1)


def test_the_trainers_cap_total_steps_in_the_trainer_and_the_optimiser_config(capsys):
    """What ``GRRayPPOTrainer._create_dataloader`` and the V1 ``_init_dataloader`` call after verl's own: the
    seed-11 demo of before (3 steps asked, 2 batches of data, 1 epoch) now runs 2 steps, and the linear clip
    schedule reaches its end value at step 2."""
    from gr_vl_verl.trainer.dynamic_clip import DynamicClipMixin

    class Trainer(DynamicClipMixin):
        pass

    trainer = Trainer()
    trainer.config = OmegaConf.create({"trainer": {"total_training_steps": 3, "total_epochs": 1},
                                       "actor_rollout_ref": {"actor": {"optim": {"total_training_steps": 3}}},
                                       "critic": {"optim": {"total_training_steps": 3}}})  # fmt: skip
    trainer.total_training_steps = 3  # as verl set it
    trainer.cap_total_steps(batches_per_epoch=2, optim_steps_per_step=2)
    assert trainer.total_training_steps == 2
    assert trainer.config.actor_rollout_ref.actor.optim.total_training_steps == 4
    assert trainer.config.critic.optim.total_training_steps == 4
    assert "asks for more steps than the data gives" in capsys.readouterr().out
    schedule = ClipSchedule(kind="linear", eps_low=0.2, eps_high=0.2)
    assert [schedule.eps(s, trainer.total_training_steps)[0] for s in (1, 2)] == pytest.approx([0.1, 0.0])
    trainer.cap_total_steps(batches_per_epoch=5)  # enough data: nothing changes
    assert trainer.total_training_steps == 2


def test_later_stages_take_the_last_checkpoint_the_run_wrote(tmp_path):
    from gr_vl_verl.trainer.launch import TrainingRunError, last_step

    with pytest.raises(TrainingRunError, match="wrote no checkpoint"):
        last_step(tmp_path)
    for step in (2, 10, 4):
        (tmp_path / f"global_step_{step}").mkdir()
    assert last_step(tmp_path) == 10
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("4")  # verl's marker wins over folder names
    assert last_step(tmp_path) == 4
