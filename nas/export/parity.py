"""Parity: the held-out split through the exported file and through PyTorch, compared.

Batches are the task's held-out rows in order, ``PARITY_BATCH`` at a time, with the padding columns that
every row of a batch shares trimmed off (as :func:`evaluators.metrics.evaluate` does), so the check runs
the exported graphs at several batch sizes and sequence lengths, not only the traced example shape.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from nas.errors import ExportError

from .base import ExportedFile, Runner

__all__ = ["MIN_AGREEMENT", "PARITY_BATCH", "ParityResult", "reference_logits", "check_parity", "batches"]

log = logging.getLogger(__name__)

#: An export fails when fewer than this share of held-out predictions agree with PyTorch.
MIN_AGREEMENT = 0.99
#: Rows per parity batch (the last batch is smaller: a second batch size for the dynamic axis).
PARITY_BATCH = 64


@dataclass(frozen=True)
class ParityResult:
    """How one exported file compares with the PyTorch model on the held-out split.

    Attributes:
        format: ``onnx``, ``onnx-int8``, ``torchscript`` or ``hf``.
        path: The file, relative to the export folder.
        engine: What ran it.
        n_examples: Held-out rows compared.
        agreement: Share of rows whose arg-max class equals PyTorch's, in [0, 1].
        max_abs_logit_diff: Largest absolute difference of any logit.
        passed: ``agreement >= MIN_AGREEMENT``.
    """

    format: str
    path: str
    engine: str
    n_examples: int
    agreement: float
    max_abs_logit_diff: float
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict."""
        return asdict(self)


def batches(ids: np.ndarray, mask: np.ndarray, batch_size: int = PARITY_BATCH) -> list[tuple[np.ndarray, np.ndarray]]:
    """The held-out rows in order, in batches, each trimmed to its longest row."""
    out = []
    for i in range(0, ids.shape[0], batch_size):
        b_ids, b_mask = ids[i : i + batch_size], mask[i : i + batch_size]
        t = max(int(b_mask.sum(axis=1).max()), 1) if b_mask.size else 1
        out.append((np.ascontiguousarray(b_ids[:, :t]), np.ascontiguousarray(b_mask[:, :t])))
    return out


def reference_logits(runner: Runner, parts: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Concatenated logits of ``runner`` over ``parts``."""
    return np.concatenate([np.asarray(runner(i, m), dtype=np.float64) for i, m in parts])


def check_parity(reference: np.ndarray, exported: ExportedFile,
                 parts: Sequence[tuple[np.ndarray, np.ndarray]]) -> ParityResult:
    """Compare ``exported`` with the PyTorch ``reference`` logits over the same ``parts``.

    Raises:
        ExportError: The exported file fails to run on a held-out batch.
    """
    try:
        logits = reference_logits(exported.runner, parts)
    except Exception as e:
        raise ExportError(f"the exported {exported.format} model ({exported.path}) failed on the held-out "
                          f"split: {type(e).__name__}: {e}", field="format", value=exported.format,
                          fix="export another format, and report the failure") from e
    if logits.shape != reference.shape:
        raise ExportError(f"the exported {exported.format} model returned logits of shape {logits.shape}, "
                          f"PyTorch {reference.shape}", field="format", value=exported.format)
    n = int(reference.shape[0])
    agree = float((logits.argmax(axis=1) == reference.argmax(axis=1)).mean()) if n else 1.0
    diff = float(np.abs(logits - reference).max()) if n else 0.0
    if not np.isfinite(diff):
        agree, diff = 0.0, float("inf")
    result = ParityResult(format=exported.format, path=str(exported.path), engine=exported.engine, n_examples=n,
                          agreement=agree, max_abs_logit_diff=diff, passed=agree >= MIN_AGREEMENT)
    log.info("parity %s: %.2f%% of %d agree, max |logit diff| %.3g", exported.format, 100 * agree, n, diff)
    return result
