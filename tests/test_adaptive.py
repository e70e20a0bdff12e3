"""The adaptive coefficient controller."""

import math

import pytest

from rspo.selfplay.adaptive import measure, update_coef


def test_measure_kl_and_length():
    assert measure("kl", [-1.0, -2.0], [-2.0, -4.0], [3, 5]) == pytest.approx(1.5)
    assert measure("length", [0, 0], [0, 0], [3, 5]) == pytest.approx(4.0)
    with pytest.raises(ValueError, match="allowed: kl, length"):
        measure("entropy", [], [], [])


def test_update_direction_and_clipping():
    assert update_coef(0.1, 2.0, 1.0) == pytest.approx(
        0.1 * math.e
    )  # above target: raise (clipped)
    assert update_coef(0.1, 0.5, 1.0) == pytest.approx(0.1 * math.exp(-0.5))  # below: lower
    assert update_coef(0.1, 1.0, 1.0) == pytest.approx(0.1)  # on target: keep
    assert update_coef(0.1, 100.0, 1.0) == pytest.approx(0.1 * math.e)
    with pytest.raises(ValueError):
        update_coef(0.1, 1.0, 0.0)
