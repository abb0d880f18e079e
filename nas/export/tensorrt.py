"""TensorRT: an engine for the NVIDIA GPU of this machine, built from the same ONNX graph as ``--format onnx``.

``nas export STUDY TRIAL --format tensorrt`` writes ``tensorrt/model.engine``: the trial's fp32 ONNX graph
(:func:`nas.export.onnx.write_onnx`: inputs ``input_ids`` and ``attention_mask``, output ``logits``) parsed
and built by TensorRT's Python API, with one optimisation profile: batch 1 to :data:`MAX_BATCH` (tuned
for :data:`~nas.export.parity.PARITY_BATCH`), sequence 1 to the candidate's ``max_len``. TensorRT's
default precision applies (fp32, TF32 matrix products on GPUs that have them). An engine runs only with
the TensorRT version and on the GPU model it was built with. The parity check runs the held-out split
through the engine on the GPU, as for every format.

It needs ``tensorrt`` (10 or newer) and a CUDA GPU: elsewhere the export stops before any work with one
line saying what to install. ``--format all`` does not include it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from nas.config import Candidate
from nas.errors import ExportError

from .base import ExportedFile, Exporter, ExportInputs, Runner, missing_packages
from .formats import register_exporter
from .onnx import write_onnx
from .parity import PARITY_BATCH

__all__ = ["TensorRtExporter", "MAX_BATCH", "build_engine", "engine_runner"]

log = logging.getLogger(__name__)

#: The largest batch the engine accepts.
MAX_BATCH = 256
_FIX = "export --format onnx (onnxruntime can run it on the GPU), and report the failure"


def build_engine(onnx_path: Path, *, max_len: int) -> bytes:
    """A serialized TensorRT engine of the ONNX graph at ``onnx_path``, for this machine's GPU.

    Raises:
        ExportError: TensorRT cannot parse the graph or build the engine.
    """
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT {trt.__version__} cannot parse the ONNX graph: {errors}", field="--format",
                          value="tensorrt", fix=_FIX)
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        profile.set_shape(network.get_input(i).name, (1, 1), (PARITY_BATCH, max_len), (MAX_BATCH, max_len))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"TensorRT {trt.__version__} could not build an engine of the graph (its log above says "
                          "why)", field="--format", value="tensorrt", fix=_FIX)
    return bytes(serialized)


def engine_runner(path: Path) -> tuple[Runner, str]:
    """The engine at ``path`` as a runner (inputs and outputs in torch CUDA tensors), and its description.

    Raises:
        ExportError: The engine cannot be loaded here (another TensorRT version or GPU built it).
    """
    import tensorrt as trt

    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(path.read_bytes())
    if engine is None:
        raise ExportError(f"TensorRT {trt.__version__} cannot load {path}", field="--format", value="tensorrt",
                          fix="build the engine again on this machine")
    context = engine.create_execution_context()
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    [output] = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]

    def cuda(array: np.ndarray, name: str) -> Any:
        return torch.from_numpy(np.ascontiguousarray(array, dtype=trt.nptype(engine.get_tensor_dtype(name)))).cuda()

    def run(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        feeds = {n: cuda({"input_ids": ids, "attention_mask": mask}[n], n) for n in inputs}
        for n, t in feeds.items():
            context.set_input_shape(n, tuple(t.shape))
            context.set_tensor_address(n, t.data_ptr())
        logits = cuda(np.empty(tuple(context.get_tensor_shape(output))), output)
        context.set_tensor_address(output, logits.data_ptr())
        stream = torch.cuda.current_stream()
        if not context.execute_async_v3(stream.cuda_stream):
            raise ExportError("TensorRT failed to run the engine", field="--format", value="tensorrt", fix=_FIX)
        stream.synchronize()
        return np.asarray(logits.float().cpu().numpy())

    return run, f"TensorRT {trt.__version__} on {torch.cuda.get_device_name()}"


@register_exporter("tensorrt")
class TensorRtExporter(Exporter):
    """``tensorrt/model.engine``: a TensorRT engine for this machine's NVIDIA GPU."""

    requires: ClassVar[tuple[str, ...]] = ("tensorrt", "onnx", "onnxscript")
    extra: ClassVar[str] = "tensorrt"
    in_all: ClassVar[bool] = False

    def unsupported_reason(self, candidate: Candidate) -> str | None:
        """Why no engine can be built here: TensorRT or the ONNX exporter missing, or no CUDA GPU."""
        if missing_packages("tensorrt"):
            return ("TensorRT is not installed; on a machine with an NVIDIA GPU run pip install "
                    "'energy-nas[tensorrt]' (or pip install tensorrt)")
        missing = missing_packages("onnx", "onnxscript")
        if missing:
            return (f"it needs {', '.join(missing)} to write the ONNX graph the engine is built from "
                    "(pip install 'energy-nas[export]')")
        if not torch.cuda.is_available():
            return "TensorRT builds engines for NVIDIA GPUs, and torch sees no CUDA GPU here"
        return None

    def export(self, inputs: ExportInputs, folder: Path) -> list[ExportedFile]:
        """Write the ONNX graph, build ``tensorrt/model.engine`` from it, and drop the graph.

        Raises:
            ExportError: The graph could not be exported, or TensorRT could not build the engine.
        """
        out = folder / "tensorrt"
        out.mkdir(parents=True, exist_ok=True)
        graph = out / "model.onnx"
        write_onnx(inputs.model, torch.from_numpy(inputs.example_ids), torch.from_numpy(inputs.example_mask),
                   graph, max_len=inputs.candidate.max_len)
        try:
            engine = build_engine(graph, max_len=inputs.candidate.max_len)
        finally:
            graph.unlink(missing_ok=True)
        path = out / "model.engine"
        path.write_bytes(engine)
        log.info("TensorRT engine: %s (%d bytes)", path, len(engine))
        run, described = engine_runner(path)
        return [ExportedFile("tensorrt", path.relative_to(folder), run, described)]
