"""ONNX export, plus an onnxruntime int8 model for candidates with 8-bit weights.

The graph and the int8 companion come from :mod:`evaluators.onnx_graph` (the same graph the
``onnxruntime`` serving form of a trial measures): ``torch.onnx.export``, opset 18, dynamic batch and
sequence axes; ``onnx/model.int8.onnx`` holds the candidate's 8-bit groups as onnxruntime int8 dynamic
nodes, the other groups staying fp32. 4- and 2-bit groups have no onnxruntime kernel: ``onnx/model.onnx``
stores every quantized weight as packed integer codes with a small opset-18 subgraph that rebuilds its
fp32 values, which onnxruntime folds once at session start (:mod:`.onnx_pack`): the file is small,
inference runs in fp32 (exact, no energy saving).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import ClassVar

import torch

from evaluators.onnx_graph import OPSET, int8_groups, onnx_runner, quantize_int8, write_onnx

from .base import ExportedFile, Exporter, ExportInputs
from .formats import register_exporter
from .onnx_pack import pack_onnx

__all__ = ["OnnxExporter", "OPSET", "onnx_runner", "int8_groups", "write_onnx"]

log = logging.getLogger(__name__)


@register_exporter("onnx")
class OnnxExporter(Exporter):
    """``onnx/model.onnx`` (and ``onnx/model.int8.onnx`` for 8-bit candidates)."""

    requires: ClassVar[tuple[str, ...]] = ("onnx", "onnxscript", "onnxruntime")

    def export(self, inputs: ExportInputs, folder: Path) -> list[ExportedFile]:
        """Export ``onnx/model.onnx`` (and the int8 companion for 8-bit candidates).

        Raises:
            ExportError: The model could not be exported or quantized.
        """
        out = folder / "onnx"
        out.mkdir(parents=True, exist_ok=True)
        path = out / "model.onnx"
        write_onnx(inputs.model, torch.from_numpy(inputs.example_ids), torch.from_numpy(inputs.example_mask),
                   path, max_len=inputs.candidate.max_len)
        groups = int8_groups(inputs.candidate)
        extra: list[ExportedFile] = []
        if groups:  # quantized from the fp32 graph, before its low-bit weights are packed
            int8_path = out / "model.int8.onnx"
            quantize_int8(path, int8_path, inputs.model, inputs.candidate)
            run8, engine8 = onnx_runner(int8_path)
            extra.append(ExportedFile("onnx-int8", int8_path.relative_to(folder), run8,
                                      f"{engine8}, int8 dynamic ({', '.join(groups)})"))
        packed = pack_onnx(path, inputs.loaded.pack, inputs.model.state_dict()) if inputs.loaded.pack.grids else []
        run, engine = onnx_runner(path)
        if packed:
            engine += f", {len(packed)} low-bit weights packed (unpacked once at session start)"
        return [ExportedFile("onnx", path.relative_to(folder), run, engine), *extra]
