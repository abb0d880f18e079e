"""Measure first: a trial's serving reading before it trains (ARCHITECTURE decision 12).

Inference energy depends on the architecture, the compression and the served form, not on the weights'
values, so the freshly built model already costs what the trained one will. :func:`measure_before_training`
takes a copy of it as it will be served, and measures and counts it:

* compressed as the trial will compress it (structured pruning removes the same number of heads or
  neurons, ranked here by magnitude, since only the shapes matter; quantization at the same bit-widths);
* its activation ranges (``activation_bits`` < 32) set from one training batch, so the same static int8
  kernels run;
* only the layers kept for inference (``infer_layers``);
* the primary serving form only (the constraints judge the trial's energy of record, the primary's), in the
  device's exclusive lane, like every measurement (:func:`evaluators.serving.measure_serving`).

The reading's provenance says ``before_training``. Whether the trial then trains is the caller's
``gate``'s decision (:mod:`nas.feasibility` in a search): the evaluators do not know the study's constraints.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from evaluators.metrics import trim_batch
from evaluators.serving import measure_serving
from nas.compress import applied_compression, apply_candidate_compression, model_size_bytes
from nas.compress.act_quant import activation_quantizers
from nas.config import Candidate, MeasureConfig
from nas.models import EncoderClassifier
from nas.models.flops import count_flops
from nas.records import InferenceEnergy, RungReport, TrialResult

if TYPE_CHECKING:
    from torch import nn

    from evaluators.lane import MeasurementLane
    from evaluators.meters import EnergyMeter
    from evaluators.tasks import TaskData
    from nas.placement import Placement

__all__ = ["Gate", "CALIBRATION_ROWS", "measure_before_training", "served_copy", "mark_before_training",
           "charging_first", "flops_per_sample"]

#: ``gate(record)``: given a trial's record before training, why it is stopped (``None``: train it).
Gate = Callable[[TrialResult], "str | None"]
#: ``on_rung(report)`` of :func:`evaluators.pipeline.run_trial`.
OnRung = Callable[[RungReport], "bool | None"]
#: Training rows that set the activation ranges of the copy measured before training.
CALIBRATION_ROWS = 32


def flops_per_sample(model: Any, seq_len: int, vocab_size: int) -> float | None:
    """Forward FLOPs of one ``seq_len``-token row through ``model`` (``None`` for a foreign model)."""
    if not isinstance(model, EncoderClassifier):
        return None
    device = next(model.parameters()).device
    ids = torch.randint(1, max(2, vocab_size), (1, seq_len), device=device)
    return float(count_flops(model, ids))


def served_copy(model: nn.Module, task: TaskData) -> nn.Module:
    """A copy of the untrained ``model`` with the shapes, bit-widths and kept layers it will be served with."""
    probe = copy.deepcopy(model)
    if applied_compression(probe) is None:
        apply_candidate_compression(probe)  # no batch losses: magnitude ranking, the same shapes
    quantizers = activation_quantizers(probe)
    if quantizers:
        device = next(probe.parameters()).device
        ids, mask = trim_batch(task.train_ids[:CALIBRATION_ROWS], task.train_mask[:CALIBRATION_ROWS])
        probe.eval()
        for q in quantizers.values():
            q.train()  # only the range trackers see the batch as training
        with torch.no_grad():
            probe(ids.to(device), attention_mask=mask.to(device))
    if isinstance(probe, EncoderClassifier):
        probe.keep_inference_layers_()
    return probe.eval()


def measure_before_training(model: nn.Module, task: TaskData, cfg: MeasureConfig, *, device: str,
                            meter: EnergyMeter, lane: MeasurementLane | None = None,
                            placement: Placement | None = None) -> TrialResult:
    """The built, untrained ``model`` measured and counted as it will be served (see the module docstring).

    Args:
        model: The model built from its candidate (left as it is: it trains next).
        task: The task (its vocabulary sizes the random inputs; a training batch sets activation ranges).
        cfg: The measurement protocol; only its primary serving form is measured.
        device: Where to measure.
        meter: The trial's meter.
        lane: The trial's lane (held alone while measuring).
        placement: Where the trial was placed, for the record.

    Returns:
        A ``FAIL``-status record (it is not a finished trial) holding the reading (provenance
        ``before_training``), the parameter count, size and FLOPs.
    """
    candidate: Candidate = model.candidate  # type: ignore[assignment]
    probe = served_copy(model, task)
    reading = measure_serving(probe, candidate, cfg.for_form(cfg.primary), vocab_size=task.vocab_size,
                              device=device, meter=meter, lane=lane)
    return TrialResult(
        candidate=candidate, task=task.name, status="FAIL", inference=mark_before_training(reading),
        params=int(sum(p.numel() for p in probe.parameters())), size_bytes=model_size_bytes(probe),
        flops_per_sample=flops_per_sample(probe, cfg.seq_len, task.vocab_size), kernels=reading.kernels,
        placement=placement,
    )


def mark_before_training(reading: InferenceEnergy) -> InferenceEnergy:
    """``reading`` with its provenance saying it was taken before training."""
    return dataclasses.replace(reading, provenance=dataclasses.replace(reading.provenance, before_training=True))


def charging_first(on_rung: OnRung | None, first: InferenceEnergy | None) -> OnRung | None:
    """``on_rung`` whose reports also carry the cost of ``first``, the measurement before training.

    A trial that the scheduler stops at a rung is known to the driver by its last rung report only, so the
    report carries every joule spent so far.
    """
    if on_rung is None or first is None:
        return on_rung
    spent, report = first.protocol_energy_j, on_rung
    return lambda rung: report(dataclasses.replace(rung, measure_energy_j=spent))
