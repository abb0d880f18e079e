"""The serving form of a trained model, and its energy measured with the device to itself.

:func:`serving_copy` builds the form that really runs (fake-quant grids and masks baked into plain
weights, real int8 kernels where available) without touching the trained model. :func:`measure_serving`
measures it inside the device's exclusive lane and checks that the lane delivered what it promises:
on CPU, from the lane's own accounting of the CPU time other lane members used; on a GPU, from NVML's
per-process utilization. A measurement that saw other work is repeated; if every attempt saw it, the
trial fails as *retryable* (the candidate is not to blame), never with a shared-device number.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import tempfile
from pathlib import Path
from typing import Any

import torch

from evaluators.forms import CudaGraphForm, OrtForm
from evaluators.lane import MeasurementLane
from evaluators.measure import make_inputs, measure_inference
from evaluators.meters import EnergyMeter
from evaluators.meters.gpu_use import GpuUseWatch
from evaluators.placement import place
from nas.compress import DENSE_KERNELS, applied_compression, convert_int8_for_cpu, materialize_
from nas.compress.prune import prune_label
from nas.compress.sparse24 import TWO_FOUR_KERNELS, convert_two_four_
from nas.config import Candidate, MeasureConfig
from nas.errors import MeterUnavailableError, TrialFailedError
from nas.records import FailKind, InferenceEnergy

__all__ = ["serving_copy", "form_copy", "measure_serving", "measure_forms", "device_key", "MEASURE_ATTEMPTS"]

log = logging.getLogger(__name__)

#: How often a measurement is taken again when other work was seen on the device during it.
MEASURE_ATTEMPTS = 3


def device_key(device: str) -> str:
    """The lane key of ``device``: one lane per physical device (GPU UUID), or ``cpu``."""
    return place(device).lane_key


def _baked(model: Any) -> tuple[Any, Any]:
    """An eval copy of ``model`` with its masks and fake-quant grids baked in, and its compression report."""
    baked = copy.deepcopy(model).eval()
    rep = applied_compression(model)
    if rep is not None:
        materialize_(baked)
    return baked, rep


def serving_copy(model: Any, candidate: Candidate, device: str, dtype: str = "float32") -> tuple[Any, str]:
    """A copy of ``model`` in the form that really runs, and the ``kernels`` label saying what runs.

    The copy has baked weights, real int8 where available (CPU) and real 2:4 sparse kernels where
    available (CUDA sm80+, stored in the measurement ``dtype``); the label also says whether the
    compression's effect is only simulated. ``model`` itself is left as it was (it may train on, be
    counted or be saved).
    """
    serving, rep = _baked(model)
    kernels = rep.kernels if rep is not None else "dense fp32 (torch eager)"
    simulated = bool(rep.simulated) if rep is not None else False
    q = candidate.quant
    if device == "cpu" and 8 in (q.attention_bits, q.ffn_bits) and not torch.cuda.is_available():
        int8 = convert_int8_for_cpu(serving, q)
        kernels = f"{int8.kernels}; {kernels}"
        simulated = simulated and int8.simulated
    if candidate.sparsity.kind == "2:4" and device.startswith("cuda"):
        kernels, simulated = _two_four(serving, candidate, device, dtype, kernels, simulated)
    if simulated:
        kernels += " [accuracy effect simulated; no energy saving measured from it]"
    return serving, kernels


def form_copy(model: Any, candidate: Candidate, cfg: MeasureConfig, device: str, *, vocab_size: int,
              workdir: Path) -> tuple[Any, str]:
    """The serving form ``cfg.primary`` of ``model`` (see :mod:`evaluators.forms`), and its ``kernels`` label.

    ``eager`` and ``compiled`` measure :func:`serving_copy`; ``cuda_graph`` captures it at the measurement's
    batch shape; ``onnxruntime`` exports the baked model (int8 dynamic graph where the candidate is 8-bit)
    under ``workdir`` and runs it on the device's execution provider with the trial's threads.
    """
    form = cfg.primary
    if form == "onnxruntime":
        baked, rep = _baked(model)
        ids, mask = make_inputs(cfg.batch_size, cfg.seq_len, vocab_size, device="cpu")
        provider = "CUDAExecutionProvider" if device.startswith("cuda") else "CPUExecutionProvider"
        ort = OrtForm(baked, ids, mask, workdir, provider, int8=True, threads=torch.get_num_threads())
        if rep is None or rep.kernels == DENSE_KERNELS:
            return ort, ort.kernels
        q = candidate.quant
        int8_real = "int8 dynamic graph" in ort.kernels and set(q.groups_bits) <= {8, 32} \
            and q.activation_bits == 32 and candidate.sparsity.kind in ("none", "heads", "ffn")
        simulated = rep.simulated and not int8_real
        return ort, f"{ort.kernels}; trained as {rep.kernels}" + (
            " [accuracy effect simulated; no energy saving measured from it]" if simulated else "")
    serving, kernels = serving_copy(model, candidate, device, cfg.dtype)
    if form == "cuda_graph":
        ids, mask = make_inputs(cfg.batch_size, cfg.seq_len, vocab_size, device=device)
        dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(cfg.dtype)
        graph = CudaGraphForm(serving.to(device), ids, mask, dtype)
        return graph, f"{graph.kernels}; {kernels}"
    return serving, kernels


def _two_four(serving: Any, candidate: Candidate, device: str, dtype: str, kernels: str,
              simulated: bool) -> tuple[str, bool]:
    """Put a 2:4 candidate's masked Linears on 2:4 sparse kernels; the new label and simulated flag."""
    done, reason = convert_two_four_(serving, device, dtype)
    if not done:
        return f"{kernels} (2:4 kernels not used: {reason})", simulated
    label = f"{TWO_FOUR_KERNELS} for {len(done)} Linear layers" + (f"; {reason}" if reason else "")
    return kernels.replace(prune_label(candidate.sparsity), label), simulated and not candidate.quant.is_noop


def _gpu_watch(device: str) -> Any:
    if not device.startswith("cuda"):
        return None

    try:
        return GpuUseWatch(device)
    except (ImportError, MeterUnavailableError) as e:
        log.warning("cannot watch %s for other processes (%s); relying on the lane alone", device, e)
        return None


def measure_forms(model: Any, candidate: Candidate, cfg: MeasureConfig, *, vocab_size: int, device: str,
                  meter: EnergyMeter, lane: MeasurementLane | None = None) -> tuple[InferenceEnergy, ...]:
    """One reading per serving form ``cfg`` lists (:func:`measure_serving` each), the primary form's first."""
    return tuple(measure_serving(model, candidate, cfg.for_form(form), vocab_size=vocab_size, device=device,
                                 meter=meter, lane=lane) for form in cfg.forms)


def measure_serving(model: Any, candidate: Candidate, cfg: MeasureConfig, *, vocab_size: int, device: str,
                    meter: EnergyMeter, lane: MeasurementLane | None = None) -> InferenceEnergy:
    """Measure ``model``'s inference energy in its serving form ``cfg.primary``, holding the device's lane alone.

    Args:
        model: The trained model; measured through a serving copy (see :func:`serving_copy`).
        candidate: Its architecture and compression (decides the serving form).
        cfg: The measurement protocol (batch size, sequence length, windows).
        vocab_size: Size of the embedding table, for the random token batches.
        device: Where to measure (``"cpu"`` or ``"cuda:N"``).
        meter: The energy meter that reads the windows.
        lane: The trial's lane (its shared hold is given up for the measurement and taken again);
            by default a lane of its own.

    Raises:
        TrialFailedError: (retryable) other work ran on the device during every attempt.
    """
    with tempfile.TemporaryDirectory(prefix="nas-form-") as workdir:
        serving, kernels = form_copy(model, candidate, cfg, device, vocab_size=vocab_size, workdir=Path(workdir))
        return _measure_alone(serving, kernels, cfg, vocab_size=vocab_size, device=device, meter=meter, lane=lane)


def _measure_alone(serving: Any, kernels: str, cfg: MeasureConfig, *, vocab_size: int, device: str,
                   meter: EnergyMeter, lane: MeasurementLane | None) -> InferenceEnergy:
    """Measure ``serving`` inside the device's lane, again while other work was seen (see the module docstring)."""
    own_lane = lane is None
    the_lane = lane if lane is not None else MeasurementLane(device_key(meter.device))
    watch = _gpu_watch(meter.device)  # the meter's device: the board it reads
    try:
        for attempt in range(1, MEASURE_ATTEMPTS + 1):
            with the_lane.exclusive() as hold:
                if watch is not None:
                    watch.start()
                inference = measure_inference(serving, cfg, vocab_size=vocab_size, device=device, meter=meter,
                                              kernels=kernels)
            use = watch.stop() if watch is not None else hold.device_use()
            use = {**use, "attempt": attempt, "waited_s": round(hold.waited_s, 4)}
            if not use["shared"]:
                return _with_device_use(inference, use, exclusive=True)
            log.warning("measurement attempt %d saw other work on %s (%s); measuring again", attempt, device, use)
    finally:
        if watch is not None:
            watch.close()
        if own_lane:
            the_lane.close()
    raise TrialFailedError(
        f"other work ran on {device} during all {MEASURE_ATTEMPTS} measurement attempts "
        f"(last: {use.get('observed_by')}, other processes {use.get('other_pids')})",
        kind=FailKind.DEVICE, fix="keep other jobs off the device during a search, or lower max_concurrent",
    )


def _with_device_use(inference: InferenceEnergy, use: dict[str, Any], *, exclusive: bool) -> InferenceEnergy:
    prov = dataclasses.replace(inference.provenance, device_use=use)
    return dataclasses.replace(inference, exclusive=exclusive, provenance=prov)
