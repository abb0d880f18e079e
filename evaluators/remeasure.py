"""Measure a stored, trained model again on this machine (what ``nas remeasure`` runs per trial).

The model is measured exactly as a trial measures it (:func:`evaluators.serving.measure_forms`: the serving
forms asked for, the device's lane held alone, the meter the study names), so a re-measured reading and a
search's own reading of the same machine are comparable.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from evaluators.pipeline import TrialContext
from evaluators.placement import place
from evaluators.provenance import device_snapshot
from evaluators.serving import measure_forms
from nas.config import Candidate, MeasureConfig, TrainConfig
from nas.records import InferenceEnergy

__all__ = ["this_hardware", "remeasure_model", "torch_threads"]


def this_hardware(device: str) -> str:
    """The hardware fingerprint a reading taken on ``device`` here carries (the device model).

    The same rule as :attr:`nas.records.Provenance.hardware_fingerprint`: the device's name, else the
    device string.
    """
    where = place(device)
    name = device_snapshot(where.device).get("device_name")
    return str(name) if name else where.device


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads (a trial worker's ``resources.torch_threads``).

    ``None`` leaves the count as it is.
    """
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def remeasure_model(model: Any, candidate: Candidate, cfg: MeasureConfig, *, device: str,
                    vocab_size: int, threads: int | None = None) -> tuple[InferenceEnergy, ...]:
    """One reading per serving form of ``cfg`` (the primary first) of ``model`` on ``device``.

    ``threads``: torch's intra-op threads while measuring: a study's ``resources.torch_threads``, so the
    model runs as its trials ran it (on a CPU, J/sample depends on it).

    Raises:
        MeterUnavailableError: The meter ``cfg.meter`` names cannot read this device.
        TrialFailedError: Other work ran on the device during every measurement attempt.
    """
    with torch_threads(threads), TrialContext.open(TrainConfig(device=device), cfg) as ctx:
        model = model.to(ctx.device).eval()
        return measure_forms(model, candidate, cfg, vocab_size=vocab_size, device=ctx.device, meter=ctx.meter,
                             lane=ctx.lane)
