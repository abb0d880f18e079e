"""The noise-aware dominance rule (nas/noise.py) on synthetic readings: tied, clearly apart, one-sided."""

from __future__ import annotations

import numpy as np
import pytest

from nas.dominance import non_dominated
from nas.noise import Z, half_width, may_dominate, noisy_front, surely_dominates, tied_with

DIRS = ["maximize", "minimize"]  # accuracy, J/sample


def widths(points: list[list[float]], cv: float, n: int = 3) -> list[list[float]]:
    """Zero width on accuracy, the 95% interval of a CV-``cv`` mean of ``n`` windows on J/sample."""
    return [[0.0, half_width(e, cv, n)] for _, e in points]


def test_half_width_is_the_95_percent_interval_of_the_mean() -> None:
    assert half_width(2.0, 0.1, 4) == pytest.approx(2.0 * Z * 0.1 / 2)
    assert half_width(2.0, None, 4) == half_width(2.0, 0.1, None) == half_width(None, 0.1, 4) == 0.0
    assert half_width(2.0, float("nan"), 4) == 0.0


def test_energies_apart_by_less_than_the_noise_are_tied() -> None:
    # 2% apart in J/sample with a 7% CV over 3 windows: the intervals (+-7.9%) overlap
    pts = [[0.80, 1.00], [0.80, 1.02]]
    front = noisy_front(pts, widths(pts, 0.07), DIRS)
    assert front == {0: False, 1: False}  # both stay, both tied
    assert list(non_dominated(np.array(pts), DIRS)) == [0]  # plain dominance drops trial 1
    assert tied_with(0, pts, widths(pts, 0.07), DIRS) == [1] and tied_with(1, pts, widths(pts, 0.07), DIRS) == [0]


def test_energies_clearly_apart_dominate_as_usual() -> None:
    pts = [[0.80, 1.00], [0.80, 1.50]]
    assert noisy_front(pts, widths(pts, 0.07), DIRS) == {0: True}


def test_one_sided_better_accuracy_does_not_remove_a_possibly_cheaper_trial() -> None:
    # trial 0 is more accurate; trial 1 is 2% dearer by the means, within the noise: it may be cheaper
    pts = [[0.90, 1.00], [0.70, 1.02]]
    w = widths(pts, 0.07)
    lo_hi = (np.array([[-0.90, 1.0 - w[0][1]], [-0.70, 1.02 - w[1][1]]]),
             np.array([[-0.90, 1.0 + w[0][1]], [-0.70, 1.02 + w[1][1]]]))
    assert not surely_dominates(0, 1, *lo_hi) and may_dominate(0, 1, *lo_hi) and not may_dominate(1, 0, *lo_hi)
    assert noisy_front(pts, w, DIRS) == {0: True, 1: False}  # 0 is clear; 1 is tied with it
    # with no noise the same points are plain dominance
    assert noisy_front(pts, widths(pts, 0.0), DIRS) == {0: True}


def test_missing_values_never_stand_and_duplicates_tie() -> None:
    pts = [[0.8, 1.0], [0.8, 1.0], [float("nan"), 0.1]]
    assert noisy_front(pts, widths([[0.8, 1.0], [0.8, 1.0], [0.0, 0.1]], 0.0), DIRS) == {0: True, 1: True}


@pytest.mark.parametrize("seed", range(5))
def test_a_clear_member_keeps_its_place_when_remeasured_within_its_noise(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, cv, windows = 12, 0.05, 3
    acc = rng.uniform(0.5, 0.9, n)
    energy = rng.uniform(1.0, 3.0, n)
    pts = np.column_stack([acc, energy])
    w = np.array(widths(pts.tolist(), cv, windows))
    front = noisy_front(pts, w, DIRS)
    assert set(non_dominated(pts, DIRS)) <= set(front)  # contains the plain front
    clear = [i for i, c in front.items() if c]
    assert clear
    for _ in range(20):  # re-measure everything inside its interval
        again = pts.copy()
        again[:, 1] = energy + rng.uniform(-1, 1, n) * w[:, 1]
        assert set(clear) <= set(non_dominated(again, DIRS))
