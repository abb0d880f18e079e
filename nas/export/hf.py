"""The ``hf`` format: a Hugging Face-style folder read back by :func:`nas.export.load`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import ExportedFile, Exporter, ExportInputs
from .formats import register_exporter
from .loaded import load

__all__ = ["HFExporter"]


@register_exporter("hf")
class HFExporter(Exporter):
    """``hf/``: ``config.json``, ``model.safetensors`` and the tokenizer files (see :mod:`.loaded`)."""

    def export(self, inputs: ExportInputs, folder: Path) -> list[ExportedFile]:
        """Save the Hugging Face folder; parity runs it reloaded through :func:`nas.load`."""
        out = inputs.loaded.save(folder / "hf")
        reloaded = load(out)  # parity runs the folder as a user would load it, not the in-memory model

        def run(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
            return reloaded.logits_from_ids(ids, mask)

        return [ExportedFile("hf", out.relative_to(folder), run, "nas.load (PyTorch eager, CPU)")]
