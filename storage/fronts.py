"""Pareto fronts: computed from the stored trials, and persisted in ``nas_pareto_front``.

There is one rule for which COMPLETE trials may stand on a study's front, :class:`FrontRule`, read from
the study's spec: its ``constraints`` and its ``front.require_above_majority``. Every front applies it:
:func:`front` (``nas pareto``, ``nas.pareto()``, the dashboard's API and plots), :func:`trivial_trials`
and the persisted table (:func:`rewrite_front`), so they always agree. A user's ``where`` narrows
further. Fronts are computed per hardware fingerprint: a trial re-measured on another machine (``nas
remeasure``) stands on that machine's front with that machine's readings (:mod:`storage.remeasured`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import delete, or_, select
from sqlalchemy.orm import Session

from nas.dominance import non_dominated
from nas.noise import noisy_front, widths
from nas.spec import StudySpec
from nas.where import compile_where
from storage.convert import (
    front_entry,
    json_dumps,
    nan_if_none,
    objectives_key,
    objectives_of,
)
from storage.models import EnergyReadingRow, ParetoFrontRow, StudyRow, TrialRow, utc_now
from storage.remeasured import REMEASURE, Measured, measured_on, own_measurement, remeasured_readings
from storage.views import (
    FILTER_NAMES,
    NO_HARDWARE,
    FrontEntry,
    TrialView,
    above_majority,
    requires_above_majority,
)

__all__ = [
    "FrontRule",
    "front_rule",
    "rewrite_front",
    "rebuild_fronts",
    "rebuild_all_fronts",
    "front",
    "trivial_trials",
    "persisted_front",
    "hardware_fingerprints",
    "remeasured_trials",
]

Values = dict[str, Any]
Predicate = Callable[[Mapping[str, Any]], bool]


@dataclass(frozen=True)
class FrontRule:
    """Which COMPLETE trials of a study may stand on its front.

    Attributes:
        require_above_majority: ``front.require_above_majority``: dev accuracy strictly above the dev
            majority-class rate (:func:`storage.views.above_majority`).
        constraints: The study's ``constraints``: filters over :data:`storage.FILTER_NAMES` that every
            front member satisfies.
        noise_aware: ``front.noise: aware``: only a difference beyond the measurement noise dominates, and
            members are marked clear or tied within noise (:mod:`nas.noise`); ``ignore``: plain dominance.
    """

    require_above_majority: bool = True
    constraints: tuple[str, ...] = ()
    noise_aware: bool = True

    def admits(self, where: str | None = None) -> Predicate:
        """A predicate over a trial's flat values: it satisfies the constraints and ``where``.

        Raises:
            ConfigError: A bad ``where`` (or a stored constraint this build cannot parse).
        """
        checks = [compile_where(c, FILTER_NAMES) for c in (*self.constraints, where or "") if c.strip()]
        return lambda values: all(check(values) for check in checks)


@functools.lru_cache(maxsize=128)
def front_rule(spec_json: str) -> FrontRule:
    """The front rule of a study spec (JSON text).

    A spec that is not a :class:`~nas.spec.StudySpec` (a study created through the Python API) has no
    constraints and the default majority rule.
    """
    try:
        spec = StudySpec.model_validate_json(spec_json)
        constraints, noise_aware = tuple(spec.constraints), spec.front.noise == "aware"
    except ValueError:
        constraints, noise_aware = (), True
    return FrontRule(require_above_majority=requires_above_majority(spec_json), constraints=constraints,
                     noise_aware=noise_aware)


def _widths(m: Measured, objectives: Sequence[tuple[str, str]]) -> list[float]:
    """Half-widths of a member's objective values: the noise interval of measured energy, else 0."""
    cv, n = m.noise()
    return widths(m.values, cv, n, [name for name, _ in objectives])


def _front_of(members: Sequence[Measured], objectives: Sequence[tuple[str, str]],
              noise_aware: bool) -> list[tuple[int, bool | None]]:
    """Indices into ``members`` on the front with their mark, by the first objective (best first), then number.

    The mark is True for a clear member, False for one tied within noise (:mod:`nas.noise`), None when the
    study ignores noise (plain dominance).
    """
    if not members:
        return []
    pts = np.array([[nan_if_none(m.values[name]) for name, _ in objectives] for m in members], dtype=np.float64)
    directions = [d for _, d in objectives]
    marks: dict[int, bool | None]
    if noise_aware:
        marks = dict(noisy_front(pts, [_widths(m, objectives) for m in members], directions))
    else:
        marks = {int(i): None for i in non_dominated(pts, directions)}
    first_sign = -1.0 if objectives[0][1] == "maximize" else 1.0
    return sorted(marks.items(), key=lambda kv: (first_sign * pts[kv[0], 0], members[kv[0]].row.trial_number))


def _stored_members(s: Session, st: StudyRow, hardware: str, new_row: TrialRow | None) -> list[Measured]:
    """The trials a front rewrite compares, as measured on ``hardware``.

    With ``new_row``, the stored front plus it; else every COMPLETE trial measured there (by itself, or
    re-measured by ``nas remeasure``).
    """
    readings = remeasured_readings(s, st)
    if new_row is None:
        q = select(TrialRow).where(TrialRow.study_id == st.id, TrialRow.state == "COMPLETE", or_(
            TrialRow.hardware_fingerprint == hardware, TrialRow.id.in_(list(readings))))
        rows = list(s.scalars(q).all())
    else:
        members = select(ParetoFrontRow.trial_id).where(
            ParetoFrontRow.study_id == st.id, ParetoFrontRow.hardware_fingerprint == hardware)
        rows = [r for r in s.scalars(select(TrialRow).where(TrialRow.id.in_(members))).all() if r.id != new_row.id]
        rows.append(new_row)
    found = (measured_on(r, hardware, readings.get(r.id, ()), st.spec_json) for r in rows)
    return [m for m in found if m is not None]


def rewrite_front(s: Session, st: StudyRow, hardware: str, new_row: TrialRow | None = None) -> None:
    """Recompute and store the front of one study and hardware fingerprint.

    With ``new_row`` (the trial just completed) only the stored front plus that trial are compared:
    COMPLETE trials never change, and a trial dominated once stays dominated, so this equals the
    front over all trials (a test checks it). Without it, every COMPLETE trial measured on that hardware
    is read. Trials the study's :class:`FrontRule` keeps out take no part, exactly as in :func:`front`.
    """
    objectives = objectives_of(st)
    rule = front_rule(st.spec_json)
    admits = rule.admits()
    kept: list[Measured] = []
    for m in sorted(_stored_members(s, st, hardware, new_row), key=lambda m: m.row.trial_number):
        if admits(m.values) and (not rule.require_above_majority or above_majority(m.values)):
            kept.append(m)
    order = _front_of(kept, objectives, rule.noise_aware)
    if new_row is not None and new_row not in (kept[i].row for i, _ in order):
        # surely dominated (or lacking an objective): the stored front stands, marks too, since whatever may
        # dominate a member through the new trial may dominate it through the trial that dominates the new one
        return
    s.execute(delete(ParetoFrontRow).where(
        ParetoFrontRow.study_id == st.id, ParetoFrontRow.hardware_fingerprint == hardware))
    now = utc_now()
    key = objectives_key(objectives)
    for position, (i, clear) in enumerate(order):
        m = kept[i]
        s.add(ParetoFrontRow(
            study_id=st.id, hardware_fingerprint=hardware, objectives_key=key, trial_id=m.row.id,
            trial_number=m.row.trial_number, position=position, clear=clear,
            values_json=json_dumps({name: m.values[name] for name, _ in objectives}), updated_utc=now,
        ))


def rebuild_fronts(s: Session, st: StudyRow) -> None:
    """Recompute every persisted front of a study from all its COMPLETE trials."""
    s.execute(delete(ParetoFrontRow).where(ParetoFrontRow.study_id == st.id))
    for hardware in hardware_fingerprints(s, st):
        rewrite_front(s, st, hardware)


def rebuild_all_fronts(s: Session) -> None:
    """Recompute the persisted fronts of every study (after an upgrade: the front rule may have changed)."""
    for st in s.scalars(select(StudyRow).order_by(StudyRow.id)).all():
        rebuild_fronts(s, st)


def _measured(s: Session, st: StudyRow) -> list[Measured]:
    """The study's COMPLETE trials on each machine they were measured on, in trial-number order.

    A trial re-measured on another machine (``nas remeasure``) appears once per machine, its own first.
    """
    readings = remeasured_readings(s, st)
    q = select(TrialRow).where(TrialRow.study_id == st.id, TrialRow.state == "COMPLETE")
    out: list[Measured] = []
    for r in s.scalars(q.order_by(TrialRow.trial_number)).all():
        own, theirs = own_measurement(r), readings.get(r.id, [])
        others = dict.fromkeys(x.hardware_fingerprint or NO_HARDWARE for x in theirs
                               if x.hardware_fingerprint != own.hardware)
        out.extend(m for m in (own, *(measured_on(r, hw, theirs, st.spec_json) for hw in others)) if m is not None)
    return out


def _candidates(s: Session, st: StudyRow, where: str | None, hardware: str | None) -> list[Measured]:
    """The trials of :func:`_measured` (on ``hardware`` only, if given) that satisfy the constraints and ``where``."""
    admits = front_rule(st.spec_json).admits(where)
    return [m for m in _measured(s, st) if (hardware is None or m.hardware == hardware) and admits(m.values)]


def remeasured_trials(s: Session, st: StudyRow) -> list[TrialView]:
    """Every COMPLETE trial as seen on each other machine ``nas remeasure`` measured it on, by number."""
    return [m.view(st.name) for m in _measured(s, st) if m.record is not None]


def front(s: Session, st: StudyRow, *, where: str | None, hardware: str | None,
          include_trivial: bool) -> list[TrialView]:
    """The Pareto-optimal COMPLETE trials (see :meth:`storage.base.BaseStorage.front`)."""
    rule = front_rule(st.spec_json)
    majority = rule.require_above_majority and not include_trivial
    groups: dict[str, list[Measured]] = {}
    for m in _candidates(s, st, where, hardware):
        if not majority or above_majority(m.values):
            groups.setdefault(m.hardware, []).append(m)
    objectives = objectives_of(st)
    out: list[TrialView] = []
    for hw in sorted(groups):
        group = groups[hw]
        for i, clear in _front_of(group, objectives, rule.noise_aware):
            view = group[i].view(st.name)
            out.append(view if clear is None else dataclasses.replace(view, noise="clear" if clear else "tied"))
    return out


def trivial_trials(s: Session, st: StudyRow, *, where: str | None, hardware: str | None) -> list[TrialView]:
    """The COMPLETE trials kept off the front as trivial (:meth:`storage.base.BaseStorage.trivial_trials`).

    Those within the study's constraints and ``where`` at or below the dev majority-class rate; empty when
    the study turns that rule off. In number order (per machine, for a re-measured trial).
    """
    if not front_rule(st.spec_json).require_above_majority:
        return []
    return [m.view(st.name) for m in _candidates(s, st, where, hardware) if not above_majority(m.values)]


def persisted_front(s: Session, st: StudyRow, *, hardware: str | None) -> list[FrontEntry]:
    """The front as stored in ``nas_pareto_front``, ordered by hardware fingerprint and position."""
    q = select(ParetoFrontRow).where(ParetoFrontRow.study_id == st.id)
    if hardware is not None:
        q = q.where(ParetoFrontRow.hardware_fingerprint == hardware)
    rows = s.scalars(q.order_by(ParetoFrontRow.hardware_fingerprint, ParetoFrontRow.position)).all()
    return [front_entry(r) for r in rows]


def hardware_fingerprints(s: Session, st: StudyRow) -> list[str]:
    """The machines a study's COMPLETE trials were measured on (by themselves or by ``nas remeasure``), sorted."""
    found = set(s.scalars(select(TrialRow.hardware_fingerprint).where(
        TrialRow.study_id == st.id, TrialRow.state == "COMPLETE").distinct()).all())
    complete = select(TrialRow.id).where(TrialRow.study_id == st.id, TrialRow.state == "COMPLETE")
    found |= set(s.scalars(select(EnergyReadingRow.hardware_fingerprint).where(
        EnergyReadingRow.trial_id.in_(complete), EnergyReadingRow.origin == REMEASURE).distinct()).all())
    return sorted({h or NO_HARDWARE for h in found})
