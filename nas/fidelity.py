"""How well the early rungs rank candidates: Spearman's rho between consecutive accuracy rungs.

ASHA (``fidelity.rungs``) stops a trial on its dev accuracy at an early rung. That is sound only when the
early accuracy ranks candidates the way their later accuracy does. For each pair of consecutive rungs with
data, :func:`rung_correlations` gives Spearman's rank correlation over the trials that have a dev accuracy
at both, and :class:`FidelityReport` says when it is too low to trust (below :data:`WARN_BELOW`) and what
to change. This is the one computation behind ``nas show STUDY``, the HTTP API and the dashboard (through
:func:`storage.study_fidelity`, which reads a study's trials into it).

The study's last rung is each trial's final dev accuracy: measured when training ended, after the
candidate's compression, while the earlier rungs were measured mid-training. A pair is computed over the
trials that reached both rungs, which ASHA already selected on the lower one.

Layer L0: the standard library only.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["WARN_BELOW", "MIN_TRIALS", "DESCRIPTION", "average_ranks", "spearman", "RungPair", "FidelityReport",
           "rung_correlations"]

#: Below this rank correlation the lower rung is said to rank candidates poorly.
WARN_BELOW = 0.6
#: Fewest trials with an accuracy at both rungs for a correlation to be given.
MIN_TRIALS = 3
#: What the numbers are, in one line.
DESCRIPTION = ("Spearman's rank correlation of dev accuracy between consecutive rungs, over the trials that "
               "reached both")


def average_ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks of ``values``; tied values share the mean of the ranks they span."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for k in range(start, end + 1):
            ranks[order[k]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Spearman's rho of paired samples: Pearson's correlation of their average ranks (ties handled).

    ``None`` when it is undefined: fewer than two pairs, or one side constant (all tied).

    Raises:
        ValueError: ``xs`` and ``ys`` differ in length.
    """
    if len(xs) != len(ys):
        raise ValueError(f"spearman needs paired samples, got {len(xs)} and {len(ys)} values")
    if len(xs) < 2:
        return None
    rx, ry = average_ranks(xs), average_ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    sxx = sum((a - mx) ** 2 for a in rx)
    syy = sum((b - my) ** 2 for b in ry)
    if sxx == 0 or syy == 0:
        return None
    return max(-1.0, min(1.0, sxy / math.sqrt(sxx * syy)))


@dataclass(frozen=True)
class RungPair:
    """The rank agreement of two consecutive rungs.

    Attributes:
        low_step: The lower rung (training steps).
        high_step: The next rung with data.
        n_trials: Trials with a dev accuracy at both.
        rho: Spearman's rho over those trials; ``None`` with fewer than :data:`MIN_TRIALS` of them, or when
            every one had the same accuracy at one of the rungs.
        high_is_final: Whether ``high_step`` is the study's last rung (the final dev accuracy).
    """

    low_step: int
    high_step: int
    n_trials: int
    rho: float | None
    high_is_final: bool = False

    @property
    def enough(self) -> bool:
        """Whether enough trials have both values for a correlation (:data:`MIN_TRIALS`)."""
        return self.n_trials >= MIN_TRIALS

    @property
    def weak(self) -> bool:
        """Whether the lower rung ranks candidates poorly (rho below :data:`WARN_BELOW`)."""
        return self.rho is not None and self.rho < WARN_BELOW

    def text(self) -> str:
        """``rung 100 -> 200: Spearman 0.83 over 9 trials`` (or why there is no number)."""
        head = f"rung {self.low_step} -> {self.high_step}{' (final)' if self.high_is_final else ''}"
        if not self.enough:
            return f"{head}: too few trials with both ({self.n_trials}; needs {MIN_TRIALS})"
        if self.rho is None:
            return f"{head}: no Spearman over {self.n_trials} trials (all had the same accuracy at one rung)"
        return f"{head}: Spearman {self.rho:.2f} over {self.n_trials} trials"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the fields (``rho`` as ``spearman``), ``enough``, ``weak`` and ``text``."""
        return {"low_step": self.low_step, "high_step": self.high_step, "high_is_final": self.high_is_final,
                "n_trials": self.n_trials, "spearman": self.rho, "enough": self.enough, "weak": self.weak,
                "text": self.text()}


@dataclass(frozen=True)
class FidelityReport:
    """A study's rank correlations between consecutive rungs, and a warning when one is low.

    Attributes:
        pairs: One per pair of consecutive rungs with data, lowest first; empty when fewer than two rungs
            have data (no early stopping happened, or nothing reached a second rung).
        steps: The rungs (training steps) with data, ascending.
        rungs: The study's configured rungs (``fidelity.rungs``); the last holds the final dev accuracy.
    """

    pairs: tuple[RungPair, ...] = ()
    steps: tuple[int, ...] = ()
    rungs: tuple[int, ...] = ()

    @property
    def shown(self) -> bool:
        """Whether there is anything to show: at least two rungs with data."""
        return bool(self.pairs)

    @property
    def final_step(self) -> int | None:
        """The last rung, where each trial's final dev accuracy sits (``None`` when the rungs are unknown)."""
        return self.rungs[-1] if self.rungs else None

    @property
    def weak_pairs(self) -> tuple[RungPair, ...]:
        """The pairs whose rho is below :data:`WARN_BELOW`."""
        return tuple(p for p in self.pairs if p.weak)

    def note(self) -> str:
        """Which rung is the final accuracy (after compression) and which are mid-training."""
        if self.final_step is None:
            return "every rung is dev accuracy mid-training"
        return (f"rung {self.final_step} is each trial's final dev accuracy, after compression; earlier rungs are "
                "dev accuracy mid-training")

    def suggested_rungs(self) -> list[int] | None:
        """Rungs with a later first rung: those above the highest weak pair's lower rung.

        When only the last rung would be left, a first rung halfway to it. ``None`` without a weak pair
        or without the study's rungs.
        """
        weak = self.weak_pairs
        if not weak or not self.rungs:
            return None
        low = weak[-1].low_step
        later = [r for r in self.rungs if r > low]
        if len(later) >= 2:
            return later
        final = self.rungs[-1]
        middle = (low + final) // 2
        return [middle, final] if low < middle < final else None

    def warning(self) -> str | None:
        """What a low correlation means and how to fix it; ``None`` when no pair is below :data:`WARN_BELOW`."""
        weak = self.weak_pairs
        if not weak:
            return None
        which = "; ".join(f"{p.low_step} -> {p.high_step}: {p.rho:.2f}" for p in weak)
        rungs = self.suggested_rungs()
        example = f", e.g. `fidelity.rungs: [{', '.join(str(r) for r in rungs)}]`" if rungs else ""
        return (f"WARNING: rank correlation below {WARN_BELOW} between rungs ({which}). The early rungs rank "
                f"candidates poorly, so ASHA stops the wrong ones. Fix: raise the first rung{example}, or set "
                "`fidelity.enabled: false` (every candidate trains to the last rung)")

    def lines(self) -> list[str]:
        """The report as text lines: one per pair, then the warning if any."""
        out = [p.text() for p in self.pairs]
        warning = self.warning()
        return [*out, warning] if warning else out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``shown``, the pairs, the rungs, the thresholds, what they are, the warning and a fix."""
        return {"shown": self.shown, "steps": list(self.steps), "rungs": list(self.rungs),
                "final_step": self.final_step, "min_trials": MIN_TRIALS, "warn_below": WARN_BELOW,
                "description": DESCRIPTION, "note": self.note(), "pairs": [p.to_dict() for p in self.pairs], "warning": self.warning(),
                "suggested_rungs": self.suggested_rungs()}


def rung_correlations(trials: Iterable[Mapping[int, float]], *, rungs: Sequence[int] = ()) -> FidelityReport:
    """Spearman's rho between each pair of consecutive rungs with data, over the trials with both.

    Args:
        trials: Each trial's dev accuracy by rung step, its final dev accuracy at the last rung
            (``rungs[-1]``); a trial without a value at a rung simply has no key there.
        rungs: The study's configured rungs (``fidelity.rungs``), for the final rung and the suggested fix.

    Returns:
        The report; its ``pairs`` are empty when fewer than two rungs have data.
    """
    maps = [{int(k): float(v) for k, v in t.items() if v is not None and math.isfinite(v)} for t in trials]
    steps = tuple(sorted({step for m in maps for step in m}))
    final = rungs[-1] if rungs else None
    pairs = []
    for low, high in zip(steps, steps[1:], strict=False):
        both = [(m[low], m[high]) for m in maps if low in m and high in m]
        rho = spearman([a for a, _ in both], [b for _, b in both]) if len(both) >= MIN_TRIALS else None
        pairs.append(RungPair(low_step=low, high_step=high, n_trials=len(both), rho=rho,
                              high_is_final=high == final))
    return FidelityReport(pairs=tuple(pairs), steps=steps, rungs=tuple(int(r) for r in rungs))
