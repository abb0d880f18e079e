"""Pareto dominance and hypervolume (layer L1: numpy and the standard library only).

Every function takes points as an ``(N, M)`` array (one row per trial, one column per objective) and a
list of ``M`` directions, each ``"maximize"`` or ``"minimize"``. Internally everything is turned into
minimisation by negating the maximised columns.

Conventions:

* A row that contains ``NaN`` (or ``None``, which numpy turns into ``NaN``) is never on a front and adds
  no hypervolume: a trial that has no value for an objective cannot be compared on it.
* Point ``a`` dominates ``b`` when ``a`` is no worse in every objective and strictly better in at least one.
  Identical points do not dominate each other, so duplicates on the front are **all kept**. The front is
  therefore the same whatever the order of the input.
* The hypervolume is the Lebesgue measure of the region dominated by the points and bounded by the
  reference point. Points that are not strictly better than the reference in every objective add nothing.
  It is exact: a sweep for two objectives, and recursive slicing along the last objective (the "HSO"
  scheme of While et al., 2006) for three or more. Slicing costs about ``O(N^(M-1) log N)``, which is
  fine for the few hundred to few thousand trials of a search with 2-4 objectives.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "DIRECTIONS",
    "to_minimization",
    "dominates",
    "non_dominated",
    "non_dominated_ranks",
    "crowding_distance",
    "hypervolume",
    "hypervolume_curve",
    "default_reference",
]

#: The two directions an objective may take.
DIRECTIONS: tuple[str, str] = ("maximize", "minimize")


def _signs(directions: Sequence[str], n_objectives: int) -> NDArray[np.float64]:
    if len(directions) != n_objectives:
        raise ValueError(
            f"got {len(directions)} directions for {n_objectives} objectives; give one per objective"
        )
    signs = np.empty(n_objectives, dtype=np.float64)
    for i, d in enumerate(directions):
        if d == "minimize":
            signs[i] = 1.0
        elif d == "maximize":
            signs[i] = -1.0
        else:
            raise ValueError(f"direction {i} is {d!r}; use 'maximize' or 'minimize'")
    return signs


def _as_points(points: ArrayLike) -> NDArray[np.float64]:
    arr = np.asarray(points, dtype=np.float64)
    if arr.ndim == 1 and arr.size == 0:
        return arr.reshape(0, 0)
    if arr.ndim != 2:
        raise ValueError(f"points must be a 2-D array (trials x objectives), got shape {arr.shape}")
    return arr


def to_minimization(points: ArrayLike, directions: Sequence[str]) -> NDArray[np.float64]:
    """Return a copy of ``points`` in which every objective is to be minimised."""
    arr = _as_points(points)
    if arr.shape[0] == 0:
        return arr.copy()
    return arr * _signs(directions, arr.shape[1])


def dominates(a: ArrayLike, b: ArrayLike, directions: Sequence[str]) -> bool:
    """Whether point ``a`` dominates point ``b`` (no worse everywhere, strictly better somewhere)."""
    qa = to_minimization(np.atleast_2d(a), directions)[0]
    qb = to_minimization(np.atleast_2d(b), directions)[0]
    if np.isnan(qa).any() or np.isnan(qb).any():
        return False
    return bool(np.all(qa <= qb) and np.any(qa < qb))


def _non_dominated_min(q: NDArray[np.float64]) -> NDArray[np.intp]:
    """Indices of the non-dominated rows of a finite minimisation array, ascending."""
    n = q.shape[0]
    if n == 0:
        return np.empty(0, dtype=np.intp)
    # In lexicographic order every dominator of a point comes before it, and dominance is transitive,
    # so comparing each point with the front found so far is enough.
    order = np.lexsort(q.T[::-1])
    front_rows: list[int] = []
    front = np.empty((0, q.shape[1]), dtype=np.float64)
    for idx in order:
        p = q[idx]
        if front.shape[0]:
            le = np.all(front <= p, axis=1)
            lt = np.any(front < p, axis=1)
            if np.any(le & lt):
                continue
        front_rows.append(int(idx))
        front = np.vstack([front, p])
    return np.sort(np.asarray(front_rows, dtype=np.intp))


def non_dominated(points: ArrayLike, directions: Sequence[str]) -> NDArray[np.intp]:
    """Indices (ascending) of the Pareto-optimal rows of ``points``.

    Args:
        points: ``(N, M)`` objective values, one row per trial.
        directions: ``M`` entries, each ``"maximize"`` or ``"minimize"``.

    Returns:
        Row indices into ``points``. Rows with ``NaN`` are excluded; identical rows are all kept.
    """
    arr = _as_points(points)
    if arr.shape[0] == 0:
        return np.empty(0, dtype=np.intp)
    q = arr * _signs(directions, arr.shape[1])
    finite = np.flatnonzero(~np.isnan(q).any(axis=1))
    return finite[_non_dominated_min(q[finite])]


def non_dominated_ranks(points: ArrayLike, directions: Sequence[str]) -> NDArray[np.intp]:
    """Each row's non-dominated rank (NSGA-II's sort, Deb et al., 2002).

    Rank 0 is the Pareto front, rank 1 the front of the rows left once it is removed, and so on. With
    one objective the ranks follow the values (equal values share a rank). Rows with ``NaN`` get the
    rank after the last front.
    """
    arr = _as_points(points)
    ranks = np.full(arr.shape[0], -1, dtype=np.intp)
    if arr.shape[0] == 0:
        return ranks
    q = arr * _signs(directions, arr.shape[1])
    left = np.flatnonzero(~np.isnan(q).any(axis=1))
    rank = 0
    while left.size:
        front = left[_non_dominated_min(q[left])]
        ranks[front] = rank
        left = np.setdiff1d(left, front)
        rank += 1
    ranks[ranks < 0] = rank
    return ranks


def crowding_distance(points: ArrayLike) -> NDArray[np.float64]:
    """NSGA-II's crowding distance of each row of one front (Deb et al., 2002); larger is lonelier.

    Per objective, the rows are sorted; the two extremes get infinity, and every other row adds the gap
    between its two neighbours divided by the objective's range (an objective whose values are all equal
    adds nothing). A front of one or two rows is all extremes. The directions do not matter.
    """
    arr = _as_points(points)
    n = arr.shape[0]
    if n <= 2:
        return np.full(n, np.inf)
    dist = np.zeros(n, dtype=np.float64)
    for j in range(arr.shape[1]):
        order = np.argsort(arr[:, j], kind="stable")
        col = arr[order, j]
        span = col[-1] - col[0]
        dist[order[[0, -1]]] = np.inf
        if span > 0 and np.isfinite(span):
            dist[order[1:-1]] += (col[2:] - col[:-2]) / span
    return dist


def _hv2(q: NDArray[np.float64], ref: NDArray[np.float64]) -> float:
    """Exact 2-D hypervolume of minimisation points strictly inside the reference box."""
    order = np.lexsort((q[:, 1], q[:, 0]))
    x = q[order, 0]
    y = q[order, 1]
    # Sweeping x upwards, a point adds the strip between its y and the best y seen so far.
    best_before = np.concatenate(([ref[1]], np.minimum.accumulate(y)[:-1]))
    heights = np.clip(best_before - y, 0.0, None)
    return float(np.sum((ref[0] - x) * heights))


def _hv_min(q: NDArray[np.float64], ref: NDArray[np.float64]) -> float:
    """Exact hypervolume of minimisation points, all strictly better than ``ref``."""
    n, m = q.shape
    if n == 0:
        return 0.0
    if m == 1:
        return float(ref[0] - q[:, 0].min())
    if n > 1:
        q = q[_non_dominated_min(q)]
        n = q.shape[0]
    if m == 2:
        return _hv2(q, ref)
    order = np.argsort(q[:, -1], kind="stable")
    z = q[order, -1]
    total = 0.0
    for i in range(n):
        z_next = z[i + 1] if i + 1 < n else ref[-1]
        depth = z_next - z[i]
        if depth <= 0.0:
            continue
        total += _hv_min(q[order[: i + 1], :-1], ref[:-1]) * float(depth)
    return total


def _prepare_hv(
    points: ArrayLike, directions: Sequence[str], reference: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    arr = _as_points(points)
    ref = np.asarray(reference, dtype=np.float64).reshape(-1)
    signs = _signs(directions, ref.shape[0])
    if np.isnan(ref).any():
        raise ValueError("the hypervolume reference point contains NaN")
    if arr.shape[0] == 0:
        return np.empty((0, ref.shape[0])), ref * signs
    if arr.shape[1] != ref.shape[0]:
        raise ValueError(f"points have {arr.shape[1]} objectives but the reference has {ref.shape[0]}")
    return arr * signs, ref * signs


def hypervolume(points: ArrayLike, directions: Sequence[str], reference: ArrayLike) -> float:
    """Exact hypervolume dominated by ``points`` and bounded by ``reference``.

    Args:
        points: ``(N, M)`` objective values.
        directions: ``M`` entries, ``"maximize"`` or ``"minimize"``.
        reference: ``M`` values, worse than every point of interest (see :func:`default_reference`).

    Returns:
        The hypervolume in the product of the objectives' units; 0.0 when no point beats the reference.
    """
    q, ref = _prepare_hv(points, directions, reference)
    if q.shape[0] == 0:
        return 0.0
    inside = ~np.isnan(q).any(axis=1) & np.all(q < ref, axis=1)
    return _hv_min(q[inside], ref)


def hypervolume_curve(
    points_in_trial_order: ArrayLike, directions: Sequence[str], reference: ArrayLike
) -> list[float]:
    """Hypervolume after each trial: entry ``i`` covers rows ``0..i``.

    The volume only changes when a trial is strictly inside the reference box and not dominated by the
    front so far, so only those trials trigger a recomputation (on the current front only).
    """
    q, ref = _prepare_hv(points_in_trial_order, directions, reference)
    curve: list[float] = []
    front = np.empty((0, ref.shape[0]), dtype=np.float64)
    value = 0.0
    for p in q:
        if not np.isnan(p).any() and np.all(p < ref):
            covered = front.shape[0] > 0 and bool(np.any(np.all(front <= p, axis=1)))
            if not covered:
                front = np.vstack([front, p])
                front = front[_non_dominated_min(front)]
                value = _hv_min(front, ref)
        curve.append(value)
    return curve


def default_reference(points: ArrayLike, directions: Sequence[str], margin: float = 0.1) -> NDArray[np.float64]:
    """A reference point just worse than the worst finite value of each objective.

    Each objective's worst value is pushed outwards by ``margin`` times its range (or, when all values
    are equal, by ``margin`` times its magnitude, or by ``margin`` when it is 0), so that every point,
    including the extremes of the front, adds some volume.

    Raises:
        ValueError: When no row is free of NaN.
    """
    arr = _as_points(points)
    if arr.shape[0] == 0:
        raise ValueError("cannot choose a reference point without any points")
    signs = _signs(directions, arr.shape[1])
    q = arr * signs
    q = q[~np.isnan(q).any(axis=1)]
    if q.shape[0] == 0:
        raise ValueError("cannot choose a reference point: every row contains NaN")
    worst = q.max(axis=0)
    spread = worst - q.min(axis=0)
    pad = np.where(spread > 0, spread, np.where(worst != 0, np.abs(worst), 1.0)) * margin
    return np.asarray((worst + pad) * signs, dtype=np.float64)
