"""Noise-aware Pareto dominance: a difference smaller than the measurement noise is no difference.

Every energy reading keeps the coefficient of variation (CV) of its windows' J/sample and how many windows
it averaged. Its **interval** is the 95% confidence interval of that mean, ``value * (1 +- Z * cv /
sqrt(n_windows))`` with ``Z = 1.96`` (:func:`half_width`). Objectives without a noise model (accuracy,
FLOPs, size) have zero-width intervals and compare exactly, as in :mod:`nas.dominance`.

The rule (all objectives turned into minimisation):

* ``a`` **surely dominates** ``b`` when, whatever the true values inside the intervals, ``a`` dominates
  ``b``: ``hi(a) <= lo(b)`` in every objective and ``hi(a) < lo(b)`` in at least one. Only sure dominance
  removes a trial from the front, so the noise-aware front holds every trial that could be on the true
  front (it contains the plain front).
* ``a`` **may dominate** ``b`` when some values inside the intervals make ``a`` dominate ``b``:
  ``lo(a) <= hi(b)`` in every objective and ``lo(a) < hi(b)`` in at least one.
* A front member is **clear** when no other trial may dominate it: re-measuring within the noise cannot
  take its place. Otherwise it is **tied within noise** (with the trials that may dominate it), and more
  windows narrow the intervals until the tie is settled one way or the other.

With every half-width 0 the rule is plain dominance, and every member of a front without duplicates is clear.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from nas.dominance import to_minimization

__all__ = ["Z", "NOISY_OBJECTIVES", "half_width", "widths", "surely_dominates", "may_dominate", "noisy_front", "tied_with"]

#: The normal quantile of a two-sided 95% interval.
Z = 1.96
#: Objectives measured with a CV (a reading's windows); the others compare exactly.
NOISY_OBJECTIVES = ("energy_per_sample_j", "energy_per_sample_net_j")


def half_width(value: float | None, cv: float | None, n_windows: int | None) -> float:
    """Half the 95% interval of a mean of ``n_windows`` windows with coefficient of variation ``cv``.

    0 when the CV or the window count is unknown (the value then compares exactly) or the value is missing.
    """
    if value is None or cv is None or not n_windows or n_windows < 1:
        return 0.0
    if not (math.isfinite(value) and math.isfinite(cv)):
        return 0.0
    return abs(value) * Z * abs(cv) / math.sqrt(n_windows)


def widths(values: Mapping[str, Any], cv: float | None, n_windows: int | None, names: Sequence[str]) -> list[float]:
    """Half-widths of a trial's ``names`` values: the noise interval of measured energy, else 0 (exact)."""
    return [half_width(values.get(name), cv, n_windows) if name in NOISY_OBJECTIVES else 0.0 for name in names]


def _bounds(points: ArrayLike, widths: ArrayLike, directions: Sequence[str]) -> tuple[NDArray[np.float64], ...]:
    q = to_minimization(points, directions)
    w = np.abs(np.asarray(widths, dtype=np.float64).reshape(q.shape))
    return q - w, q + w


def surely_dominates(a: int, b: int, lo: NDArray[np.float64], hi: NDArray[np.float64]) -> bool:
    """Row ``a`` dominates row ``b`` for every value inside the intervals (``lo``/``hi``: minimisation form)."""
    if np.isnan(lo[a]).any() or np.isnan(lo[b]).any():
        return False
    return bool(np.all(hi[a] <= lo[b]) and np.any(hi[a] < lo[b]))


def may_dominate(a: int, b: int, lo: NDArray[np.float64], hi: NDArray[np.float64]) -> bool:
    """Row ``a`` dominates row ``b`` for some values inside the intervals."""
    if np.isnan(lo[a]).any() or np.isnan(lo[b]).any():
        return False
    return bool(np.all(lo[a] <= hi[b]) and np.any(lo[a] < hi[b]))


def noisy_front(points: ArrayLike, widths: ArrayLike, directions: Sequence[str]) -> dict[int, bool]:
    """The noise-aware front: ``row index -> clear`` for every row no other row surely dominates.

    Args:
        points: ``(N, M)`` objective values (NaN: missing; such a row is never on the front).
        widths: ``(N, M)`` half-widths of the values' intervals (0 for exact objectives).
        directions: ``"maximize"``/``"minimize"`` per column.

    Returns:
        Each front row, with True when it is clear (no other row may dominate it), False when it is tied
        within noise.
    """
    lo, hi = _bounds(points, widths, directions)
    n = lo.shape[0]
    rows = [i for i in range(n) if not np.isnan(lo[i]).any()]
    front = [b for b in rows if not any(surely_dominates(a, b, lo, hi) for a in rows if a != b)]
    return {b: not any(may_dominate(a, b, lo, hi) for a in rows if a != b) for b in front}


def tied_with(b: int, points: ArrayLike, widths: ArrayLike, directions: Sequence[str]) -> list[int]:
    """The rows that may dominate row ``b`` within noise (empty when ``b`` is clear)."""
    lo, hi = _bounds(points, widths, directions)
    return [a for a in range(lo.shape[0]) if a != b and may_dominate(a, b, lo, hi)]
