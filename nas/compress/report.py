"""The frozen record every compression step returns."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CompressionReport", "merge_reports", "DENSE_KERNELS"]

#: ``kernels`` text of an uncompressed model.
DENSE_KERNELS = "dense fp32 (no compression)"


@dataclass(frozen=True)
class CompressionReport:
    """What a compression step did, and whether any energy saving can come from it.

    Attributes:
        kernels: Human-readable description of the kernels that will actually run, e.g.
            ``"fake-quant int4 per-channel symmetric weights (fp32 compute, no energy saving)"`` or
            ``"int8 dynamic quantized Linear (torch.ao quantize_dynamic, x86 engine)"``.
        simulated: True when the accuracy effect is simulated (fake-quant, masks) and no energy saving
            can come from it; False when the model really runs smaller or lower-precision kernels.
        params_before: Stored parameter elements before the step.
        params_after: Stored parameter elements after the step (drops only under structured pruning).
        details: Step-specific facts (bits per group, heads removed per layer, sparsity reached, ...).
    """

    kernels: str
    simulated: bool
    params_before: int
    params_after: int
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict."""
        return {
            "kernels": self.kernels,
            "simulated": self.simulated,
            "params_before": self.params_before,
            "params_after": self.params_after,
            "details": dict(self.details),
        }


def merge_reports(reports: Iterable[CompressionReport]) -> CompressionReport | None:
    """Combine the reports of consecutive steps (prune, then quantize) into one.

    ``kernels`` are joined with ``"; "``, ``simulated`` is True if any step is simulated, params run
    from the first step's ``params_before`` to the last step's ``params_after``, and ``details`` are
    keyed by step order (``"prune"``, ``"quantize"``, ...) when each report carries a ``"step"`` key.

    Returns:
        The merged report, or None for an empty sequence.
    """
    items = list(reports)
    if not items:
        return None
    details: dict[str, Any] = {}
    for i, r in enumerate(items):
        details[str(r.details.get("step", f"step{i}"))] = dict(r.details)
    return CompressionReport(
        kernels="; ".join(r.kernels for r in items),
        simulated=any(r.simulated for r in items),
        params_before=items[0].params_before,
        params_after=items[-1].params_after,
        details=details,
    )
