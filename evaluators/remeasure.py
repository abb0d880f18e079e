"""Measure a stored, trained model again on this machine (what ``nas remeasure`` runs per trial).

The model is measured exactly as a trial measures it (:func:`evaluators.serving.measure_forms`: the serving
forms asked for, the device's lane held alone, the meter the study names), so a re-measured reading and a
search's own reading of the same machine are comparable.
"""

from __future__ import annotations

from typing import Any

from evaluators.pipeline import TrialContext
from evaluators.placement import place
from evaluators.provenance import device_snapshot
from evaluators.serving import measure_forms
from nas.config import Candidate, MeasureConfig, TrainConfig
from nas.records import InferenceEnergy

__all__ = ["this_hardware", "remeasure_model"]


def this_hardware(device: str) -> str:
    """The hardware fingerprint a reading taken on ``device`` here carries (the device model).

    The same rule as :attr:`nas.records.Provenance.hardware_fingerprint`: the device's name, else the
    device string.
    """
    where = place(device)
    name = device_snapshot(where.device).get("device_name")
    return str(name) if name else where.device


def remeasure_model(model: Any, candidate: Candidate, cfg: MeasureConfig, *, device: str,
                    vocab_size: int) -> tuple[InferenceEnergy, ...]:
    """One reading per serving form of ``cfg`` (the primary first) of ``model`` on ``device``.

    Raises:
        MeterUnavailableError: The meter ``cfg.meter`` names cannot read this device.
        TrialFailedError: Other work ran on the device during every measurement attempt.
    """
    with TrialContext.open(TrainConfig(device=device), cfg) as ctx:
        model = model.to(ctx.device).eval()
        return measure_forms(model, candidate, cfg, vocab_size=vocab_size, device=ctx.device, meter=ctx.meter,
                             lane=ctx.lane)
