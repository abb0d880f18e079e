"""Model size in bytes, counting the bits a deployed model would really store."""

from __future__ import annotations

import math
from typing import Any, cast

from torch import Tensor, nn
from torch.nn.utils import parametrize

from ._util import packed_int8_linears
from .prune import WeightMask
from .quant import FakeQuantize

__all__ = ["model_size_bytes", "SCALE_BYTES"]

#: Bytes per stored quantization scale (fp32).
SCALE_BYTES = 4


def model_size_bytes(model: nn.Module) -> int:
    """Bytes needed to store the model's weights as it would be served.

    Accounting rules:

    - a fake-quantized weight counts ``ceil(numel * bits / 8)`` bytes plus one fp32 scale per channel
      (or per tensor), plus one zero-point of ``ceil(bits / 8)`` bytes each when asymmetric;
      bf16 (16-bit) weights count 2 bytes per element and no scale;
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
    total = 0
    counted: set[int] = set()
    for module in model.modules():
        if parametrize.is_parametrized(module):
            for plist in cast(nn.ModuleDict, module.parametrizations).values():
                original = cast(Tensor, plist.original)
                fq = [p for p in cast(nn.ModuleList, plist) if isinstance(p, FakeQuantize)]
                if not fq:
                    continue
                q = fq[-1]
                counted.add(id(original))
                if q.bits == 16:
                    total += original.numel() * 2
                    continue
                total += math.ceil(original.numel() * q.bits / 8)
                n_ch = q.n_channels(original.shape)
                total += n_ch * SCALE_BYTES
                if q.scheme == "asymmetric":
                    total += n_ch * math.ceil(q.bits / 8)
    for m in packed_int8_linears(model):
        packed: Any = m  # weight() and bias() are methods on dynamic quantized Linear
        w = packed.weight()
        total += w.numel()
        n_scales = w.q_per_channel_scales().numel() if w.qscheme() in _per_channel_schemes() else 1
        total += n_scales * SCALE_BYTES
        bias = packed.bias()
        if bias is not None:
            total += bias.numel() * bias.element_size()
    for p in model.parameters():
        if id(p) not in counted:
            total += p.numel() * p.element_size()
    for mod in model.modules():
        if isinstance(mod, WeightMask):
            continue
        for b in mod.buffers(recurse=False):
            total += b.numel() * b.element_size()
    return int(total)


def _per_channel_schemes() -> tuple[object, ...]:
    import torch

    return (torch.per_channel_affine, torch.per_channel_symmetric, torch.per_channel_affine_float_qparams)
