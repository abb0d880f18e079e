"""Served forms beyond eager and ``torch.compile``: a captured CUDA graph and an ONNX Runtime session.

Each form is a callable ``form(input_ids, attention_mask) -> logits`` that
:func:`evaluators.measure.measure_inference` can measure like a torch module (it moves the form to the
device and puts it in eval mode; both are no-ops here). Their :attr:`kernels` label says what runs.

* :class:`CudaGraphForm` captures one forward at a fixed batch shape and replays it; inputs of that shape
  are copied into the captured buffers (no copy when the caller passes the captured tensors back).
* :class:`OrtForm` exports the model with :func:`nas.export.onnx.write_onnx` and runs it through an
  onnxruntime session on the CPU or CUDA execution provider. The graph is fp32 (the exporter writes
  what the weights hold); inputs cross to the host and back on every call, as in a plain ORT server.
"""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nas.errors import ConfigError
from nas.models import EncoderClassifier, LogitsOnly

from .onnx import onnx_runner, write_onnx

__all__ = ["CudaGraphForm", "OrtForm", "WARMUP_BEFORE_CAPTURE"]

#: Forward passes run on a side stream before capture (lazy init, cuBLAS workspaces, autotuning).
WARMUP_BEFORE_CAPTURE = 3


class CudaGraphForm(nn.Module):
    """One forward of ``model`` captured as a CUDA graph at the shape of ``(ids, mask)``, replayed per call.

    Args:
        model: An :class:`~nas.models.EncoderClassifier` on a CUDA device, in eval mode.
        ids: The batch shape to capture (and its first contents), on the model's device.
        mask: Its attention mask.
        dtype: Autocast dtype for the captured forward (``torch.bfloat16``, ``torch.float16``), or None
            for the weights' own dtype.

    Raises:
        ConfigError: ``ids`` is not on a CUDA device.
    """

    def __init__(self, model: EncoderClassifier, ids: torch.Tensor, mask: torch.Tensor,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if ids.device.type != "cuda":
            raise ConfigError("a CUDA graph needs a CUDA device", field="serving_form", value="cuda_graph",
                              fix="measure the eager or compiled form on this device")
        self.inner = LogitsOnly(model).eval()
        self.static_ids, self.static_mask = ids.clone(), mask.clone()
        self.kernels = f"CUDA graph replay, torch {dtype or 'weights dtype'}"

        def forward() -> torch.Tensor:
            ctx = (torch.autocast("cuda", dtype=dtype, cache_enabled=False) if dtype is not None
                   else contextlib.nullcontext())
            with torch.inference_mode(), ctx:
                out: torch.Tensor = self.inner(self.static_ids, self.static_mask)
                return out

        side = torch.cuda.Stream(device=ids.device)  # type: ignore[no-untyped-call]
        side.wait_stream(torch.cuda.current_stream(ids.device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_BEFORE_CAPTURE):
                forward()
        torch.cuda.current_stream(ids.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_out = forward()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Replay the graph on this batch (same shape as captured); returns the captured output buffer."""
        if input_ids.shape != self.static_ids.shape:
            raise ConfigError(f"this CUDA graph was captured for batches of shape {tuple(self.static_ids.shape)}, "
                              f"not {tuple(input_ids.shape)}", field="serving_form", value="cuda_graph",
                              fix="capture one graph per batch shape")
        if input_ids is not self.static_ids:
            self.static_ids.copy_(input_ids)
            self.static_mask.copy_(attention_mask)
        self.graph.replay()
        return self.static_out


class OrtForm(nn.Module):
    """``model`` exported to ONNX under ``folder`` and run by onnxruntime on ``provider``.

    Args:
        model: An :class:`~nas.models.EncoderClassifier` with plain weights (masks and fake-quant grids
            baked in); exported from a CPU copy.
        ids: An example ``(B, T)`` batch to trace with.
        mask: Its attention mask.
        folder: Where ``model.onnx`` is written.
        provider: ``"CPUExecutionProvider"`` or ``"CUDAExecutionProvider"``.

    Raises:
        ExportError: The export failed, or ``provider`` is not in this onnxruntime build.
    """

    def __init__(self, model: Any, ids: torch.Tensor, mask: torch.Tensor, folder: Path,
                 provider: str = "CPUExecutionProvider") -> None:
        super().__init__()
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / "model.onnx"
        cpu_model = copy.deepcopy(model).float().cpu().eval()  # .float()/.cpu() would move the caller's model
        write_onnx(cpu_model, ids.cpu(), mask.cpu(), self.path, max_len=cpu_model.candidate.max_len)
        self._run, self.kernels = onnx_runner(self.path, provider)
        self.kernels += " (fp32 graph)"

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Logits of the session for this batch, as a CPU tensor."""
        out = self._run(input_ids.cpu().numpy(), attention_mask.cpu().numpy())
        return torch.from_numpy(np.ascontiguousarray(out))
