"""Pareto dominance and hypervolume against brute force, known values and Monte-Carlo estimates."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from nas.dominance import (
    default_reference,
    dominates,
    hypervolume,
    hypervolume_curve,
    non_dominated,
    to_minimization,
)


def brute_non_dominated(points: np.ndarray, directions: list[str]) -> list[int]:
    q = to_minimization(points, directions)
    keep = []
    for i, p in enumerate(q):
        if np.isnan(p).any():
            continue
        if not any(
            not np.isnan(o).any() and np.all(o <= p) and np.any(o < p) for j, o in enumerate(q) if j != i
        ):
            keep.append(i)
    return keep


def exact_hv_inclusion_exclusion(points: np.ndarray, directions: list[str], reference: np.ndarray) -> float:
    """Union of boxes by inclusion-exclusion: exact, exponential, fine for N <= 8."""
    q = to_minimization(points, directions)
    r = to_minimization(reference[None, :], directions)[0]
    q = q[np.all(q < r, axis=1)]
    total = 0.0
    for k in range(1, len(q) + 1):
        for subset in itertools.combinations(range(len(q)), k):
            corner = q[list(subset)].max(axis=0)  # intersection of boxes [corner, r]
            total += (-1) ** (k + 1) * float(np.prod(r - corner))
    return total


@pytest.mark.parametrize("m", [2, 3, 4])
def test_non_dominated_matches_brute_force(m: int) -> None:
    rng = np.random.default_rng(m)
    for trial in range(60):
        n = int(rng.integers(0, 40))
        pts = rng.integers(0, 6, size=(n, m)).astype(float)  # small integers: many ties and duplicates
        if n and trial % 3 == 0:
            pts[rng.integers(0, n), rng.integers(0, m)] = np.nan
        directions = [str(d) for d in rng.choice(["maximize", "minimize"], size=m)]
        assert non_dominated(pts, directions).tolist() == brute_non_dominated(pts, directions)


def test_duplicates_are_all_kept_and_nan_rows_dropped() -> None:
    pts = np.array([[1.0, 1.0], [1.0, 1.0], [2.0, 2.0], [0.5, 1.5], [np.nan, 0.0]])
    assert non_dominated(pts, ["maximize", "minimize"]).tolist() == [0, 1, 2]
    assert non_dominated([[1, None], [0, 0]], ["minimize", "minimize"]).tolist() == [1]
    assert non_dominated(np.empty((0, 2)), ["minimize", "minimize"]).tolist() == []
    assert dominates([2, 0], [1, 1], ["maximize", "minimize"])
    assert not dominates([1, 1], [1, 1], ["maximize", "minimize"])


def test_bad_directions() -> None:
    with pytest.raises(ValueError, match="one per objective"):
        non_dominated([[1, 2]], ["minimize"])
    with pytest.raises(ValueError, match="'up'"):
        non_dominated([[1, 2]], ["minimize", "up"])


def test_hypervolume_known_values() -> None:
    mm = ["minimize", "minimize"]
    assert hypervolume([[1, 1]], mm, [2, 2]) == pytest.approx(1.0)
    # staircase to (4, 4): strips of width 3, 2 and 1, each 1 high
    pts = [[1, 3], [2, 2], [3, 1]]
    assert hypervolume(pts, mm, [4, 4]) == pytest.approx(3 * 1 + 2 * 1 + 1 * 1)
    # a dominated point and a point outside the reference change nothing
    assert hypervolume([*pts, [3, 3], [5, 0]], mm, [4, 4]) == pytest.approx(6.0)
    # maximisation mirrors minimisation
    assert hypervolume([[0.9, 1e-3]], ["maximize", "minimize"], [0.5, 2e-3]) == pytest.approx(0.4 * 1e-3)
    # 3-D boxes 2x2x1 and 1x1x2 overlapping in a unit cube: 4 + 2 - 1
    assert hypervolume([[0, 0, 1], [1, 1, 0]], ["minimize"] * 3, [2, 2, 2]) == pytest.approx(5.0)
    assert hypervolume(np.empty((0, 3)), ["minimize"] * 3, [1, 1, 1]) == 0.0


@pytest.mark.parametrize("m", [2, 3, 4])
def test_hypervolume_matches_inclusion_exclusion(m: int) -> None:
    rng = np.random.default_rng(10 + m)
    for _ in range(40):
        n = int(rng.integers(1, 8))
        pts = rng.random((n, m))
        directions = [str(d) for d in rng.choice(["maximize", "minimize"], size=m)]
        ref = default_reference(pts, directions)
        expected = exact_hv_inclusion_exclusion(pts, directions, ref)
        assert hypervolume(pts, directions, ref) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_hypervolume_3d_against_monte_carlo() -> None:
    rng = np.random.default_rng(7)
    pts = rng.random((60, 3))
    ref = np.ones(3)
    exact = hypervolume(pts, ["minimize"] * 3, ref)
    samples = rng.random((200_000, 3))
    covered = np.zeros(len(samples), dtype=bool)
    for p in pts:
        covered |= np.all(samples >= p, axis=1)
    estimate = covered.mean()
    stderr = np.sqrt(estimate * (1 - estimate) / len(samples))
    assert abs(exact - estimate) < 5 * stderr


def test_hypervolume_curve_is_monotone_and_ends_at_total() -> None:
    rng = np.random.default_rng(3)
    pts = rng.random((50, 3))
    pts[5] = np.nan
    dirs = ["maximize", "minimize", "minimize"]
    ref = default_reference(pts, dirs)
    curve = hypervolume_curve(pts, dirs, ref)
    assert len(curve) == 50
    assert all(b >= a for a, b in zip(curve, curve[1:], strict=False))
    for i in (0, 10, 49):
        assert curve[i] == pytest.approx(hypervolume(pts[: i + 1], dirs, ref))


def test_default_reference_is_just_worse_than_every_point() -> None:
    pts = np.array([[0.9, 1.0], [0.5, 3.0], [np.nan, 100.0]])
    ref = default_reference(pts, ["maximize", "minimize"])
    assert ref[0] == pytest.approx(0.5 - 0.04) and ref[1] == pytest.approx(3.0 + 0.2)
    assert default_reference([[2.0, 0.0]], ["minimize", "minimize"]).tolist() == pytest.approx([2.2, 0.1])
    with pytest.raises(ValueError, match="NaN"):
        default_reference([[np.nan, 1.0]], ["minimize", "minimize"])
