"""The clip schedules against hand-computed values (docs/method.md §3), and their validation."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest

from gr_vl_verl.trainer import clip_schedule
from gr_vl_verl.trainer.clip_schedule import ClipSchedule, decay_factor

S = 23  # ≈ 12,000 samples / 512 per step: the paper's run


@pytest.mark.parametrize(
    ("step", "expected"),
    # docs/method.md §3: the released code's cumulative product for S = 23.
    [(1, 0.191), (2, 0.175), (3, 0.152), (5, 0.098), (10, 0.011)],
)
def test_product_matches_the_original_code_values(step: int, expected: float) -> None:
    low, high = ClipSchedule(kind="product").eps(step, S)
    assert low == high
    assert round(low, 3) == expected


def test_product_is_the_in_place_update_of_the_original_trainer() -> None:
    # [C] ray_trainer.fit: global_step += 1; clip_ratio *= 1 - global_step / training_steps
    clip = 0.2
    for step in range(1, S + 1):
        clip *= 1 - step / S
        assert ClipSchedule(kind="product").eps(step, S)[0] == pytest.approx(clip, abs=1e-15)


@pytest.mark.parametrize(("step", "expected"), [(1, 0.191), (2, 0.183), (3, 0.174), (5, 0.157), (10, 0.113)])
def test_linear_matches_the_paper_values(step: int, expected: float) -> None:
    assert round(ClipSchedule().eps(step, S)[0], 3) == expected


@pytest.mark.parametrize(
    ("kind", "first", "middle", "last"),
    [
        # S = 10, eps = 0.2; first = step 1, middle = step 5, last = step 10
        ("linear", 0.2 * 9 / 10, 0.2 * 5 / 10, 0.0),
        ("product", 0.2 * 0.9, 0.2 * 0.9 * 0.8 * 0.7 * 0.6 * 0.5, 0.0),
        ("cosine", 0.1 * (1 + math.cos(math.pi / 10)), 0.1, 0.0),
        ("constant", 0.2, 0.2, 0.2),
    ],
)
def test_first_middle_last_step(kind: str, first: float, middle: float, last: float) -> None:
    sched = ClipSchedule(kind=kind)
    assert sched.eps(1, 10)[0] == pytest.approx(first)
    assert sched.eps(5, 10)[0] == pytest.approx(middle)
    assert sched.eps(10, 10)[0] == pytest.approx(last, abs=1e-12)


def test_step_one_is_the_first_update_not_the_start_value() -> None:
    # verl's global_steps is 1 during the first update, so even step 1 is already decayed.
    assert ClipSchedule().eps(1, 4) == pytest.approx((0.15, 0.15))
    with pytest.raises(ValueError, match="first training step is 1"):
        ClipSchedule().eps(0, 4)


def test_clip_higher_decays_both_bounds_by_the_same_factor() -> None:
    sched = ClipSchedule(eps_low=0.2, eps_high=0.28)
    low, high = sched.eps(6, 12)
    assert low == pytest.approx(0.1)
    assert high == pytest.approx(0.14)


def test_floor_bounds_both_sides() -> None:
    sched = ClipSchedule(kind="linear", eps_low=0.2, eps_high=0.3, floor=0.05)
    assert sched.eps(10, 10) == (0.05, 0.05)
    assert sched.eps(9, 10) == pytest.approx((0.05, 0.05))  # 0.02 and 0.03 are below the floor
    assert sched.eps(5, 10) == pytest.approx((0.1, 0.15))


def test_steps_past_the_horizon_keep_the_last_value() -> None:
    for kind in ("linear", "product", "cosine"):
        assert ClipSchedule(kind=kind, floor=0.01).eps(40, S) == (0.01, 0.01)
        assert decay_factor(kind, 40, S) == pytest.approx(0.0, abs=1e-12)


def test_total_steps_overrides_the_trainer_horizon() -> None:
    assert ClipSchedule(total_steps=10).eps(5, 1000)[0] == pytest.approx(0.1)
    assert ClipSchedule(total_steps=10).horizon(1000) == 10
    assert ClipSchedule().horizon(1000) == 1000


def test_schedules_are_monotone_and_within_bounds() -> None:
    for kind in ("linear", "product", "cosine"):
        values = [ClipSchedule(kind=kind).eps(s, 50)[0] for s in range(1, 51)]
        assert all(0 <= b <= a <= 0.2 for a, b in zip(values, values[1:], strict=False))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"eps_low": -0.1}, "eps_low must be a number in \\[0, 1\\)"),
        ({"eps_low": 1.0}, "eps_low must be a number in \\[0, 1\\)"),
        ({"eps_low": float("nan")}, "eps_low"),
        ({"eps_high": -0.2}, "eps_high must be a finite number >= 0"),
        ({"floor": -0.01}, "floor must be a finite number >= 0"),
        ({"floor": 0.25}, "floor \\(0.25\\) is above the starting clip range"),
        ({"eps_high": 0.1, "floor": 0.15}, "above the starting clip range"),
        ({"kind": "exponential"}, "kind must be one of"),
        ({"total_steps": 0}, "total_steps must be an integer >= 1"),
        ({"total_steps": 2.5}, "total_steps must be an integer >= 1"),
        ({"eps_low": True}, "eps_low"),
    ],
)
def test_bad_settings_are_rejected_with_the_key_named(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ClipSchedule(**kwargs)


def test_zero_total_training_steps_is_an_error() -> None:
    with pytest.raises(ValueError, match="total training steps must be an integer >= 1, got 0"):
        ClipSchedule().eps(1, 0)
    with pytest.raises(ValueError, match="unknown clip schedule kind"):
        decay_factor("bogus", 1, 10)


def test_from_mapping_rejects_unknown_keys() -> None:
    assert ClipSchedule.from_mapping({"kind": "cosine", "eps_low": 0.1}) == ClipSchedule(kind="cosine", eps_low=0.1)
    assert ClipSchedule.from_mapping(None) == ClipSchedule()
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['epsilon'\] in gr_vl.clip"):
        ClipSchedule.from_mapping({"epsilon": 0.2})


def test_module_imports_neither_torch_nor_verl() -> None:
    tree = ast.parse(Path(clip_schedule.__file__).read_text())
    imported = {
        (node.module if isinstance(node, ast.ImportFrom) else alias.name).split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert not imported & {"torch", "verl", "omegaconf", "ray"}, imported
