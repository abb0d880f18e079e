"""The exporter extension point: one small base class, one reference implementation per format.

An :class:`Exporter` writes one deployable form of a model into a folder and hands back, for each file
it wrote, a *runner*: a function from ``(input_ids, attention_mask)`` NumPy arrays to a logits array, so
that :mod:`nas.export.parity` can compare the file's predictions with PyTorch's.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from nas.config import Candidate

if TYPE_CHECKING:
    from nas.export.loaded import LoadedModel
    from nas.models import EncoderClassifier

__all__ = ["Runner", "ExportedFile", "ExportInputs", "Exporter", "missing_packages"]

#: ``runner(input_ids, attention_mask) -> logits``; int64 arrays of shape (B, T) in, float (B, C) out.
Runner = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class ExportedFile:
    """One file an exporter wrote.

    Attributes:
        format: The exporter's name (``"onnx"``, ``"onnx-int8"``, ``"torchscript"``, ``"hf"``).
        path: The file (or folder, for ``hf``), relative to the export folder.
        runner: Runs the exported file itself (onnxruntime, ``torch.jit.load``, :func:`nas.export.load`).
        engine: What executes the runner, for the parity table (e.g. ``"onnxruntime 1.18 CPU"``).
    """

    format: str
    path: Path
    runner: Runner
    engine: str


@dataclass(frozen=True)
class ExportInputs:
    """Everything an exporter may need besides the output folder.

    Attributes:
        model: The PyTorch model with every mask and fake-quant grid baked into plain weights
            (:func:`nas.compress.materialize_`), in eval mode, on the CPU.
        candidate: The trial's candidate.
        example_ids: (B, T) int64 example batch used to trace the graph.
        example_mask: (B, T) int64 attention mask of the example batch.
        loaded: The same model wrapped with its tokenizer and labels (what the ``hf`` folder holds).
    """

    model: EncoderClassifier
    candidate: Candidate
    example_ids: np.ndarray
    example_mask: np.ndarray
    loaded: LoadedModel


def missing_packages(*names: str) -> list[str]:
    """The import names among ``names`` that are not installed (checked without importing them)."""
    return [n for n in names if importlib.util.find_spec(n) is None]


class Exporter:
    """Base class of an export format. Subclasses set :attr:`name` and implement :meth:`export`.

    :meth:`unsupported_reason` says, before any work is done, why a candidate cannot be exported in this
    format (``None`` when it can); the export of every format then fails with that reason.
    """

    #: Format name used on the command line (``--format``).
    name: ClassVar[str] = "base"
    #: Optional packages (import names) the format needs.
    requires: ClassVar[tuple[str, ...]] = ()
    #: The ``pip install`` extra that provides :attr:`requires`.
    extra: ClassVar[str] = "export"
    #: Whether ``--format all`` writes this format (not one that needs particular hardware).
    in_all: ClassVar[bool] = True

    def unsupported_reason(self, candidate: Candidate) -> str | None:
        """Why ``candidate`` cannot be exported in this format here, or ``None`` when it can."""
        missing = missing_packages(*self.requires)
        if missing:
            return (f"it needs the packages {', '.join(missing)}, which are not installed "
                    f"(pip install 'energy-nas[{self.extra}]')")
        return None

    def export(self, inputs: ExportInputs, folder: Path) -> list[ExportedFile]:
        """Write this format into ``folder`` (the export root) and return the files written.

        Raises:
            ExportError: The model could not be converted.
        """
        raise NotImplementedError
