"""Rows to frozen records and records to row values: the only place that knows both shapes.

Rows (:mod:`storage.models`) never leave the storage package; callers get the records of
:mod:`storage.views`. JSON is written with NaN and infinities as ``null``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from types import MappingProxyType
from typing import Any

from nas.config import Candidate
from nas.errors import ConfigError, StorageError
from nas.records import FailKind, InferenceEnergy, TrainSummary, TrialResult
from storage.models import ArtefactRow, EnergyReadingRow, ParetoFrontRow, StudyRow, TrialRow, utc_now
from storage.views import (
    FILTER_NAMES,
    NO_HARDWARE,
    OBJECTIVE_NAMES,
    REPORTED_NAMES,
    ArtefactView,
    FrontEntry,
    ReadingView,
    StudyCosts,
    StudyInfo,
    TrialCost,
    TrialView,
    candidate_hash,
    finite_or_none,
)

__all__ = [
    "json_dumps",
    "to_float",
    "nan_if_none",
    "objectives_key",
    "objectives_of",
    "row_values",
    "study_info",
    "trial_view",
    "reading_view",
    "artefact_view",
    "front_entry",
    "set_candidate",
    "set_result",
    "set_cost",
    "reading_rows",
    "inference_reading",
]

#: Flat metric columns of ``nas_trials`` filled from :meth:`TrialResult.objectives`.
_OBJECTIVE_COLUMNS = ("accuracy", "macro_f1", "energy_per_sample_j", "energy_per_sample_net_j", "latency_p50_ms",
                      "latency_p95_ms", "throughput_samples_s", "flops_per_sample", "train_energy_j")


def json_dumps(value: Any) -> str:
    """JSON text with NaN and infinities written as null (valid for SQLite's and Postgres' JSON)."""

    def clean(v: Any) -> Any:
        if isinstance(v, float):
            return finite_or_none(v)
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(value), allow_nan=False, separators=(",", ":"))


def to_float(value: float | int | None) -> float | None:
    """``value`` as a finite float, or ``None`` (for NaN, infinities and ``None``)."""
    if value is None:
        return None
    f = float(value)
    return f if math.isfinite(f) else None


def nan_if_none(v: Any) -> float:
    """``v`` as a float, NaN when it is missing or not a number (dominance treats NaN as worst)."""
    if v is None:
        return math.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def objectives_key(objectives: Sequence[tuple[str, str]]) -> str:
    """``accuracy:maximize,energy_per_sample_j:minimize``: the objectives as one string."""
    return ",".join(f"{m}:{d}" for m, d in objectives)


def objectives_of(row: StudyRow) -> tuple[tuple[str, str], ...]:
    """A study's ``(metric, direction)`` pairs."""
    return tuple((str(m), str(d)) for m, d in json.loads(row.objectives_json))


def row_values(row: TrialRow) -> dict[str, Any]:
    """The flat values of a trial (the keys of :data:`FILTER_NAMES`), straight from its columns."""
    values: dict[str, Any] = dict.fromkeys(FILTER_NAMES)
    if row.candidate_flat_json:
        values.update(json.loads(row.candidate_flat_json))
    for name in (*OBJECTIVE_NAMES, *REPORTED_NAMES):
        v = getattr(row, name)
        values[name] = float(v) if v is not None else None
    values["meter"] = row.meter
    values["is_estimate"] = row.is_estimate
    values["hardware"] = row.hardware_fingerprint
    values["number"] = row.trial_number
    values["state"] = row.state
    return values


def study_info(row: StudyRow, costs: StudyCosts) -> StudyInfo:
    """A study record: the row's fields plus its costs and counts, derived from its trials."""
    return StudyInfo(
        name=row.name, optuna_study_id=row.optuna_study_id, spec_json=row.spec_json,
        objectives=objectives_of(row), status=row.status, created_utc=row.created_utc,
        updated_utc=row.updated_utc, budget_energy_j=row.budget_energy_j, budget_trials=row.budget_trials,
        budget_wall_s=row.budget_wall_s, train_energy_j=costs.train_energy_j,
        measure_energy_j=costs.measure_energy_j, co2eq_g=costs.co2eq_g, wall_s=costs.wall_s, gpu_s=costs.gpu_s,
        cost_includes_estimate=costs.cost_includes_estimate, n_trials_complete=costs.n_trials_complete,
        n_trials_failed=costs.n_trials_failed, n_trials_pruned=costs.n_trials_pruned,
        n_trials_unmetered=costs.n_trials_unmetered, teacher_energy_j=costs.teacher_energy_j,
        supernet_energy_j=costs.supernet_energy_j,
    )


def _trial_cost(row: TrialRow) -> TrialCost | None:
    if row.cost_meter is None:
        return None
    return TrialCost(
        train_energy_j=row.cost_train_energy_j, measure_energy_j=row.cost_measure_energy_j,
        co2eq_g=row.cost_co2eq_g, wall_s=row.cost_wall_s or 0.0, gpu_s=row.cost_gpu_s or 0.0,
        meter=row.cost_meter, is_estimate=bool(row.cost_is_estimate),
    )


def trial_view(study: str, row: TrialRow) -> TrialView:
    """A trial record.

    Raises:
        StorageError: The stored candidate or result no longer parses (an incompatible writer).
    """
    try:
        candidate = Candidate.from_json(row.candidate_json) if row.candidate_json else None
        result = TrialResult.from_dict(json.loads(row.result_json)) if row.result_json else None
    except (ConfigError, ValueError, KeyError, TypeError) as e:
        raise StorageError(
            f"trial {row.trial_number} of study {study!r} cannot be read back: {e}",
            fix="the row was written by an incompatible version; re-run the trial",
        ) from e
    return TrialView(
        study=study, number=row.trial_number, state=row.state, fail_reason=row.fail_reason,
        fail_kind=FailKind(row.fail_kind) if row.fail_kind else None, optuna_trial_id=row.optuna_trial_id,
        candidate=candidate, candidate_hash=row.candidate_hash, result=result,
        hardware_fingerprint=row.hardware_fingerprint, meter=row.meter, is_estimate=row.is_estimate,
        cost=_trial_cost(row), started_utc=row.started_utc, finished_utc=row.finished_utc,
        flat=MappingProxyType(row_values(row)),
        rung_accuracies=tuple((r.step, r.accuracy) for r in sorted(row.rungs, key=lambda r: r.step)),
    )


def reading_view(trial_number: int, r: EnergyReadingRow) -> ReadingView:
    """An energy reading record."""
    return ReadingView(
        trial_number=trial_number, kind=r.kind, meter=r.meter, is_estimate=r.is_estimate, exclusive=r.exclusive,
        energy_j=r.energy_j, energy_per_sample_j=r.energy_per_sample_j,
        energy_per_sample_net_j=r.energy_per_sample_net_j, idle_w=r.idle_w, cv=r.cv, duration_s=r.duration_s,
        co2eq_g=r.co2eq_g, hardware_fingerprint=r.hardware_fingerprint,
        provenance=MappingProxyType(json.loads(r.provenance_json)) if r.provenance_json else None,
        created_utc=r.created_utc, origin=r.origin,
    )


def artefact_view(trial_number: int, a: ArtefactRow) -> ArtefactView:
    """An artefact record."""
    return ArtefactView(trial_number=trial_number, kind=a.kind, path=a.path, sha256=a.sha256,
                        size_bytes=a.size_bytes, created_utc=a.created_utc)


def front_entry(r: ParetoFrontRow) -> FrontEntry:
    """A persisted front member."""
    return FrontEntry(hardware_fingerprint=r.hardware_fingerprint, objectives_key=r.objectives_key,
                      trial_number=r.trial_number, position=r.position,
                      values=MappingProxyType(json.loads(r.values_json)), updated_utc=r.updated_utc, clear=r.clear)


# --- records to rows -------------------------------------------------------------------------------
def set_candidate(row: TrialRow, candidate: Candidate) -> None:
    """Store a candidate on its trial row: JSON, hash, flat values and the indexed columns."""
    flat = candidate.flat()
    row.candidate_json = candidate.to_json()
    row.candidate_hash = candidate_hash(candidate)
    row.candidate_flat_json = json_dumps(flat)
    row.weight_bits = int(flat["weight_bits"])
    row.attention = str(flat["attention"])


def set_result(row: TrialRow, result: TrialResult) -> None:
    """Store a result on its trial row: the JSON, the flat metric columns and the measurement's origin."""
    objectives = result.objectives()
    inf = result.inference
    row.result_json = json_dumps(result.to_dict())
    row.task = result.task
    for name in _OBJECTIVE_COLUMNS:
        setattr(row, name, to_float(objectives[name]))
    for name, value in result.reported().items():
        setattr(row, name, to_float(value))
    row.params = result.params
    row.size_bytes = result.size_bytes
    row.meter = inf.meter if inf else None
    row.is_estimate = inf.is_estimate if inf else None
    row.hardware_fingerprint = inf.provenance.hardware_fingerprint if inf else NO_HARDWARE
    # the board it was measured on, else the one it was placed on (a trial that failed before measuring)
    row.device_uuid = (inf.provenance.device_uuid if inf else None) or (
        result.placement.uuid if result.placement else None)


def set_cost(row: TrialRow, cost: TrialCost) -> None:
    """Record what a trial cost; the study's totals are derived from these."""
    row.cost_train_energy_j = to_float(cost.train_energy_j)
    row.cost_measure_energy_j = to_float(cost.measure_energy_j)
    row.cost_co2eq_g = to_float(cost.co2eq_g)
    row.cost_wall_s = to_float(cost.wall_s)
    row.cost_gpu_s = to_float(cost.gpu_s)
    row.cost_meter = cost.meter
    row.cost_is_estimate = cost.is_estimate


def _train_reading(tr: TrainSummary, kind: str) -> EnergyReadingRow:
    prov = tr.provenance
    prov_dict = prov.to_dict() if prov is not None else {"device": tr.device, "teacher": tr.teacher,
                                                           "steps": tr.steps}
    return EnergyReadingRow(
        kind=kind, meter=tr.meter, is_estimate=tr.is_estimate, exclusive=False,
        energy_j=to_float(tr.energy_j), duration_s=to_float(tr.wall_s), co2eq_g=to_float(tr.co2eq_g),
        n_windows=prov.n_windows if prov else None, window_s=to_float(prov.window_s) if prov else None,
        batch_size=prov.batch_size if prov else None, seq_len=prov.seq_len if prov else None,
        dtype=prov.dtype if prov else None, kernels=prov.kernels if prov else None,
        device_uuid=prov.device_uuid if prov else None, hardware_fingerprint=tr.hardware_fingerprint,
        provenance_json=json_dumps({**prov_dict, "teacher": tr.teacher, "steps": tr.steps}),
        created_utc=utc_now(),
    )


def inference_reading(inf: InferenceEnergy) -> EnergyReadingRow:
    """The row of one inference reading (one serving form)."""
    prov = inf.provenance
    return EnergyReadingRow(
        kind=f"inference:{inf.serving_form}", meter=inf.meter, is_estimate=inf.is_estimate,
        exclusive=inf.exclusive, energy_j=None, energy_per_sample_j=to_float(inf.energy_per_sample_j),
        energy_per_sample_net_j=to_float(inf.energy_per_sample_net_j), idle_w=to_float(inf.idle_w),
        cv=to_float(inf.cv), duration_s=to_float(inf.n_windows * inf.window_s),
        co2eq_g=to_float(inf.co2eq_g_per_sample), batch_size=inf.batch_size, seq_len=inf.seq_len,
        n_windows=inf.n_windows, window_s=to_float(inf.window_s), serving_form=inf.serving_form,
        dtype=inf.dtype, kernels=inf.kernels, device_uuid=prov.device_uuid,
        hardware_fingerprint=prov.hardware_fingerprint, provenance_json=json_dumps(prov.to_dict()),
        created_utc=utc_now(),
    )


def reading_rows(result: TrialResult) -> list[EnergyReadingRow]:
    """One row per energy reading of a result.

    Its inference readings (one per serving form, the primary first, then the primary's reading before
    training when the trial measured first and then trained; its provenance says ``before_training``), then
    its training (with the teacher-outputs cache and any teacher training behind it).
    """
    readings = (result.inference, *result.other_forms, result.first_reading)
    out = [inference_reading(inf) for inf in readings if inf is not None]
    tr = result.train
    if tr is not None and tr.teacher_cache is not None:
        out.append(_train_reading(tr.teacher_cache, "teacher-cache"))
    while tr is not None:
        out.append(_train_reading(tr, "train" if tr is result.train else "teacher-train"))
        tr = tr.teacher_training
    return out

