"""A study's weight-sharing supernet: store, read and cost it, inside a caller's session.

One row per study (``nas_supernets``), replaced at every checkpoint of the supernet's training, so its
cost is counted once however often it is written, and a run killed after a checkpoint still has its
joules counted: :func:`supernet_cost` is what :func:`storage.studies.study_costs` adds to the trials' costs.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from nas.supernet_record import SupernetRecord
from storage.convert import json_dumps, to_float
from storage.models import StudyRow, SupernetRow, utc_now
from storage.references import ReferenceCost, study_payload

__all__ = ["put_supernet", "supernet", "supernet_cost"]


def put_supernet(s: Session, st: StudyRow, rec: SupernetRecord) -> None:
    """Store ``rec`` as the supernet of study ``st``, replacing the earlier record (its progress and cost)."""
    row = s.scalar(select(SupernetRow).where(SupernetRow.study_id == st.id))
    if row is None:
        row = SupernetRow(study_id=st.id)
        s.add(row)
    row.steps_done = rec.steps_done
    row.steps_total = rec.steps_total
    row.meter = rec.train.meter
    row.cost_train_energy_j = to_float(rec.train.energy_j)
    row.cost_co2eq_g = to_float(rec.train.co2eq_g)
    row.cost_wall_s = float(rec.train.wall_s)
    row.cost_is_estimate = bool(rec.train.is_estimate)
    row.payload_json = json_dumps(rec.to_dict())
    row.updated_utc = utc_now()
    st.updated_utc = row.updated_utc
    s.flush()


def supernet(s: Session, st: StudyRow) -> SupernetRecord | None:
    """The supernet of study ``st``, or ``None`` when it has none.

    Raises:
        StorageError: The stored record no longer parses (written by an incompatible version).
    """
    return study_payload(s, SupernetRow, st, SupernetRecord.from_dict, "supernet record")


def supernet_cost(s: Session, study_id: int) -> ReferenceCost | None:
    """What the study's supernet cost it so far (training only); ``None`` when it has none."""
    t = SupernetRow
    row = s.execute(select(t.cost_train_energy_j, t.cost_co2eq_g, t.cost_is_estimate)
                    .where(t.study_id == study_id)).one_or_none()
    if row is None:
        return None
    train, co2, estimate = row
    return ReferenceCost(train_energy_j=to_float(train), measure_energy_j=None, co2eq_g=to_float(co2),
                         is_estimate=bool(estimate))
