"""Studies: create, read, re-spec and close them, inside a caller's session.

A study's search cost and trial counts are never stored on the study: :func:`study_costs` derives them
from the trials' costs and states (and its teacher reference's cost, :mod:`storage.references`) whenever
the study is read, so there is one copy of each number.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any, Literal

from sqlalchemy import ColumnElement, case, func, select
from sqlalchemy.orm import Session

from nas.errors import ConfigError, StorageError
from storage.convert import objectives_key, study_info, to_float
from storage.fronts import front_rule, rebuild_fronts
from storage.models import STUDY_STATUSES, StudyRow, TrialRow, utc_now
from storage.references import ReferenceCost, reference_cost
from storage.supernets import supernet_cost
from storage.views import OBJECTIVE_NAMES, StudyCosts, StudyInfo

__all__ = [
    "ALLOWED_OBJECTIVES",
    "study_row",
    "study_costs",
    "read_study",
    "check_objectives",
    "check_spec_json",
    "create_study",
    "update_study_spec",
    "set_study_status",
    "link_optuna_study",
]

#: Objective names a study may use: the result metrics plus the numeric candidate fields.
_NUMERIC_CANDIDATE_NAMES = (
    "n_layers", "d_model", "n_heads", "d_ffn", "weight_bits", "embedding_bits", "attention_bits",
    "ffn_bits", "activation_bits", "sparsity_amount",
)
ALLOWED_OBJECTIVES: tuple[str, ...] = (*OBJECTIVE_NAMES, *_NUMERIC_CANDIDATE_NAMES)


def study_row(s: Session, name: str) -> StudyRow:
    """The row of study ``name``.

    Raises:
        StorageError: ``unknown study 'x'; run `nas studies` to list them``.
    """
    row = s.scalar(select(StudyRow).where(StudyRow.name == name))
    if row is None:
        raise StorageError(f"unknown study {name!r}; run `nas studies` to list them")
    return row


def _count(condition: ColumnElement[bool]) -> ColumnElement[Any]:
    """How many trials meet ``condition`` (0 for none)."""
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


def _plus(total: float | None, part: float | None) -> float | None:
    """``total`` plus ``part`` where either is known (an unknown part adds nothing, as in the trials' sums)."""
    if part is None:
        return total
    return part if total is None else total + part


def _with_part(costs: StudyCosts, ref: ReferenceCost | None, part: Literal["teacher", "supernet"]) -> StudyCosts:
    """The costs plus a study-level part's (``part``: ``teacher`` or ``supernet``), counted once (one row each)."""
    if ref is None:
        return costs
    co2 = costs.co2eq_g
    if ref.co2eq_g is None and ref.total_energy_j is not None:
        co2 = None  # the part cost joules without a CO2 figure: the study's CO2 is not known whole
    out = dataclasses.replace(
        costs, train_energy_j=_plus(costs.train_energy_j, ref.train_energy_j),
        measure_energy_j=_plus(costs.measure_energy_j, ref.measure_energy_j),
        co2eq_g=_plus(co2, ref.co2eq_g) if co2 is not None else None,
        cost_includes_estimate=costs.cost_includes_estimate or (ref.is_estimate and ref.total_energy_j is not None),
    )
    if part == "teacher":
        return dataclasses.replace(out, teacher_energy_j=ref.total_energy_j)
    return dataclasses.replace(out, supernet_energy_j=ref.total_energy_j)


def study_costs(s: Session, study_id: int) -> StudyCosts:
    """The study's search cost and trial counts, derived from its trials and its teacher reference.

    Unknown parts stay unknown. The teacher's cost (fine-tuning and outputs cache when this study caused
    them, and its measurement) is added once: a study has at most one reference row.
    """
    t = TrialRow
    ran = t.cost_meter.is_not(None)
    row = s.execute(select(
        func.sum(t.cost_train_energy_j), func.sum(t.cost_measure_energy_j), func.sum(t.cost_co2eq_g),
        func.coalesce(func.sum(t.cost_wall_s), 0.0), func.coalesce(func.sum(t.cost_gpu_s), 0.0),
        _count(t.cost_is_estimate.is_(True)), _count(ran & t.cost_train_energy_j.is_(None)),
        _count(ran & t.cost_co2eq_g.is_(None)), _count(ran),
        _count(t.state == "COMPLETE"), _count(t.state == "FAIL"), _count(t.state == "PRUNED"),
    ).where(t.study_id == study_id)).one()
    train, measure, co2, wall, gpu, n_est, n_unmetered, n_no_co2, n_ran, n_complete, n_failed, n_pruned = row
    nothing = 0.0 if not n_ran else None  # no trial ran yet: nothing was spent, which is known
    costs = StudyCosts(
        train_energy_j=to_float(train) if train is not None else nothing,
        measure_energy_j=to_float(measure) if measure is not None else nothing,
        co2eq_g=(to_float(co2) if co2 is not None else nothing) if not n_no_co2 else None,
        wall_s=float(wall), gpu_s=float(gpu), cost_includes_estimate=bool(n_est),
        n_trials_unmetered=int(n_unmetered), n_trials_complete=int(n_complete), n_trials_failed=int(n_failed),
        n_trials_pruned=int(n_pruned),
    )
    return _with_part(_with_part(costs, reference_cost(s, study_id), "teacher"), supernet_cost(s, study_id),
                      "supernet")


def read_study(s: Session, row: StudyRow) -> StudyInfo:
    """The study record of ``row``, with its derived costs and counts."""
    return study_info(row, study_costs(s, row.id))


def check_objectives(objectives: Sequence[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """The objectives as ``(metric, direction)`` pairs, each metric allowed and listed once.

    Raises:
        ConfigError: Naming the bad metric or direction.
    """
    checked: list[tuple[str, str]] = []
    if not objectives:
        raise ConfigError("a study needs at least one objective", field="objectives",
                          fix="e.g. [[accuracy, maximize], [energy_per_sample_j, minimize]]")
    for item in objectives:
        if len(item) != 2:
            raise ConfigError("each objective is a [metric, direction] pair", field="objectives", value=item)
        metric, direction = str(item[0]), str(item[1])
        if metric not in ALLOWED_OBJECTIVES:
            raise ConfigError(f"unknown metric; allowed: {', '.join(ALLOWED_OBJECTIVES)}", field="objectives",
                              value=metric)
        if direction not in ("maximize", "minimize"):
            raise ConfigError("direction must be 'maximize' or 'minimize'", field="objectives", value=direction)
        if metric in (m for m, _ in checked):
            raise ConfigError("metric listed twice", field="objectives", value=metric)
        checked.append((metric, direction))
    return tuple(checked)


def check_spec_json(spec_json: str) -> None:
    """Raise :class:`ConfigError` unless ``spec_json`` is JSON text."""
    try:
        json.loads(spec_json)
    except (TypeError, json.JSONDecodeError) as e:
        raise ConfigError(f"spec_json is not JSON text: {e}", field="spec_json",
                          fix="pass StudySpec.model_dump_json()") from e


def _resume(s: Session, existing: StudyRow, objectives: tuple[tuple[str, str], ...], exist_ok: bool,
            optuna_study_id: int | None) -> StudyInfo:
    """``create_study`` of a name that exists: the existing study, when resuming it is allowed."""
    name = existing.name
    if not exist_ok:
        raise StorageError(f"study {name!r} already exists", fix="choose another name, or resume it")
    stored = json.loads(existing.objectives_json)
    if tuple((str(m), str(d)) for m, d in stored) != objectives:
        raise StorageError(
            f"study {name!r} exists with objectives {objectives_key(stored)}, not {objectives_key(objectives)}",
            fix="resume it with the same objectives, or start a new study",
        )
    if optuna_study_id is not None and existing.optuna_study_id is None:
        existing.optuna_study_id = optuna_study_id
        existing.updated_utc = utc_now()
        s.flush()
    return read_study(s, existing)


def create_study(s: Session, name: str, spec_json: str, objectives: Sequence[tuple[str, str]], *,
                 optuna_study_id: int | None, budget_energy_j: float | None, budget_trials: int | None,
                 budget_wall_s: float | None, exist_ok: bool) -> StudyInfo:
    """Record a new study (see :meth:`storage.base.BaseStorage.create_study`)."""
    checked = check_objectives(objectives)
    check_spec_json(spec_json)
    if not name or len(name) > 255:
        raise ConfigError("study names are 1 to 255 characters", field="name", value=name)
    existing = s.scalar(select(StudyRow).where(StudyRow.name == name))
    if existing is not None:
        return _resume(s, existing, checked, exist_ok, optuna_study_id)
    now = utc_now()
    row = StudyRow(
        name=name, optuna_study_id=optuna_study_id, spec_json=spec_json,
        objectives_json=json.dumps([list(o) for o in checked]), status="RUNNING", created_utc=now,
        updated_utc=now, budget_energy_j=budget_energy_j, budget_trials=budget_trials, budget_wall_s=budget_wall_s,
    )
    s.add(row)
    s.flush()
    return read_study(s, row)


def update_study_spec(s: Session, row: StudyRow, spec_json: str, *, budget_energy_j: float | None,
                      budget_trials: int | None, budget_wall_s: float | None) -> StudyInfo:
    """Replace a study's spec and the budgets given.

    Its persisted fronts are rebuilt when the spec changes which trials may stand on them (see
    :func:`storage.fronts.front_rule`).
    """
    check_spec_json(spec_json)
    rule_changed = front_rule(row.spec_json) != front_rule(spec_json)
    row.spec_json = spec_json
    if rule_changed:
        rebuild_fronts(s, row)
    if budget_energy_j is not None:
        row.budget_energy_j = budget_energy_j
    if budget_trials is not None:
        row.budget_trials = budget_trials
    if budget_wall_s is not None:
        row.budget_wall_s = budget_wall_s
    row.updated_utc = utc_now()
    s.flush()
    return read_study(s, row)


def set_study_status(row: StudyRow, status: str) -> None:
    """Set a study's status: ``RUNNING``, ``COMPLETE``, ``FAILED`` or ``STOPPED``."""
    if status not in STUDY_STATUSES:
        raise ConfigError(f"unknown status; use one of {', '.join(STUDY_STATUSES)}", field="status", value=status)
    row.status = status
    row.updated_utc = utc_now()


def link_optuna_study(row: StudyRow, optuna_study_id: int) -> None:
    """Record Optuna's study id for an existing study."""
    row.optuna_study_id = optuna_study_id
    row.updated_utc = utc_now()
