"""Settle front members tied within the measurement noise before a search ends (``front.ties``).

A noise-aware front (:mod:`nas.noise`) keeps every trial that another beats only within the noise, and
marks it *tied*. Before the search ends, each round re-measures, on this machine, the tied members and the
members that may dominate them, with ``windows_factor`` times the windows of their current reading. The
narrower reading becomes the trial's reading of record (the old one stays in the readings table), its
joules count in the search cost, and the front is recomputed (:meth:`storage.Store.add_tie_reading`).

Rounds stop when no tie is left, after ``front.ties.rounds``, or when the next re-measurement would take
the settling past ``budget_fraction`` of the joules the search had spent. A trial measured on another
machine (a Ray cluster's) or whose weights were not kept is left as it is, with the reason.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from evaluators.remeasure import this_hardware
from nas.config import MeasureConfig
from nas.errors import NASError
from nas.export.source import open_trial
from nas.noise import tied_with, widths
from nas.records import InferenceEnergy
from nas.runner.remeasure import measure_stored
from nas.spec import StudySpec
from storage import Store
from storage.views import TrialView

__all__ = ["TieBreak", "TiesReport", "settle_ties", "involved"]

log = logging.getLogger(__name__)

#: ``measure(study, number, db, cfg, device)``: the trial's primary form measured again with ``cfg``.
Measure = Callable[[str, int, str, MeasureConfig, str], InferenceEnergy]


@dataclass(frozen=True)
class TieBreak:
    """One trial of a round: its reading before, the new one (None when skipped), and why it was skipped."""

    number: int
    round: int
    before: InferenceEnergy
    after: InferenceEnergy | None = None
    skipped: str | None = None


@dataclass(frozen=True)
class TiesReport:
    """What settling did: the machine, its budget, each re-measurement, and the members still tied."""

    study: str
    hardware: str
    budget_j: float
    spent_j: float
    rounds: int
    breaks: tuple[TieBreak, ...]
    still_tied: tuple[int, ...]
    is_estimate: bool

    def describe(self) -> str:
        """One line for the terminal."""
        measured = sorted({b.number for b in self.breaks if b.after is not None})
        est = " (ESTIMATE)" if self.is_estimate else ""
        head = (f"ties within noise: {len(measured)} front member(s) re-measured with more windows in "
                f"{self.rounds} round(s), {self.spent_j:.1f} J{est} of a {self.budget_j:.1f} J budget")
        skipped = [f"#{b.number}: {b.skipped}" for b in self.breaks if b.skipped]
        tail = f"; still tied: {', '.join(f'#{n}' for n in self.still_tied)}" if self.still_tied else "; none left"
        return head + tail + (f" (skipped {'; '.join(skipped)})" if skipped else "")


def _noise(view: TrialView) -> tuple[float | None, int | None]:
    inf = view.result.inference if view.result is not None else None
    return (inf.cv, inf.n_windows) if inf is not None else (None, None)


def involved(front: Sequence[TrialView], objectives: Sequence[tuple[str, str]]) -> list[TrialView]:
    """The members to re-measure: each tied one, and each member that may dominate a tied one, in order.

    A trial off the front that may dominate a tied member is surely dominated by a member, which then may
    dominate it too, so looking at the members is enough.
    """
    names, directions = [n for n, _ in objectives], [d for _, d in objectives]
    points = [[v.values().get(n) for n in names] for v in front]
    pts = [[float("nan") if x is None else float(x) for x in row] for row in points]
    ws = [widths(v.values(), *_noise(v), names) for v in front]
    chosen: set[int] = set()
    for b, view in enumerate(front):
        if view.noise == "tied":
            chosen.add(b)
            chosen.update(tied_with(b, pts, ws, directions))
    return [front[i] for i in sorted(chosen)]


def _measurer(threads: int) -> Measure:
    """Measures a stored trial as its worker did (``threads``: the study's ``resources.torch_threads``)."""
    def measure(study: str, number: int, db: str, cfg: MeasureConfig, device: str) -> InferenceEnergy:
        return measure_stored(open_trial(study, number, db), cfg, device, threads=threads)[0]
    return measure


def _cost_guess(before: InferenceEnergy, factor: int) -> float:
    """The joules of measuring again with ``factor`` times the windows.

    The windows' joules scale; the rest (warm-up, idle baseline, latency pass) does not. All of it scales
    when the windows' share was not kept.
    """
    total = before.protocol_energy_j or 0.0
    windows = before.windows_total_energy_j
    if windows is None or windows > total:
        return total * factor
    return total - windows + windows * factor


def _one(store: Store, spec: StudySpec, db: str, view: TrialView, device: str, round_: int, measure: Measure,
         left_j: float) -> TieBreak:
    """Re-measure one member with more windows, within ``left_j`` joules, and store the reading."""
    assert view.result is not None and view.result.inference is not None  # a front member has a reading
    before = view.result.inference
    factor = spec.front.ties.windows_factor
    guess = _cost_guess(before, factor)
    if guess > left_j:
        return TieBreak(view.number, round_, before, skipped=f"budget ({guess:.1f} J needed, {left_j:.1f} J left)")
    cfg = spec.measure.for_form(before.serving_form).model_copy(update={"n_windows": before.n_windows * factor})
    try:
        after = measure(spec.name, view.number, db, cfg, device)
        store.add_tie_reading(spec.name, view.number, after)
    except NASError as e:
        return TieBreak(view.number, round_, before, skipped=str(e).splitlines()[0])
    return TieBreak(view.number, round_, before, after=after)


def settle_ties(store: Store, spec: StudySpec, db: str, *, device: str | None = None,
                measure: Measure | None = None) -> TiesReport | None:
    """Re-measure the tied members of this machine's front until no tie is left, or the rounds or budget end.

    Returns None when the study ignores noise or ``front.ties.rounds`` is 0.

    Args:
        store: The study's open store.
        spec: The study spec (``front.ties``, ``measure``).
        db: The database, for loading the stored weights.
        device: Where to measure (default: the spec's ``train.device``).
        measure: Measures a stored trial (default: loads its weights and measures them as its worker did;
            tests pass a fake).
    """
    ties = spec.front.ties
    if spec.front.noise != "aware" or ties.rounds == 0:
        return None
    device = device or spec.train.device
    measure = measure or _measurer(spec.resources.torch_threads)
    hardware = this_hardware(device)
    objectives = [(o.metric, o.resolved_direction) for o in spec.objectives]
    budget = ties.budget_fraction * (store.get_study(spec.name).total_energy_j or 0.0)
    spent, breaks, rounds = 0.0, [], 0
    for round_ in range(1, ties.rounds + 1):
        todo = involved(store.front(spec.name, hardware=hardware), objectives)
        if not todo:
            break
        rounds = round_
        for view in todo:
            done = _one(store, spec, db, view, device, round_, measure, budget - spent)
            breaks.append(done)
            if done.after is not None:
                spent += done.after.protocol_energy_j or 0.0
            log.info("tie round %d, trial %d: %s", round_, view.number, done.skipped or "re-measured")
        if not any(b.after is not None for b in breaks if b.round == round_):
            break  # nothing could be measured: another round would not either
    still = tuple(v.number for v in store.front(spec.name, hardware=hardware) if v.noise == "tied")
    return TiesReport(study=spec.name, hardware=hardware, budget_j=budget, spent_j=spent, rounds=rounds,
                      breaks=tuple(breaks), still_tied=still,
                      is_estimate=any(b.after.is_estimate for b in breaks if b.after is not None))
