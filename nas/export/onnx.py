"""ONNX export, plus an onnxruntime int8 model for candidates with 8-bit weights.

The graph comes from ``torch.onnx.export`` (the ``torch.export``-based exporter), opset 18, with dynamic
batch and sequence axes.

Inputs are ``input_ids`` and ``attention_mask`` (int64, ``(batch, seq)``, ``seq <= max_len``), the output
is ``logits`` (float32, ``(batch, num_labels)``).

The int8 companion (``onnx/model.int8.onnx``) is made with
``onnxruntime.quantization.quantize_dynamic``: int8 weights, activations quantized on the fly, exactly
the groups the candidate stores in 8 bits (attention and FFN ``MatMul``, embedding ``Gather``). Which
graph node belongs to which layer is found by matching each node's weight initializer with the model's
parameters, so a candidate with 8-bit FFN but 32-bit attention keeps fp32 attention. 4- and 2-bit groups
have no onnxruntime kernel: ``onnx/model.onnx`` stores every quantized weight as packed integer codes with a
small opset-18 subgraph that rebuilds its fp32 values, which onnxruntime folds once at session start
(:mod:`.onnx_pack`): the file is small, inference runs in fp32 (exact, no energy saving).
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from nas.config import Candidate
from nas.errors import ExportError
from nas.models import LogitsOnly

from .base import ExportedFile, Exporter, ExportInputs, Runner
from .formats import register_exporter
from .onnx_pack import pack_onnx

__all__ = ["OnnxExporter", "OPSET", "onnx_runner", "int8_groups", "write_onnx"]

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


def onnx_runner(path: Path, provider: str = "CPUExecutionProvider") -> tuple[Runner, str]:
    """An onnxruntime session over ``path`` as a runner, and a description of the engine.

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
            self._quantize(path, int8_path, inputs, groups)
            run8, engine8 = onnx_runner(int8_path)
            extra.append(ExportedFile("onnx-int8", int8_path.relative_to(folder), run8,
                                      f"{engine8}, int8 dynamic ({', '.join(groups)})"))
        packed = pack_onnx(path, inputs.loaded.pack, inputs.model.state_dict()) if inputs.loaded.pack.grids else []
        run, engine = onnx_runner(path)
        if packed:
            engine += f", {len(packed)} low-bit weights packed (unpacked once at session start)"
        return [ExportedFile("onnx", path.relative_to(folder), run, engine), *extra]

    @staticmethod
    def _quantize(src: Path, dst: Path, inputs: ExportInputs, groups: list[str]) -> None:
        import onnx
        from onnx import numpy_helper
        from onnxruntime.quantization import QuantType, quantize_dynamic

        graph = onnx.load(str(src)).graph
        inits = {i.name: i for i in graph.initializer}
        nodes = _nodes_of_groups(graph, inits, numpy_helper, inputs.model, groups)
        if not nodes:
            log.warning("no ONNX node matched the 8-bit groups %s; %s is a plain copy", groups, dst.name)
        op_types = ["MatMul", "Gemm"] + (["Gather"] if "embedding" in groups else [])
        root = logging.getLogger()
        drop = _DropOrtAdvice()
        root.addFilter(drop)
        try:
            quantize_dynamic(
                str(src), str(dst), weight_type=QuantType.QInt8,
                per_channel=inputs.candidate.quant.granularity == "per_channel",
                op_types_to_quantize=op_types, nodes_to_quantize=nodes or None,
                nodes_to_exclude=None if nodes else [n.name for n in graph.node],
            )
        except Exception as e:
            raise ExportError(f"onnxruntime int8 quantization failed: {type(e).__name__}: {e}",
                              field="format", value="onnx",
                              fix="export --format torchscript or hf, which keep the 8-bit grid as fp32") from e
        finally:
            root.removeFilter(drop)


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
