"""The serving forms a trial measures: eager, ``torch.compile``, a captured CUDA graph, an ONNX Runtime session.

``measure.serving_form`` lists them (:data:`SERVING_FORMS`); :func:`form_unavailable` says why one cannot
run on a device (checked when a study is validated, before any training), and :func:`build_form` wraps a
serving copy into it. Each form is a callable ``form(input_ids, attention_mask) -> logits`` that
:func:`evaluators.measure.measure_inference` can measure like a torch module (it moves the form to the
device and puts it in eval mode; both are no-ops for the wrapped forms). Their :attr:`kernels` label says
what runs.

* :class:`CudaGraphForm` captures one forward at a fixed batch shape and replays it; inputs of that shape
  are copied into the captured buffers (no copy when the caller passes the captured tensors back).
* :class:`OrtForm` exports the model with :func:`evaluators.onnx_graph.write_onnx` (the graph
  ``nas export --format onnx`` writes) and runs it through an onnxruntime session on the CPU or CUDA
  execution provider: the int8 dynamic graph where the candidate has 8-bit groups, else fp32. Inputs
  cross to the host and back on every call, as in a plain ORT server.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
from pathlib import Path
from typing import Any, get_args

import numpy as np
import torch
from torch import nn

from evaluators.onnx_graph import int8_groups, onnx_runner, quantize_int8, write_onnx
from nas.config import ServingForm
from nas.errors import ConfigError
from nas.models import EncoderClassifier, LogitsOnly

__all__ = ["CudaGraphForm", "OrtForm", "WARMUP_BEFORE_CAPTURE", "SERVING_FORMS", "form_unavailable"]

#: Every serving form a trial can measure (``measure.serving_form``).
SERVING_FORMS: tuple[str, ...] = get_args(ServingForm)

_ORT_PACKAGES = ("onnx", "onnxscript", "onnxruntime")


def form_unavailable(form: str, device: str) -> str | None:
    """Why ``form`` cannot be measured on ``device`` (``cpu``, ``cuda:N``, ``auto``) here, with the fix; None if it can."""
    if form not in SERVING_FORMS:
        return f"unknown serving form {form!r}; use one of {', '.join(SERVING_FORMS)}"
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if form == "cuda_graph" and not cuda:
        return "cuda_graph needs a CUDA device; on this machine measure eager, compiled or onnxruntime"
    if form == "onnxruntime":
        missing = [p for p in _ORT_PACKAGES if importlib.util.find_spec(p) is None]
        if missing:
            return (f"onnxruntime serving needs {', '.join(missing)}: pip install 'energy-nas[export]' "
                    "(onnxruntime-gpu for the CUDA provider)")
    return None

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
        folder: Where ``model.onnx`` (and ``model.int8.onnx``) is written.
        provider: ``"CPUExecutionProvider"`` or ``"CUDAExecutionProvider"``.
        int8: Run the int8 dynamic graph of the candidate's 8-bit groups when it has some.
        threads: The session's intra-op threads (None: onnxruntime's default, every core).

    Raises:
        ExportError: The export failed, or ``provider`` is not in this onnxruntime build.
    """

    def __init__(self, model: Any, ids: torch.Tensor, mask: torch.Tensor, folder: Path,
                 provider: str = "CPUExecutionProvider", *, int8: bool = False, threads: int | None = None) -> None:
        super().__init__()
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / "model.onnx"
        cpu_model = copy.deepcopy(model).float().cpu().eval()  # .float()/.cpu() would move the caller's model
        write_onnx(cpu_model, ids.cpu(), mask.cpu(), self.path, max_len=cpu_model.candidate.max_len)
        graph = "fp32 graph"
        if int8 and int8_groups(cpu_model.candidate):
            int8_path = folder / "model.int8.onnx"
            groups = quantize_int8(self.path, int8_path, cpu_model, cpu_model.candidate)
            self.path, graph = int8_path, f"int8 dynamic graph ({', '.join(groups)}; the rest fp32)"
        self._run, self.kernels = onnx_runner(self.path, provider, threads=threads)
        self.kernels += f" ({graph})"

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Logits of the session for this batch, as a CPU tensor."""
        out = self._run(input_ids.cpu().numpy(), attention_mask.cpu().numpy())
        return torch.from_numpy(np.ascontiguousarray(out))
