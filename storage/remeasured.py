"""Trials re-measured on other hardware (``nas remeasure``): their readings, and their values there.

A trial's own inference readings were taken on one machine, its ``hardware_fingerprint``. ``nas remeasure``
measures the stored model again elsewhere and adds ``inference:<form>`` readings with ``origin =
"remeasure"`` and the whole :class:`~nas.records.InferenceEnergy` in ``record_json``. On that machine the
trial counts as a :class:`Measured`: its result with the inference readings of that machine in place of its
own (the rest, accuracy included, is what the trial measured), so the front of each machine is computed
by the one front rule of :mod:`storage.fronts` from that machine's readings only.

Which reading stands for a trial on a machine: the one of the study's primary serving form
(``measure.primary_form``) when it was re-measured there, else the earliest reading taken there.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Iterable
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from nas.errors import StorageError
from nas.feasibility import MEASURED_NAMES
from nas.records import InferenceEnergy, TrialResult
from nas.spec import StudySpec
from storage.convert import row_values, trial_view
from storage.models import EnergyReadingRow, StudyRow, TrialRow
from storage.views import NO_HARDWARE, TrialView

__all__ = ["REMEASURE", "TIE_BREAK", "FINAL", "Measured", "remeasured_readings", "measured_on", "own_measurement"]

#: ``nas_energy_readings.origin`` of a reading ``nas remeasure`` added.
REMEASURE = "remeasure"
#: ``nas_energy_readings.origin`` of a reading taken again with more windows to settle a tie within noise
#: (``front.ties``); it became the trial's reading of record, and the one it replaced stays (origin None).
TIE_BREAK = "tie_break"
#: ``nas_energy_readings.origin`` of the readings of a supernet study's front member fine-tuned further before
#: the search ended (``fidelity.final_steps``); the result they belong to replaced the trial's first one.
FINAL = "final"


@dataclass(frozen=True)
class Measured:
    """A COMPLETE trial as measured on one machine: its row, that machine, its flat values there.

    ``record`` is the trial's result with that machine's readings in place of its own; ``None`` on the
    machine the trial itself measured on (the row's own result and values).
    """

    row: TrialRow
    hardware: str
    values: dict[str, Any]
    record: TrialResult | None = None

    def noise(self) -> tuple[float | None, int | None]:
        """The CV and window count of the inference reading that stands for the trial on this machine."""
        if self.record is not None:
            inf = self.record.inference
            return (inf.cv, inf.n_windows) if inf is not None else (None, None)
        try:
            inf_dict = (json.loads(self.row.result_json or "null") or {}).get("inference") or {}
        except (ValueError, AttributeError):
            return None, None
        return inf_dict.get("cv"), inf_dict.get("n_windows")

    def view(self, study: str) -> TrialView:
        """The trial record as seen on this machine (its readings, meter and fingerprint)."""
        base = trial_view(study, self.row)
        if self.record is None:
            return base
        inf = self.record.inference
        return dataclasses.replace(base, result=self.record, hardware_fingerprint=self.hardware,
                                   meter=inf.meter if inf else None, is_estimate=inf.is_estimate if inf else None,
                                   flat=MappingProxyType(self.values), remeasured=True)


@functools.lru_cache(maxsize=128)
def _primary_form(spec_json: str) -> str | None:
    try:
        return StudySpec.model_validate_json(spec_json).measure.primary
    except ValueError:
        return None  # a study created through the Python API: earliest reading first


def own_measurement(row: TrialRow) -> Measured:
    """A trial on the machine it measured on itself."""
    return Measured(row=row, hardware=row.hardware_fingerprint or NO_HARDWARE, values=row_values(row))


def remeasured_readings(s: Session, st: StudyRow) -> dict[int, list[EnergyReadingRow]]:
    """The re-measured readings of a study's trials, by trial id, oldest first."""
    q = (select(EnergyReadingRow).join(TrialRow, EnergyReadingRow.trial_id == TrialRow.id)
         .where(TrialRow.study_id == st.id, EnergyReadingRow.origin == REMEASURE)
         .order_by(EnergyReadingRow.id))
    out: dict[int, list[EnergyReadingRow]] = {}
    for r in s.scalars(q).all():
        out.setdefault(r.trial_id, []).append(r)
    return out


def _record(r: EnergyReadingRow) -> InferenceEnergy:
    try:
        return InferenceEnergy.from_dict(json.loads(r.record_json or "null"))
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise StorageError(f"a re-measured reading (id {r.id}) cannot be read back: {e}",
                           fix="re-run `nas remeasure` with the energy-nas version that wrote it") from e


def measured_on(row: TrialRow, hardware: str, readings: Iterable[EnergyReadingRow], spec_json: str) -> Measured | None:
    """``row`` as measured on ``hardware``: its own measurement there, else its re-measured readings there.

    ``None`` when the trial has no reading on that machine (or no stored result).
    """
    if (row.hardware_fingerprint or NO_HARDWARE) == hardware:
        return own_measurement(row)
    there = [r for r in readings if r.hardware_fingerprint == hardware]
    if not there or not row.result_json:
        return None
    primary = _primary_form(spec_json)
    first = next((r for r in there if r.serving_form == primary), there[0])
    result = TrialResult.from_dict(json.loads(row.result_json))
    record = dataclasses.replace(result, inference=_record(first),
                                 other_forms=tuple(_record(r) for r in there if r is not first))
    values = row_values(row)
    objectives = record.objectives()
    values.update({k: objectives[k] for k in MEASURED_NAMES})  # what a reading decides; the rest is the trial's
    inf = record.inference
    assert inf is not None  # just set
    values.update(meter=inf.meter, is_estimate=inf.is_estimate, hardware=hardware)
    return Measured(row=row, hardware=hardware, values=values, record=record)
