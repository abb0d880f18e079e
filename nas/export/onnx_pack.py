"""Packed low-bit initializers in an ONNX graph, unpacked by standard opset-18 operators.

Each quantized weight's fp32 initializer (the exporter may have folded a transpose into it) is replaced by
its packed codes (uint8, ``8 / bits`` codes a byte, as :mod:`nas.compress.pack` packs them), its fp32
scales and, for uniform asymmetric grids, its zero-points, plus a small subgraph that rebuilds the fp32
tensor: ``BitShift`` and ``BitwiseAnd`` split the bytes into codes, then ``Cast``, ``Sub`` (zero-point) and
``Mul`` (scale). Every input of that subgraph is an initializer, so onnxruntime folds it once when the
session starts: the file holds the low-bit codes and inference runs on the same fp32 values as before.

Initializers are matched to the model's weights by value (as the int8 path does), in either orientation.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nas.compress.pack import PackPlan, pack_codes
from nas.compress.quant import QuantGrid

__all__ = ["pack_onnx"]

log = logging.getLogger(__name__)


def _match(arr: np.ndarray, weights: dict[str, tuple[np.ndarray, QuantGrid]]) -> tuple[str, bool] | None:
    """The weight ``arr`` holds, and whether it holds it transposed; None when it is none of them."""
    for key, (w, _) in weights.items():
        if arr.shape == w.shape and np.array_equal(arr, w):
            return key, False
        if w.ndim == 2 and arr.shape == w.T.shape and np.array_equal(arr, w.T):
            return key, True
    return None


def _oriented(grid: QuantGrid, transposed: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    codes, scale, zp = grid.codes, grid.scale, grid.zero_point
    if transposed:
        codes = codes.transpose(0, 1)
        scale, zp = (scale.transpose(0, 1), zp.transpose(0, 1)) if scale.dim() == 2 else (scale, zp)
    return codes.contiguous(), scale.float().contiguous(), zp.float().contiguous()


def _unpack_nodes(helper: Any, numpy_helper: Any, name: str, grid: QuantGrid,
                  transposed: bool) -> tuple[list[Any], list[Any]]:
    """Initializers and nodes that rebuild the fp32 tensor ``name`` from its packed codes."""
    codes, scale, zp = _oriented(grid, transposed)
    bits, shape = grid.storage_bits, list(codes.shape)
    packed = pack_codes(codes, bits).numpy()
    p = f"{name}__nas"
    inits = [numpy_helper.from_array(packed, f"{p}_codes"),
             numpy_helper.from_array(scale.numpy(), f"{p}_scale"),
             numpy_helper.from_array(np.array(shape, dtype=np.int64), f"{p}_shape"),
             numpy_helper.from_array(np.array([codes.numel()], dtype=np.int64), f"{p}_n"),
             numpy_helper.from_array(np.array([0], dtype=np.int64), f"{p}_zero_i"),
             numpy_helper.from_array(np.array([-1], dtype=np.int64), f"{p}_flat")]
    flat_zp = zp.reshape(-1)
    if bool((flat_zp == flat_zp[0]).all()):  # implied: one number, not one byte a channel
        inits.append(numpy_helper.from_array(np.array(float(flat_zp[0]), dtype=np.float32), f"{p}_zp"))
    else:
        inits.append(numpy_helper.from_array(zp.numpy().astype(np.uint8), f"{p}_zp_u8"))
    nodes = []
    if bits == 8:
        nodes.append(helper.make_node("Identity", [f"{p}_codes"], [f"{p}_all"]))
    else:
        shifts = np.arange(0, 8, bits, dtype=np.uint8)
        inits += [numpy_helper.from_array(shifts.reshape(1, -1), f"{p}_shifts"),
                  numpy_helper.from_array(np.array([(1 << bits) - 1], dtype=np.uint8), f"{p}_mask"),
                  numpy_helper.from_array(np.array([1], dtype=np.int64), f"{p}_axis")]
        nodes += [helper.make_node("Unsqueeze", [f"{p}_codes", f"{p}_axis"], [f"{p}_col"]),
                  helper.make_node("BitShift", [f"{p}_col", f"{p}_shifts"], [f"{p}_shifted"], direction="RIGHT"),
                  helper.make_node("BitwiseAnd", [f"{p}_shifted", f"{p}_mask"], [f"{p}_masked"]),
                  helper.make_node("Reshape", [f"{p}_masked", f"{p}_flat"], [f"{p}_all"])]
    nodes += [helper.make_node("Slice", [f"{p}_all", f"{p}_zero_i", f"{p}_n"], [f"{p}_used"]),
              helper.make_node("Reshape", [f"{p}_used", f"{p}_shape"], [f"{p}_q"]),
              helper.make_node("Cast", [f"{p}_q"], [f"{p}_qf"], to=1)]
    if not any(i.name == f"{p}_zp" for i in inits):
        nodes.append(helper.make_node("Cast", [f"{p}_zp_u8"], [f"{p}_zp"], to=1))
    nodes += [helper.make_node("Sub", [f"{p}_qf", f"{p}_zp"], [f"{p}_centred"]),
              helper.make_node("Mul", [f"{p}_centred", f"{p}_scale"], [name])]
    return inits, nodes


def pack_onnx(path: Path, plan: PackPlan, state: dict[str, torch.Tensor]) -> list[str]:
    """Rewrite ``path`` with every planned weight's initializer packed; returns the weights packed.

    Args:
        path: An ONNX file written by :func:`nas.export.onnx.write_onnx`.
        plan: The grids (:func:`nas.compress.pack.pack_plan`).
        state: The plain model's weights by name (the values the initializers hold).
    """
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    weights = {k: (state[k].detach().cpu().numpy(), g) for k, g in plan.grids.items() if k in state}
    packed: list[str] = []
    new_inits, new_nodes, drop = [], [], []
    for init in graph.initializer:
        if init.data_type != onnx.TensorProto.FLOAT or len(init.dims) < 1:
            continue
        found = _match(numpy_helper.to_array(init), weights)
        if found is None:
            continue
        key, transposed = found
        inits, nodes = _unpack_nodes(helper, numpy_helper, init.name, weights[key][1], transposed)
        new_inits += inits
        new_nodes += nodes
        drop.append(init)
        packed.append(key)
    for init in drop:
        graph.initializer.remove(init)
    graph.initializer.extend(new_inits)
    for i, node in enumerate(new_nodes):  # the unpacking runs first: the graph stays topologically sorted
        graph.node.insert(i, node)
    onnx.save(model, str(path))
    log.debug("packed %d ONNX initializers: %s", len(packed), packed)
    return packed
