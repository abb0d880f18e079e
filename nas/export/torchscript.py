"""TorchScript export: ``torch.jit.trace`` of ``LogitsOnly(model)`` into ``torchscript/model.pt``.

Why trace, not ``torch.export``: see ``docs/export.md``. In short, ``torch.export`` cannot give the
Linformer (``lowrank``) attention a dynamic sequence axis over its whole range (slicing ``E[:, :T]``
adds the guard ``T != max_len``), whereas a trace records the size arithmetic and runs every length;
the file loads with ``torch.jit.load`` in Python or C++ (libtorch) without this package; and the forward
has no data-dependent control flow for a trace to freeze (every branch depends on the candidate only).
The parity check runs the traced file on the whole held-out split, at its real lengths and batch sizes,
so a wrong trace fails the export instead of shipping.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from nas.errors import ExportError
from nas.models import LogitsOnly

from .base import ExportedFile, Exporter, ExportInputs, Runner
from .formats import register_exporter

__all__ = ["TorchScriptExporter", "torchscript_runner"]

log = logging.getLogger(__name__)


def torchscript_runner(path: Path) -> tuple[Runner, str]:
    """``torch.jit.load(path)`` as a runner, and a description of the engine."""
    module = torch.jit.load(str(path), map_location="cpu").eval()  # type: ignore[no-untyped-call]

    def run(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = module(torch.from_numpy(ids.astype(np.int64)), torch.from_numpy(mask.astype(np.int64)))
        return np.asarray(out.float().numpy())

    return run, f"torch.jit.load (torch {torch.__version__}, CPU)"


@register_exporter("torchscript")
class TorchScriptExporter(Exporter):
    """``torchscript/model.pt``: ``module(input_ids, attention_mask) -> logits``."""

    def export(self, inputs: ExportInputs, folder: Path) -> list[ExportedFile]:
        """Trace ``LogitsOnly(model)`` on the example batch and save ``torchscript/model.pt``."""
        out = folder / "torchscript"
        out.mkdir(parents=True, exist_ok=True)
        path = out / "model.pt"
        wrapper = LogitsOnly(inputs.model).eval()
        ids = torch.from_numpy(inputs.example_ids)
        mask = torch.from_numpy(inputs.example_mask)
        try:
            with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
                warnings.simplefilter("ignore")  # torch.jit.trace's deprecation notice; see the module doc
                traced = torch.jit.trace(wrapper, (ids, mask), check_trace=False)  # type: ignore[no-untyped-call]
                traced.save(str(path))
        except Exception as e:
            raise ExportError(f"torch.jit.trace failed for this candidate: {type(e).__name__}: {e}",
                              field="format", value="torchscript",
                              fix="export --format onnx or hf instead, and report the failure") from e
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run, engine = torchscript_runner(path)
        return [ExportedFile("torchscript", path.relative_to(folder), run, engine)]
