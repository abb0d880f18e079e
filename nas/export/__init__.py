"""Export a chosen trial so it runs where the user deploys it, carrying the numbers that chose it.

Layer L3: may import ``nas.*``, ``evaluators``, ``storage``; never ``dashboards``, ``nas.cli`` or ray.

Public API::

    from nas.export import export_trial, load
    report = export_trial("default", 7, Path("out"), fmt="all", db="nas.db", retrain_steps=None, force=False)
    print(report.describe())
    model = load("out")                      # or "out/hf"
    model.predict(["a fine film"])           # [{"label": ..., "score": ..., "probs": {...}}]

Formats (see ``docs/export.md``): ``onnx/model.onnx`` (+ ``model.int8.onnx`` for 8-bit candidates),
``torchscript/model.pt``, ``hf/`` and, asked for by name on a machine with an NVIDIA GPU and TensorRT,
``tensorrt/model.engine``. Each is checked against PyTorch on the held-out split; the folder
also holds ``README.md`` (the model card), ``metrics.json`` and ``candidate.json``.
"""

from __future__ import annotations

from . import hf, onnx, tensorrt, torchscript  # noqa: F401  (each module registers its exporter in EXPORTERS)
from .base import ExportedFile, Exporter, ExportInputs
from .core import ExportReport, export_trial
from .formats import EXPORTERS, FORMATS, register_exporter
from .loaded import LoadedModel, load
from .parity import MIN_AGREEMENT, ParityResult

__all__ = [
    "export_trial",
    "load",
    "ExportReport",
    "LoadedModel",
    "ParityResult",
    "Exporter",
    "ExportedFile",
    "ExportInputs",
    "EXPORTERS",
    "FORMATS",
    "register_exporter",
    "MIN_AGREEMENT",
]

EXPORTERS.require_complete()
