"""The trial state machine, inside a caller's session: RUNNING, then once COMPLETE, FAIL or PRUNED.

:func:`start_trial` records a RUNNING trial; :func:`record_rung` adds its dev accuracy at a rung as the report
arrives. :func:`finish_trial`, :func:`fail_trial`,
:func:`prune_trial` and :func:`mark_unfinished_failed` end one, all through :func:`_close_trial`, which
sets the state, the reason, the times and the cost in one place. A trial that was never started is
created on the spot when it ends. A COMPLETE trial refreshes its study's persisted front in the same
transaction.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from nas.config import Candidate
from nas.errors import ConfigError, StorageError
from nas.records import FailKind, InferenceEnergy, TrialResult
from storage.convert import inference_reading, json_dumps, reading_rows, set_candidate, set_cost, set_result
from storage.fronts import rewrite_front
from storage.models import ArtefactRow, StudyRow, TrialRow, TrialRungRow, utc_now
from storage.remeasured import FINAL, REMEASURE, TIE_BREAK
from storage.views import NO_HARDWARE, TrialCost, candidate_hash

__all__ = [
    "trial_row",
    "start_trial",
    "record_rung",
    "finish_trial",
    "fail_trial",
    "prune_trial",
    "mark_unfinished_failed",
    "add_artefact",
    "remove_artefacts",
    "measured_forms",
    "add_remeasurement",
    "add_tie_reading",
    "refine_trial",
]

_RESULT_STATES = {"COMPLETE": "COMPLETE", "FAIL": "FAIL", "PRUNED": "PRUNED"}


def trial_row(s: Session, st: StudyRow, number: int) -> TrialRow | None:
    """Trial ``number`` of a study, if it is recorded."""
    return s.scalar(select(TrialRow).where(TrialRow.study_id == st.id, TrialRow.trial_number == number))


def start_trial(s: Session, st: StudyRow, number: int, candidate: Candidate, optuna_trial_id: int | None) -> None:
    """Record a trial as RUNNING with its candidate.

    Raises:
        StorageError: The trial number is already recorded.
    """
    if trial_row(s, st, number) is not None:
        raise StorageError(f"trial {number} of study {st.name!r} is already recorded", fix="use the next trial number")
    row = TrialRow(study_id=st.id, trial_number=number, optuna_trial_id=optuna_trial_id, state="RUNNING",
                   started_utc=utc_now())
    set_candidate(row, candidate)
    s.add(row)


def _step_ok(step: object) -> bool:
    return isinstance(step, int) and not isinstance(step, bool) and step > 0


def _accuracy_ok(accuracy: object) -> bool:
    return isinstance(accuracy, (int, float)) and math.isfinite(accuracy) and 0.0 <= accuracy <= 1.0


def _check_rung(step: int, accuracy: float) -> tuple[int, float]:
    """``(step, accuracy)`` as stored.

    Raises:
        ConfigError: A step that is not a positive integer, or an accuracy outside [0, 1] (NaN included).
    """
    if not _step_ok(step):
        raise ConfigError("a rung is a positive number of training steps", field="step", value=step)
    if not _accuracy_ok(accuracy):
        raise ConfigError("a rung's dev accuracy is a fraction between 0 and 1", field="accuracy", value=accuracy)
    return step, float(accuracy)


def _put_rungs(row: TrialRow, rungs: Iterable[tuple[int, float]]) -> None:
    """Add ``(step, accuracy)`` rungs to a trial row; a step already stored takes the new accuracy."""
    by_step = {r.step: r for r in row.rungs}
    for step, acc in (_check_rung(st, a) for st, a in rungs):
        if step in by_step:
            by_step[step].accuracy = acc
        else:
            by_step[step] = TrialRungRow(step=step, accuracy=acc, created_utc=utc_now())
            row.rungs.append(by_step[step])


def record_rung(s: Session, st: StudyRow, number: int, step: int, accuracy: float) -> None:
    """Store a RUNNING trial's dev accuracy at a rung (see :meth:`storage.base.BaseStorage.record_rung`).

    Raises:
        StorageError: Unknown trial, or one that has finished.
        ConfigError: A bad step or accuracy.
    """
    row = trial_row(s, st, number)
    if row is None:
        raise StorageError(f"study {st.name!r} has no trial {number}", fix="start the trial before its rungs")
    if row.state != "RUNNING":
        raise StorageError(f"trial {number} of study {st.name!r} is already {row.state}; only a RUNNING trial "
                           "reports rungs")
    _put_rungs(row, [(step, accuracy)])
    st.updated_utc = utc_now()  # readers (the dashboard) see the study changed


def _running_row(s: Session, st: StudyRow, number: int, candidate: Candidate | None,
                 optuna_trial_id: int | None) -> TrialRow:
    """The RUNNING row of a trial, created on the spot if the trial was never started."""
    row = trial_row(s, st, number)
    if row is None:
        row = TrialRow(study_id=st.id, trial_number=number, state="RUNNING")
        if candidate is not None:
            set_candidate(row, candidate)
        s.add(row)
    elif row.state != "RUNNING":
        raise StorageError(f"trial {number} of study {st.name!r} is already {row.state}; a trial finishes once")
    elif candidate is not None:
        if row.candidate_hash is None:
            set_candidate(row, candidate)
        elif row.candidate_hash != candidate_hash(candidate):
            raise StorageError(f"trial {number} of study {st.name!r} was started with another candidate",
                               fix="finish a trial with the result of the candidate it started with")
    if optuna_trial_id is not None:
        row.optuna_trial_id = optuna_trial_id
    return row


def _close_trial(st: StudyRow, row: TrialRow, state: str, reason: str | None, *, kind: FailKind | None = None,
                 cost: TrialCost | None) -> None:
    """End a RUNNING trial.

    Sets its state, reason (and kind, for a FAIL), finish time and cost, and the study's last change.
    """
    row.state = state
    row.fail_reason = reason
    row.fail_kind = (kind or FailKind.CANDIDATE).value if state == "FAIL" else None
    row.finished_utc = utc_now()
    if row.started_utc is None:
        row.started_utc = row.finished_utc
    if cost is not None:
        set_cost(row, cost)
    st.updated_utc = row.finished_utc


def _check_result(number: int, result: TrialResult) -> str:
    """The trial state a result ends in.

    Raises:
        StorageError: An unknown status, or inference energy read on a shared device (decision 5).
    """
    inf = result.inference
    if result.status == "COMPLETE" and inf is not None and not inf.exclusive and inf.energy_per_sample_j is not None:
        raise StorageError(
            f"trial {number}: the inference energy was read while the device was shared "
            "(exclusive=False), so it is not the candidate's energy",
            fix="measure on the exclusive measurement lane, or store the energy as None",
        )
    state = _RESULT_STATES.get(result.status)
    if state is None:
        raise StorageError(f"trial {number}: unknown result status {result.status!r}")
    return state


def finish_trial(s: Session, st: StudyRow, number: int, result: TrialResult, *, cost: TrialCost,
                 fail_kind: FailKind, optuna_trial_id: int | None) -> None:
    """Store a trial's result, readings, cost and weights, and refresh its persisted front.

    See :meth:`storage.base.BaseStorage.finish_trial`.
    """
    state = _check_result(number, result)
    row = _running_row(s, st, number, result.candidate, optuna_trial_id)
    reason = (result.error or "failed without a reason") if state == "FAIL" else None
    set_result(row, result)
    if result.train is not None:  # rungs a writer did not record as they arrived (e.g. the Python API)
        _put_rungs(row, [(st, a) for st, a in result.train.rung_accuracies if _step_ok(st) and _accuracy_ok(a)])
    _close_trial(st, row, state, reason, kind=fail_kind, cost=cost)
    row.readings.extend(reading_rows(result))
    s.flush()
    if result.weights_path:
        p = Path(result.weights_path)
        s.add(ArtefactRow(trial_id=row.id, kind="weights", path=str(p), sha256=None,
                          size_bytes=p.stat().st_size if p.is_file() else None, created_utc=row.finished_utc))
    if state == "COMPLETE":
        rewrite_front(s, st, row.hardware_fingerprint or NO_HARDWARE, new_row=row)


def fail_trial(s: Session, st: StudyRow, number: int, reason: str, *, candidate: Candidate | None,
               cost: TrialCost | None, kind: FailKind, optuna_trial_id: int | None) -> None:
    """Mark a trial FAIL with a reason and its kind, creating it if it was never started."""
    row = _running_row(s, st, number, candidate, optuna_trial_id)
    _close_trial(st, row, "FAIL", reason, kind=kind, cost=cost)


def prune_trial(s: Session, st: StudyRow, number: int, reason: str, *, cost: TrialCost | None,
                optuna_trial_id: int | None) -> None:
    """Mark a RUNNING trial PRUNED (stopped early by the scheduler) without a result."""
    row = _running_row(s, st, number, None, optuna_trial_id)
    _close_trial(st, row, "PRUNED", reason, cost=cost)


def mark_unfinished_failed(s: Session, st: StudyRow, reason: str) -> list[int]:
    """Every RUNNING trial becomes FAIL (``INTERRUPTED``) with ``reason``; returns their numbers, ascending."""
    rows = s.scalars(select(TrialRow).where(TrialRow.study_id == st.id, TrialRow.state == "RUNNING")
                     .order_by(TrialRow.trial_number)).all()
    for row in rows:
        # it ran, but its worker's readings went with the driver: its joules are unknown
        _close_trial(st, row, "FAIL", reason, kind=FailKind.INTERRUPTED, cost=TrialCost(meter="unknown"))
    return [r.trial_number for r in rows]


def add_artefact(s: Session, st: StudyRow, number: int, kind: str, path: str | os.PathLike[str], *,
                 sha256: str | None, size_bytes: int | None) -> None:
    """Record a file a trial produced."""
    row = trial_row(s, st, number)
    if row is None:
        raise StorageError(f"unknown trial {number} of study {st.name!r}")
    s.add(ArtefactRow(trial_id=row.id, kind=kind, path=os.fspath(path), sha256=sha256, size_bytes=size_bytes,
                      created_utc=utc_now()))


def remove_artefacts(s: Session, st: StudyRow, number: int, kind: str) -> list[str]:
    """Forget a trial's artefacts of ``kind``; returns their paths for the caller to delete."""
    row = trial_row(s, st, number)
    if row is None:
        return []
    rows = s.scalars(select(ArtefactRow).where(ArtefactRow.trial_id == row.id, ArtefactRow.kind == kind)).all()
    paths = [a.path for a in rows]
    for a in rows:
        s.delete(a)
    return paths


def measured_forms(s: Session, st: StudyRow, number: int, hardware: str) -> set[str]:
    """The serving forms trial ``number`` already has a reading of on ``hardware`` (its own, or re-measured)."""
    row = trial_row(s, st, number)
    if row is None:
        return set()
    return {r.serving_form or r.kind.removeprefix("inference:") for r in row.readings
            if r.kind.startswith("inference:") and r.hardware_fingerprint == hardware}


def add_remeasurement(s: Session, st: StudyRow, number: int, readings: Sequence[InferenceEnergy]) -> list[str]:
    """Store readings of trial ``number`` re-measured on another machine; the forms added.

    A reading of a form the trial already has on that machine is not added again, so re-running
    ``nas remeasure`` adds nothing and loses nothing.

    Raises:
        StorageError: The trial does not exist or is not COMPLETE.
    """
    row = trial_row(s, st, number)
    if row is None or row.state != "COMPLETE":
        state = "missing" if row is None else row.state
        raise StorageError(f"trial {number} of study {st.name!r} is {state}; only COMPLETE trials are re-measured",
                           field="--trials", value=number, fix=f"pick COMPLETE trials (`nas pareto {st.name}`)")
    added, machines = [], set()
    for inf in readings:
        hardware = inf.provenance.hardware_fingerprint
        if inf.serving_form in measured_forms(s, st, number, hardware):
            continue
        reading = inference_reading(inf)
        reading.origin = REMEASURE
        reading.record_json = json_dumps(inf.to_dict())
        row.readings.append(reading)
        added.append(inf.serving_form)
        machines.add(hardware)
    s.flush()
    for hardware in sorted(machines):
        rewrite_front(s, st, hardware)
    if added:
        st.updated_utc = utc_now()  # readers (the dashboard) see the study changed
    return added


def add_tie_reading(s: Session, st: StudyRow, number: int, inf: InferenceEnergy) -> None:
    """Make ``inf`` trial ``number``'s reading of record (a tie within noise settled, ``front.ties``).

    ``inf`` is the trial's primary form measured again, on its own machine, with more windows.

    The reading it replaces stays in the readings table; the new one is added with origin ``tie_break``;
    its joules (and CO2, when both are known) add to the trial's measuring cost, so the study's search cost
    counts them; the machine's front is recomputed.

    Raises:
        StorageError: The trial is missing or not COMPLETE, or ``inf`` is of another machine or form.
    """
    row = trial_row(s, st, number)
    if row is None or row.state != "COMPLETE" or not row.result_json:
        raise StorageError(f"trial {number} of study {st.name!r} is {'missing' if row is None else row.state}; "
                           "only a COMPLETE trial's reading can be settled", fix="pick a member of the front")
    result = TrialResult.from_dict(json.loads(row.result_json))
    own = result.inference
    if own is None or (inf.provenance.hardware_fingerprint, inf.serving_form) != (
            own.provenance.hardware_fingerprint, own.serving_form):
        raise StorageError(f"trial {number}: a tie is settled by its own form on its own machine "
                           f"({own.serving_form if own else None} on "
                           f"{own.provenance.hardware_fingerprint if own else None}), not by this reading",
                           fix="measure the trial's primary form again where it ran (`nas remeasure` is for "
                               "other machines)")
    inf = dataclasses.replace(inf, provenance=dataclasses.replace(inf.provenance, tie_break=True))
    set_result(row, dataclasses.replace(result, inference=inf))
    reading = inference_reading(inf)
    reading.origin = TIE_BREAK
    reading.record_json = json_dumps(inf.to_dict())
    row.readings.append(reading)
    joules, co2 = inf.protocol_energy_j, inf.protocol_co2eq_g
    if row.cost_measure_energy_j is not None:  # an unknown part stays unknown
        row.cost_measure_energy_j = row.cost_measure_energy_j + joules if joules is not None else None
    if row.cost_co2eq_g is not None:
        row.cost_co2eq_g = row.cost_co2eq_g + co2 if co2 is not None else None
    row.cost_is_estimate = bool(row.cost_is_estimate) or inf.is_estimate
    s.flush()
    rewrite_front(s, st, row.hardware_fingerprint or NO_HARDWARE)
    st.updated_utc = utc_now()


def _add(total: float | None, part: float | None) -> float | None:
    """``total + part``; an unknown side makes the sum unknown (as a trial's own cost would be)."""
    return None if total is None or part is None else total + part


def refine_trial(s: Session, st: StudyRow, number: int, result: TrialResult, cost: TrialCost) -> list[str]:
    """Replace a COMPLETE trial's result with the same candidate trained further, and add what that cost.

    A supernet study fine-tunes its front this way before it ends (``fidelity.final_steps``). The new
    result's readings are added with origin ``final``; the first result's readings stay. Its weights
    replace the trial's. Returns the paths of the replaced weights, for the caller to delete.

    Raises:
        StorageError: The trial is missing or not COMPLETE, the result is not COMPLETE or is of another
            candidate, or its energy was read on a shared device.
    """
    row = trial_row(s, st, number)
    if row is None or row.state != "COMPLETE":
        raise StorageError(f"trial {number} of study {st.name!r} is {'missing' if row is None else row.state}; "
                           "only a COMPLETE trial is refined", fix="refine the members of the front")
    if _check_result(number, result) != "COMPLETE" or candidate_hash(result.candidate) != row.candidate_hash:
        raise StorageError(f"trial {number}: a refined result is COMPLETE and of the trial's own candidate",
                           fix="store a failed refinement nowhere: the first result stands")
    old_hardware = row.hardware_fingerprint or NO_HARDWARE
    set_result(row, result)
    for reading in reading_rows(result):
        reading.origin = FINAL
        row.readings.append(reading)
    row.cost_train_energy_j = _add(row.cost_train_energy_j, cost.train_energy_j)
    row.cost_measure_energy_j = _add(row.cost_measure_energy_j, cost.measure_energy_j)
    row.cost_co2eq_g = _add(row.cost_co2eq_g, cost.co2eq_g)
    row.cost_wall_s = (row.cost_wall_s or 0.0) + cost.wall_s
    row.cost_gpu_s = (row.cost_gpu_s or 0.0) + cost.gpu_s
    row.cost_is_estimate = bool(row.cost_is_estimate) or cost.is_estimate
    replaced: list[str] = []
    if result.weights_path:
        replaced = remove_artefacts(s, st, number, "weights")
        p = Path(result.weights_path)
        s.add(ArtefactRow(trial_id=row.id, kind="weights", path=str(p), sha256=None,
                          size_bytes=p.stat().st_size if p.is_file() else None, created_utc=utc_now()))
    s.flush()
    for hardware in sorted({old_hardware, row.hardware_fingerprint or NO_HARDWARE}):
        rewrite_front(s, st, hardware)
    st.updated_utc = utc_now()
    return replaced
