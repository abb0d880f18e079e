"""Packed low-bit storage: quantized weights as integer codes, so the file holds the bits it claims.

A fake-quantized weight is ``(codes - zero_point) * scale`` (:class:`~nas.compress.quant.QuantGrid`). Its
codes are packed ``8 // bits`` to a byte (1, 2 and 4 bits; ternary uses 2-bit codes; 8-bit codes are one
byte each), little end first, next to one fp32 scale per channel (or per tensor). A zero-point is stored
per channel only for uniform asymmetric grids; the others' is implied (``2^(b-1) - 1`` for symmetric, 0.5
for binary, 1 for ternary) and written once in the metadata. bf16 weights are stored as bfloat16.

In a safetensors file a packed weight ``W`` becomes ``W.nas_codes`` (uint8), ``W.nas_scale`` (fp32) and, for
asymmetric grids, ``W.nas_zero_point`` (uint8); the file's metadata key ``nas_packed`` (JSON) names each
packed weight with its bits, shape and implied zero-point, and ``nas_bf16`` lists the bf16 ones.
:func:`unpack_state` restores the exact fp32 values the model computed with, bit for bit.
"""

from __future__ import annotations

import dataclasses
import json
from typing import cast

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from nas.errors import ExportError

from .quant import FakeQuantize, QuantGrid

__all__ = ["PackPlan", "pack_codes", "unpack_codes", "pack_plan", "pack_state", "unpack_state"]

_CODES, _SCALE, _ZERO = ".nas_codes", ".nas_scale", ".nas_zero_point"
_FIX = "re-export the model with `nas export`"


@dataclasses.dataclass(frozen=True)
class PackPlan:
    """Which weights are stored packed (with their grids) and which as bfloat16.

    Attributes:
        grids: Weight name (a ``state_dict`` key of the plain model) -> its grid.
        bf16: Names of the weights stored as bfloat16.
    """

    grids: dict[str, QuantGrid] = dataclasses.field(default_factory=dict)
    bf16: frozenset[str] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.grids or self.bf16)


def pack_codes(codes: Tensor, bits: int) -> Tensor:
    """``codes`` (integers in ``[0, 2**bits)``) flattened and packed ``8 // bits`` per byte (uint8, 1-D)."""
    flat = codes.reshape(-1).to(torch.int64)
    if bits == 8:
        return flat.to(torch.uint8)
    per = 8 // bits
    pad = (-flat.numel()) % per
    flat = torch.cat([flat, flat.new_zeros(pad)]).reshape(-1, per)
    shifts = torch.arange(0, 8, bits, dtype=torch.int64)
    return (flat << shifts).sum(dim=1).to(torch.uint8)


def unpack_codes(packed: Tensor, bits: int, numel: int) -> Tensor:
    """The first ``numel`` codes of :func:`pack_codes`'s output, as int64."""
    data = packed.reshape(-1).to(torch.int64)
    if bits == 8:
        return data[:numel]
    shifts = torch.arange(0, 8, bits, dtype=torch.int64)
    return ((data[:, None] >> shifts) & ((1 << bits) - 1)).reshape(-1)[:numel]


def pack_plan(model: nn.Module) -> PackPlan:
    """The grid of every fake-quantized weight of ``model`` (call it before :func:`materialize_`).

    Each parametrization chain is replayed from its ``original`` so that the grid is taken on exactly
    what the :class:`FakeQuantize` sees (after a pruning mask, say). Names are those of the plain model's
    ``state_dict`` (a module shared by several layers is named once, by its first name).
    """
    grids: dict[str, QuantGrid] = {}
    bf16: set[str] = set()
    with torch.no_grad():
        for name, module in model.named_modules():
            if not parametrize.is_parametrized(module):
                continue
            for pname, plist in cast(nn.ModuleDict, module.parametrizations).items():
                x = cast(Tensor, plist.original)
                for p in cast(nn.ModuleList, plist):
                    if isinstance(p, FakeQuantize):
                        key = f"{name}.{pname}" if name else pname
                        if p.bits == 16:
                            bf16.add(key)
                        else:
                            grids[key] = p.grid(x)
                    x = p(x)
    return PackPlan(grids, frozenset(bf16))


def _implied(zero_point: Tensor) -> float | None:
    """The single zero-point of every channel, or None when they differ (then it is stored)."""
    flat = zero_point.reshape(-1)
    return float(flat[0]) if bool((flat == flat[0]).all()) else None


def pack_state(state: dict[str, Tensor], plan: PackPlan) -> tuple[dict[str, Tensor], dict[str, str]]:
    """``state`` with each planned weight packed, and the safetensors metadata describing them.

    Raises:
        ExportError: A planned weight's value is not its grid's (the model changed since :func:`pack_plan`).
    """
    out = dict(state)
    meta: dict[str, dict[str, object]] = {}
    for key, grid in plan.grids.items():
        if key not in out:
            continue
        w = out.pop(key)
        if not torch.equal(grid.value().to(w.dtype).reshape(w.shape), w):
            raise ExportError(f"{key} is not on its quantization grid", field=key, fix=_FIX)
        out[key + _CODES] = pack_codes(grid.codes, grid.storage_bits)
        out[key + _SCALE] = grid.scale.reshape(-1).float().contiguous()
        zp = _implied(grid.zero_point)
        if zp is None:
            out[key + _ZERO] = grid.zero_point.reshape(-1).to(torch.uint8).contiguous()
        meta[key] = {"bits": grid.storage_bits, "shape": list(w.shape), "scale_shape": list(grid.scale.shape),
                     "zero_point": zp}
    for key in plan.bf16:
        if key in out:
            out[key] = out[key].to(torch.bfloat16).contiguous()
    return out, {"nas_packed": json.dumps(meta), "nas_bf16": json.dumps(sorted(k for k in plan.bf16 if k in out))}


def _grid_of(state: dict[str, Tensor], key: str, info: dict[str, object]) -> QuantGrid:
    shape = [int(x) for x in cast(list[int], info["shape"])]
    scale_shape = [int(x) for x in cast(list[int], info["scale_shape"])]
    bits = int(cast(int, info["bits"]))
    numel = 1
    for d in shape:
        numel *= d
    codes = unpack_codes(state.pop(key + _CODES), bits, numel).reshape(shape)
    scale = state.pop(key + _SCALE).float().reshape(scale_shape)
    zp_value = info.get("zero_point")
    zero_point = (torch.full_like(scale, float(cast(float, zp_value))) if zp_value is not None
                  else state.pop(key + _ZERO).float().reshape(scale_shape))
    return QuantGrid(codes, scale, zero_point, bits)


def unpack_state(state: dict[str, Tensor], metadata: dict[str, str] | None) -> tuple[dict[str, Tensor], PackPlan]:
    """The plain fp32 state of a file written with :func:`pack_state`, and its plan (to write it again).

    A file without ``nas_packed`` metadata is returned as it is, with an empty plan.

    Raises:
        ExportError: The metadata is damaged or names a tensor the file lacks.
    """
    meta = metadata or {}
    if "nas_packed" not in meta:
        return state, PackPlan()
    out = dict(state)
    try:
        packed = json.loads(meta["nas_packed"])
        bf16 = frozenset(json.loads(meta.get("nas_bf16", "[]")))
        grids = {key: _grid_of(out, key, info) for key, info in packed.items()}
    except (KeyError, ValueError, TypeError, RuntimeError) as e:
        raise ExportError(f"the packed weights are damaged ({type(e).__name__}: {e})", field="model.safetensors",
                          fix=_FIX) from e
    for key, grid in grids.items():
        out[key] = grid.value()
    for key in bf16:
        if key in out:
            out[key] = out[key].float()
    return out, PackPlan(grids, bf16)
