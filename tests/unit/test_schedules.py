"""The lr schedules a run can name, against their written-out definitions."""

import math

import pytest

from ptft.finetune import optim


def test_cosine_warms_up_then_falls_by_half_a_cosine_to_its_floor():
    total, warmup, floor = 100, 20, 0.01
    cfg = {"schedule": "cosine", "min_lr_ratio": floor}
    values = [optim.lr_multiplier(s, total, warmup, cfg) for s in range(total)]
    assert values[:3] == pytest.approx([1 / 20, 2 / 20, 3 / 20])
    assert values[19] == pytest.approx(1.0) and values[20] == pytest.approx(1.0)
    for s in (20, 35, 60, 99):
        expected = floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * (s - warmup) / (total - warmup)))
        assert values[s] == pytest.approx(expected)
    assert min(values[20:]) >= floor and values[-1] == pytest.approx(floor, abs=5e-4)
    assert all(a >= b for a, b in zip(values[20:], values[21:], strict=False))


def test_linear_ends_at_its_floor_and_a_zero_floor_keeps_the_old_schedule():
    assert optim.linear(99, 100, 10, 0.0) == pytest.approx(1 / 90)
    assert optim.lr_multiplier(99, 100, 10, {"schedule": "linear"}) == optim.linear(99, 100, 10)
    assert optim.linear(100, 100, 10, 0.1) == pytest.approx(0.1)
    assert optim.constant(50, 100, 10, 0.5) == 1.0
