"""The teacher reference of a study: store, read and cost it, inside a caller's session.

One row per study (``nas_teacher_references``). Storing it again replaces the row, so its cost is
counted once whatever the number of writes: :func:`reference_cost` is what
:func:`storage.studies.study_costs` adds to the trials' costs.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from nas.errors import ConfigError, StorageError
from nas.reference import TeacherReference
from storage.convert import json_dumps, to_float
from storage.models import StudyRow, TeacherReferenceRow, utc_now

__all__ = ["ReferenceCost", "put_teacher_reference", "teacher_reference", "reference_cost", "study_payload"]

T = TypeVar("T")


@dataclass(frozen=True)
class ReferenceCost:
    """What a study's teacher cost it, as stored (see :class:`nas.reference.TeacherReference`)."""

    train_energy_j: float | None
    measure_energy_j: float | None
    co2eq_g: float | None
    is_estimate: bool

    @property
    def total_energy_j(self) -> float | None:
        """Training plus measurement joules (known parts); ``None`` when neither is known."""
        parts = [p for p in (self.train_energy_j, self.measure_energy_j) if p is not None]
        return float(sum(parts)) if parts else None


def _check(st: StudyRow, ref: TeacherReference) -> None:
    """Refuse a teacher whose J/sample was measured on a shared device (decision 5), like a trial's."""
    inf = ref.result.inference
    if inf is not None and not inf.exclusive and inf.energy_per_sample_j is not None:
        raise StorageError(
            f"the teacher of study {st.name!r} was measured while other work shared the device "
            "(exclusive=False), so it is not the teacher's energy",
            fix="measure on the exclusive measurement lane, or store the energy as None",
        )


def put_teacher_reference(s: Session, st: StudyRow, ref: TeacherReference) -> None:
    """Store ``ref`` as the teacher of study ``st``, replacing any earlier one.

    The study's ``updated_utc`` moves on, so readers that cache a study (the dashboard) see the change.
    """
    _check(st, ref)
    row = s.scalar(select(TeacherReferenceRow).where(TeacherReferenceRow.study_id == st.id))
    if row is None:
        row = TeacherReferenceRow(study_id=st.id)
        s.add(row)
    row.name = ref.name
    row.source = ref.source
    row.accuracy = to_float(ref.accuracy)
    row.test_accuracy = to_float(ref.test_accuracy)
    row.energy_per_sample_j = to_float(ref.energy_per_sample_j)
    row.meter = ref.meter
    row.is_estimate = ref.is_estimate if ref.meter is not None else None
    row.hardware_fingerprint = ref.hardware_fingerprint
    row.cost_train_energy_j = to_float(ref.train_energy_j)
    row.cost_measure_energy_j = to_float(ref.measure_energy_j)
    row.cost_co2eq_g = to_float(ref.search_co2eq_g)
    row.cost_is_estimate = ref.cost_is_estimate
    row.payload_json = json_dumps(ref.to_dict())
    row.created_utc = utc_now()
    st.updated_utc = row.created_utc
    s.flush()


def teacher_reference(s: Session, st: StudyRow) -> TeacherReference | None:
    """The teacher of study ``st``, or ``None`` when it has none.

    Raises:
        StorageError: The stored record no longer parses (written by an incompatible version).
    """
    return study_payload(s, TeacherReferenceRow, st, TeacherReference.from_dict, "teacher reference")


def study_payload(s: Session, row_type: Any, st: StudyRow, parse: Callable[[dict[str, Any]], T], what: str) -> T | None:
    """The record a one-row-per-study table (``row_type``: ``study_id``, ``payload_json``) holds for ``st``.

    Raises:
        StorageError: The stored record no longer parses (written by an incompatible version).
    """
    payload = s.scalar(select(row_type.payload_json).where(row_type.study_id == st.id))
    if payload is None:
        return None
    try:
        return parse(json.loads(payload))
    except (ConfigError, ValueError, KeyError, TypeError) as e:
        raise StorageError(f"the {what} of study {st.name!r} cannot be read back: {e}",
                           fix="the row was written by an incompatible version; run the search again") from e


def reference_cost(s: Session, study_id: int) -> ReferenceCost | None:
    """What the study's teacher cost it, from the stored columns; ``None`` when it has no teacher."""
    t = TeacherReferenceRow
    row = s.execute(select(t.cost_train_energy_j, t.cost_measure_energy_j, t.cost_co2eq_g, t.cost_is_estimate)
                    .where(t.study_id == study_id)).one_or_none()
    if row is None:
        return None
    train, measure, co2, estimate = row
    return ReferenceCost(train_energy_j=to_float(train), measure_energy_j=to_float(measure),
                         co2eq_g=to_float(co2), is_estimate=bool(estimate))
