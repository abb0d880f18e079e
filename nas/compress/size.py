"""Model size in bytes, counting the bits a deployed model would really store."""

from __future__ import annotations

import math
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ._util import packed_int8_linears
from .prune import WeightMask
from .quant import FakeQuantize

__all__ = ["model_size_bytes", "SCALE_BYTES", "ZERO_POINT_BYTES"]

#: Bytes per stored quantization scale (fp32).
SCALE_BYTES = 4
#: Bytes per stored zero-point (a code of at most 8 bits).
ZERO_POINT_BYTES = 1
# Quantization schemes that keep one scale per output channel.
_PER_CHANNEL_SCHEMES: tuple[object, ...] = (
    torch.per_channel_affine, torch.per_channel_symmetric, torch.per_channel_affine_float_qparams,
)


def model_size_bytes(model: nn.Module) -> int:
    """Bytes needed to store the model's weights as it would be served.

    Accounting rules:

    - a fake-quantized weight counts what :mod:`nas.compress.pack` writes: ``ceil(numel * bits / 8)``
      bytes of packed codes (binary 1 bit, ternary 2), one fp32 scale per channel (or per tensor), and
      one zero-point byte per scale for uniform asymmetric grids; bf16 (16-bit) weights count 2 bytes
      per element and no scale;
    - an int8 dynamic Linear counts 1 byte per weight, an fp32 scale per channel and its fp32 bias;
    - structurally pruned heads/neurons are gone from the matrices, so they cost nothing;
    - masked (magnitude, 2:4) weights are counted **dense**: no sparse storage format is used, and the
      bool masks themselves are training-time artefacts, not counted;
    - every other parameter and buffer counts at its dtype's size.

    Args:
        model: Any module; built models after :func:`quantize_`/:func:`prune_` are understood.

    Returns:
        Size in bytes.
    """
    counted: set[int] = set()
    total = _fake_quant_bytes(model, counted) + _packed_int8_bytes(model)
    for p in model.parameters():
        if id(p) not in counted:
            total += p.numel() * p.element_size()
    for mod in model.modules():
        if isinstance(mod, WeightMask):
            continue
        for b in mod.buffers(recurse=False):
            total += b.numel() * b.element_size()
    return int(total)


def _fake_quant_bytes(model: nn.Module, counted: set[int]) -> int:
    """Bytes of the fake-quantized weights, at their bit-width (see :func:`model_size_bytes`).

    Args:
        model: The model.
        counted: Gets the ``id`` of each fake-quantized original weight, so it is not counted again.

    Returns:
        Their size in bytes.
    """
    total = 0
    for module in model.modules():
        if not parametrize.is_parametrized(module):
            continue
        for plist in cast(nn.ModuleDict, module.parametrizations).values():
            original = cast(Tensor, plist.original)
            fq = [p for p in cast(nn.ModuleList, plist) if isinstance(p, FakeQuantize)]
            if fq:
                counted.add(id(original))
                total += _quantized_tensor_bytes(original, fq[-1])
    return total


def _quantized_tensor_bytes(original: Tensor, q: FakeQuantize) -> int:
    """Bytes of one weight stored as :mod:`nas.compress.pack` stores it: packed codes, scales, zero-points.

    ``ceil(numel * storage_bits / 8)`` bytes of codes (binary 1 bit, ternary 2), one fp32 scale per channel
    (or per tensor) and, for uniform asymmetric grids, one zero-point byte per scale; bf16 is 2 bytes per
    element and no scale.
    """
    if q.bits == 16:
        return original.numel() * 2
    n_ch = q.n_channels(original.shape)
    total = math.ceil(original.numel() * q.storage_bits / 8) + n_ch * SCALE_BYTES
    if q.stores_zero_point:
        total += n_ch * ZERO_POINT_BYTES
    return total


def _packed_int8_bytes(model: nn.Module) -> int:
    """Bytes of the int8 dynamic Linear layers: 1 byte per weight, fp32 scales and the bias."""
    total = 0
    for m in packed_int8_linears(model):
        packed: Any = m  # weight() and bias() are methods on dynamic quantized Linear
        w = packed.weight()
        total += w.numel()
        n_scales = w.q_per_channel_scales().numel() if w.qscheme() in _PER_CHANNEL_SCHEMES else 1
        total += n_scales * SCALE_BYTES
        bias = packed.bias()
        if bias is not None:
            total += bias.numel() * bias.element_size()
    return int(total)
