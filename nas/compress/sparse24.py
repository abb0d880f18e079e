"""Real 2:4 sparse kernels for 2:4-masked Linears where the device has them (torch semi-structured sparsity).

A ``sparsity.kind: 2:4`` candidate trains with a mask over dense weights (:mod:`.prune`). At serving time on
a CUDA device of compute capability 8.0 or newer, :func:`convert_two_four_` swaps each Linear whose baked
weight is 2:4 (at most 2 non-zeros in every 4 consecutive inputs) for a ``to_sparse_semi_structured``
weight, so the product runs on torch's CUTLASS or cuSPARSELt 2:4 kernels. Elsewhere (the CPU, older GPUs)
nothing changes and the reason is returned, for the ``kernels`` label: the mask stays on dense kernels.

Each converted layer is run once before it is kept; a layer the kernel refuses (shape, dtype) stays dense
and is named in the reason, so a trial never fails on the conversion.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.sparse import to_sparse_semi_structured

__all__ = ["MIN_CAPABILITY", "semi_structured_unavailable", "is_two_four", "convert_two_four_", "TWO_FOUR_KERNELS"]

log = logging.getLogger(__name__)

#: The oldest CUDA compute capability with 2:4 sparse tensor cores (Ampere).
MIN_CAPABILITY = (8, 0)

#: The ``kernels`` label of a converted layer set (with the layer count appended).
TWO_FOUR_KERNELS = "2:4 semi-structured sparse kernels (torch to_sparse_semi_structured, CUTLASS/cuSPARSELt)"

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def semi_structured_unavailable(device: str) -> str | None:
    """Why 2:4 sparse kernels cannot run on ``device`` (``cpu``, ``cuda:N``), or None when they can."""
    if not device.startswith("cuda"):
        return "no 2:4 sparse kernel on the CPU (torch's semi-structured kernels are CUDA-only)"
    if not torch.cuda.is_available():
        return "CUDA is not available here"
    capability = torch.cuda.get_device_capability(device)
    if capability < MIN_CAPABILITY:
        return (f"{torch.cuda.get_device_name(device)} is sm{capability[0]}{capability[1]}; 2:4 sparse kernels "
                "need sm80 or newer (Ampere, Hopper)")
    return None


def is_two_four(weight: Tensor) -> bool:
    """Whether every group of 4 consecutive inputs of every row has at most 2 non-zeros (and groups tile the row)."""
    if weight.dim() != 2 or weight.shape[1] % 4:
        return False
    groups = (weight.detach() != 0).reshape(weight.shape[0], -1, 4)
    return bool((groups.sum(-1) <= 2).all())


def _convert_one(module: nn.Linear, dtype: torch.dtype, to_sparse: Callable[[Tensor], Any]) -> str | None:
    """Swap ``module``'s weight for its 2:4 sparse form and run it once; the failure's text if it fails (undone)."""
    dense = module.weight
    try:
        module.weight = nn.Parameter(to_sparse(dense.detach().to(dtype)), requires_grad=False)
        if module.bias is not None:
            module.bias = nn.Parameter(module.bias.detach().to(dtype), requires_grad=False)
        autocast = torch.autocast(dense.device.type, dtype=dtype, enabled=dtype != torch.float32)
        with torch.inference_mode(), autocast:  # as the measurement runs it (evaluators.measure)
            module(torch.zeros(64, module.in_features, device=dense.device))
    except Exception as e:  # any refusal by the kernel (shape, dtype, build): keep this layer dense
        module.weight = dense
        if module.bias is not None:
            module.bias = nn.Parameter(module.bias.detach().to(dense.dtype), requires_grad=False)
        return f"{type(e).__name__}: {e}".splitlines()[0][:200]
    return None


def convert_two_four_(model: nn.Module, device: str, dtype: str = "float32", *,
                      to_sparse: Callable[[Tensor], Any] | None = None) -> tuple[list[str], str | None]:
    """Put every baked 2:4 Linear of ``model`` on 2:4 sparse kernels, in place (inference only).

    Args:
        model: A serving copy on ``device`` whose masks are baked (:func:`nas.compress.materialize_`).
        device: Where it runs.
        dtype: The measurement dtype (``float32``, ``bfloat16``, ``float16``); sparse weights are stored in it.
        to_sparse: The conversion (default ``torch.sparse.to_sparse_semi_structured``); given, the device
            check is skipped (tests).

    Returns:
        ``(converted layer names, why some or all were not converted or None)``.
    """
    if to_sparse is None:
        reason = semi_structured_unavailable(device)
        if reason is not None:
            return [], reason
        to_sparse = to_sparse_semi_structured
    done: list[str] = []
    refused: dict[str, str] = {}
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or parametrize.is_parametrized(module) \
                or not is_two_four(module.weight):
            continue
        failure = _convert_one(module, _DTYPES[dtype], to_sparse)
        if failure is None:
            done.append(name)
        else:
            refused[name] = failure
    if refused:
        log.warning("2:4 kernels refused %d layers (kept dense): %s", len(refused), refused)
    reason = None if not refused else f"{len(refused)} layers kept dense: {next(iter(refused.values()))}"
    return done, reason
