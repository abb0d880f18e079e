"""ONNX graphs of a model: writing one, running it in onnxruntime, and its int8 dynamic companion.

Shared by the ``onnxruntime`` serving form a trial measures (:mod:`evaluators.forms`) and by
``nas export --format onnx`` (:mod:`nas.export.onnx`), so both run the same graph.

The graph comes from ``torch.onnx.export`` (the ``torch.export``-based exporter), opset 18, with dynamic
batch and sequence axes. Inputs are ``input_ids`` and ``attention_mask`` (int64, ``(batch, seq)``,
``seq <= max_len``), the output is ``logits`` (float32, ``(batch, num_labels)``).

The int8 companion is made with ``onnxruntime.quantization.quantize_dynamic``: int8 weights, activations
quantized on the fly, exactly the groups the candidate stores in 8 bits (attention and FFN ``MatMul``,
embedding ``Gather``).
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nas.config import Candidate
from nas.errors import ExportError
from nas.models import LogitsOnly

__all__ = ["OPSET", "onnx_runner", "int8_groups", "write_onnx", "quantize_int8"]

log = logging.getLogger(__name__)

#: ONNX opset of the exported graphs (the issue asks for 17 or newer; 18 is the exporter's default).
OPSET = 18
_INPUTS = ("input_ids", "attention_mask")
_OUTPUT = "logits"
_GROUP_OF_LINEAR = (("attn", "attention"), ("ffn", "ffn"))


def int8_groups(candidate: Candidate) -> list[str]:
    """Layer groups the candidate stores in 8 bits (``embedding``, ``attention``, ``ffn``)."""
    q = candidate.quant
    bits = {"embedding": q.embedding_bits, "attention": q.attention_bits, "ffn": q.ffn_bits}
    return [g for g, b in bits.items() if b == 8]


def onnx_runner(path: Path, provider: str = "CPUExecutionProvider", *,
                threads: int | None = None) -> tuple[Callable[[np.ndarray, np.ndarray], np.ndarray], str]:
    """An onnxruntime session over ``path`` as ``runner(input_ids, attention_mask) -> logits``, and its engine.

    ``threads`` caps the session's intra-op threads (a measured form uses the trial's torch threads, so
    both forms get the same cores); None leaves onnxruntime's default (every core).

    Raises:
        ExportError: ``provider`` is not available in this onnxruntime build (the message says which are).
    """
    import onnxruntime as ort

    if provider not in ort.get_available_providers():
        raise ExportError(f"onnxruntime {ort.__version__} has no {provider} (available: "
                          f"{', '.join(ort.get_available_providers())})", field="provider", value=provider,
                          fix="install onnxruntime-gpu for CUDAExecutionProvider, or use CPUExecutionProvider")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads is not None:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), sess_options=opts, providers=[provider])

    def run(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        out = sess.run([_OUTPUT], {"input_ids": ids.astype(np.int64), "attention_mask": mask.astype(np.int64)})
        return np.asarray(out[0])

    return run, f"onnxruntime {ort.__version__} {provider}"


def write_onnx(model: Any, ids: torch.Tensor, mask: torch.Tensor, path: Path, *, max_len: int) -> None:
    """Export ``model``'s logits as an ONNX graph at ``path`` (dynamic batch and sequence up to ``max_len``).

    Args:
        model: An :class:`~nas.models.EncoderClassifier` with plain weights, on the CPU.
        ids: An example ``(B, T)`` int64 batch to trace with.
        mask: Its attention mask.
        path: The ``.onnx`` file to write.
        max_len: The longest sequence the graph accepts.

    Raises:
        ExportError: ``torch.onnx.export`` failed.
    """
    wrapper = LogitsOnly(model).eval()  # forward returns a dataclass; ONNX needs a tensor
    batch = torch.export.Dim("batch")
    seq = torch.export.Dim("seq", max=max_len)
    shapes = {"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}}
    chatter = io.StringIO()
    # The exporter logs one warning per torchvision op it cannot register; irrelevant here.
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(chatter):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                wrapper, (ids, mask), None, dynamo=True, opset_version=OPSET, input_names=list(_INPUTS),
                output_names=[_OUTPUT], dynamic_shapes=shapes, verbose=False,
            )
            if program is None:  # pragma: no cover - dynamo=True always returns a program
                raise RuntimeError("torch.onnx.export returned no program")
            program.save(str(path))
    except Exception as e:
        log.debug("torch.onnx.export output:\n%s", chatter.getvalue())
        raise ExportError(f"torch.onnx.export failed for this candidate: {type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}", field="format", value="onnx",
                          fix="export --format torchscript or hf instead, and report the failure") from e
    finally:
        registration.setLevel(level)


class _DropOrtAdvice(logging.Filter):
    """onnxruntime's quantizer logs pre-processing advice on the root logger; it does not apply here."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


def quantize_int8(src: Path, dst: Path, model: Any, candidate: Candidate) -> list[str]:
    """Write ``dst``: ``src`` with the candidate's 8-bit groups as onnxruntime int8 dynamic nodes; the groups.

    Which graph node belongs to which layer is found by matching each node's weight initializer with
    ``model``'s parameters (plain weights, on their grid).

    Raises:
        ExportError: onnxruntime's quantizer failed.
    """
    import onnx
    from onnx import numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    groups = int8_groups(candidate)
    graph = onnx.load(str(src)).graph
    inits = {i.name: i for i in graph.initializer}
    nodes = _nodes_of_groups(graph, inits, numpy_helper, model, groups)
    if not nodes:
        log.warning("no ONNX node matched the 8-bit groups %s; %s is a plain copy", groups, dst.name)
    op_types = ["MatMul", "Gemm"] + (["Gather"] if "embedding" in groups else [])
    root = logging.getLogger()
    drop = _DropOrtAdvice()
    root.addFilter(drop)
    try:
        quantize_dynamic(
            str(src), str(dst), weight_type=QuantType.QInt8,
            per_channel=candidate.quant.granularity == "per_channel",
            op_types_to_quantize=op_types, nodes_to_quantize=nodes or None,
            nodes_to_exclude=None if nodes else [n.name for n in graph.node],
        )
    except Exception as e:
        raise ExportError(f"onnxruntime int8 quantization failed: {type(e).__name__}: {e}",
                          field="format", value="onnx",
                          fix="export --format torchscript or hf, which keep the 8-bit grid as fp32") from e
    finally:
        root.removeFilter(drop)
    return groups


def _nodes_of_groups(graph: Any, inits: dict[str, Any], numpy_helper: Any, model: Any,
                     groups: list[str]) -> list[str]:
    """Names of the MatMul/Gemm/Gather nodes whose constant weight belongs to one of ``groups``."""
    wanted: list[np.ndarray] = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            group = next((g for key, g in _GROUP_OF_LINEAR if f".{key}." in f".{name}."), None)
            if group in groups:
                wanted.append(module.weight.detach().cpu().numpy())
    emb_names = {"model.tok_emb.weight", "model.pos_emb.weight"} if "embedding" in groups else set()
    chosen: list[str] = []
    for node in graph.node:
        if node.op_type == "Gather" and node.input and node.input[0] in emb_names:
            chosen.append(node.name)
            continue
        if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2 or node.input[1] not in inits:
            continue
        w = numpy_helper.to_array(inits[node.input[1]])
        for ref in wanted:
            # MatMul holds W^T (in, out); a Gemm with transB=1 holds W (out, in).
            if (w.shape == ref.T.shape and np.array_equal(w, ref.T)) or (
                    w.shape == ref.shape and np.array_equal(w, ref)):
                chosen.append(node.name)
                break
    return chosen
