"""Compression as a config applied in place (layer L1: torch only), after torchao's ``quantize_``.

Public API::

    report = quantize_(model, quant_config, filter_fn=None)   # fake-quant QAT weights (STE)
    report = prune_(model, prune_config, batch_losses=None)   # masks or physical slicing
    pruner = GradualPruner(model, prune_config, schedule)     # masks grown during training (cubic)
    report = apply_candidate_compression(model)               # model.candidate: prune, then quantize
    report = applied_compression(model)                       # what that did, or None if not yet run
    report = convert_int8_for_cpu(model)                      # real int8 Linear kernels (inference)
    n = model_size_bytes(model)                               # bytes at each weight's bit-width (computed)

Every step returns a :class:`CompressionReport` whose ``kernels`` says what will actually run and whose
``simulated`` says whether any energy saving can come from it.
"""

from __future__ import annotations

import logging

from torch import nn

from nas.errors import ConfigError

from ._util import bake_all_parametrizations, num_params
from .gradual import SCHEDULES, GradualPruner, PruneSchedule
from .importance import IMPORTANCE, BatchLosses
from .prune import WeightMask, magnitude_mask, prune_, two_four_mask
from .quant import FakeQuantize, convert_int8_for_cpu, fake_quant_description, int8_backend, quantize_
from .report import DENSE_KERNELS, CompressionReport, merge_reports
from .size import model_size_bytes

__all__ = [
    "CompressionReport",
    "quantize_",
    "prune_",
    "GradualPruner",
    "PruneSchedule",
    "SCHEDULES",
    "IMPORTANCE",
    "BatchLosses",
    "apply_candidate_compression",
    "applied_compression",
    "APPLIED_ATTR",
    "convert_int8_for_cpu",
    "int8_backend",
    "materialize_",
    "model_size_bytes",
    "FakeQuantize",
    "WeightMask",
    "magnitude_mask",
    "two_four_mask",
    "fake_quant_description",
    "merge_reports",
    "DENSE_KERNELS",
]

log = logging.getLogger(__name__)

#: The model attribute that holds the report of :func:`apply_candidate_compression` once it has run.
APPLIED_ATTR = "compression_report"


def applied_compression(model: nn.Module) -> CompressionReport | None:
    """The report of :func:`apply_candidate_compression` on ``model``, or None if it has not run.

    Args:
        model: Any module.

    Returns:
        The stored report (``model.compression_report``), or None.
    """
    report = getattr(model, APPLIED_ATTR, None)
    return report if isinstance(report, CompressionReport) else None


def apply_candidate_compression(model: nn.Module, *, batch_losses: BatchLosses | None = None,
                                pruned: CompressionReport | None = None) -> CompressionReport:
    """Apply ``model.candidate``'s sparsity, then its quantization, in place.

    Pruning goes first so that structured slicing sees plain weights and quantization scales are
    computed from the pruned weights. Calling it again on the same model does nothing and returns the
    first report (so heads are never pruned twice). The result is also stored as
    ``model.compression_report``.

    Args:
        model: A model from :func:`nas.models.build` (it carries ``candidate``).
        batch_losses: The task loss of a few training batches, for ``sparsity.importance: taylor``
            (without them a rebuild ranks by magnitude: only the shapes matter before ``load_state_dict``).
        pruned: The report of pruning already done during training (:meth:`GradualPruner.finish`): only
            the quantization is left to apply.

    Returns:
        The merged report (``DENSE_KERNELS`` and ``simulated=False`` when the candidate compresses
        nothing).

    Raises:
        ConfigError: If the model carries no candidate.
    """
    candidate = getattr(model, "candidate", None)
    if candidate is None:
        raise ConfigError("model has no candidate to take compression settings from", field="model",
                          fix="build it with nas.models.build, or call prune_/quantize_ directly")
    previous = applied_compression(model)
    if previous is not None:
        log.warning("compression already applied to this model; not applying it twice")
        return previous
    before = num_params(model)
    reports = []
    if pruned is not None:
        reports.append(pruned)
    elif not candidate.sparsity.is_noop:
        reports.append(prune_(model, candidate.sparsity, batch_losses=batch_losses))
    if not candidate.quant.is_noop:
        reports.append(quantize_(model, candidate.quant))
    merged = merge_reports(reports) or CompressionReport(
        kernels=DENSE_KERNELS, simulated=False, params_before=before, params_after=before, details={}
    )
    setattr(model, APPLIED_ATTR, merged)
    return merged


def materialize_(model: nn.Module) -> CompressionReport:
    """Bake every mask and fake-quant grid into plain weights, for serving or export.

    Afterwards the forward pass no longer recomputes scales or masks (no extra inference energy), but
    training would no longer keep the zeros or the grid, and the state_dict keys are plain again
    (``weight`` instead of ``parametrizations.weight.original``).

    Returns:
        A report with ``details["materialized"]`` listing the module names.
    """
    before = num_params(model)
    done: list[str] = []
    for name, module in list(model.named_modules()):
        done.extend(f"{name}.{pname}" for pname in bake_all_parametrizations(module))
    prev = applied_compression(model)
    kernels = prev.kernels if prev is not None else DENSE_KERNELS
    simulated = prev.simulated if prev is not None else False
    return CompressionReport(kernels=kernels, simulated=simulated, params_before=before,
                             params_after=num_params(model), details={"step": "materialize", "materialized": done})
