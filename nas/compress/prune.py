"""Pruning applied in place: persistent masks (magnitude, 2:4) or physical slicing (heads, FFN neurons).

- ``magnitude``: per weight, the ``round(amount * numel)`` smallest-|w| entries are masked, using the mask
  computed by ``torch.nn.utils.prune.L1Unstructured`` (the method behind ``prune.l1_unstructured``).
- ``2:4``: in every group of 4 consecutive input weights of a row, the 2 largest |w| are kept
  (NVIDIA's semi-structured sparsity pattern; Mishra et al., 2021). A trailing group of fewer than 4
  inputs (when ``in_features % 4 != 0``) is left dense and reported.
- ``heads``: per layer, the ``round(n_heads * amount)`` heads with the smallest L2 norm over their q/k/v
  rows and out_proj columns (:func:`head_importance`) are removed (cf. Michel et al., 2019, "Are Sixteen
  Heads Really Better than One?"); q/k/v lose rows, out_proj loses columns, ``n_heads`` shrinks.
- ``ffn``: per layer, the ``round(d_ffn * amount)`` hidden neurons with the smallest L2 norm over their
  fc1 row and fc2 column (:func:`neuron_importance`) are removed (at least one neuron always stays).

Masks are parametrizations (``weight = original * mask``) kept for good: the zeros persist through
further training (the masked entries get zero gradient through the product), compose with fake-quant,
and the mask buffer travels in the ``state_dict``. Structured pruning removes the same *number* of
heads/neurons for the same candidate every time, so ``build`` + ``apply_candidate_compression`` +
``load_state_dict`` rebuilds a trial exactly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, TypeVar

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils import prune as torch_prune

from nas.config import PruneConfig
from nas.errors import ConfigError
from nas.vocab import SPARSITY_KIND, Registry

from ._util import layer_groups, num_params, qualified_names
from .report import CompressionReport

if TYPE_CHECKING:  # annotations only: nas.compress works on any model with this structure
    from nas.models import Attention, FeedForward

__all__ = ["WeightMask", "prune_", "magnitude_mask", "two_four_mask", "PRUNERS", "Pruner", "head_importance",
           "neuron_importance", "top_indices", "head_channels"]

log = logging.getLogger(__name__)
M = TypeVar("M")


class WeightMask(nn.Module):
    """Parametrization ``w -> w * mask``; ``mask`` is a bool buffer saved in the ``state_dict``."""

    mask: Tensor

    def __init__(self, mask: Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask.bool())

    def forward(self, w: Tensor) -> Tensor:
        """The weight with masked entries zeroed."""
        return w * self.mask.to(w.dtype)


def magnitude_mask(w: Tensor, amount: float) -> Tensor:
    """Keep-mask of ``w`` with the ``round(amount * numel)`` smallest |w| zeroed (L1 unstructured)."""
    method = torch_prune.L1Unstructured(amount=amount)
    mask: Tensor = method.compute_mask(w.detach(), default_mask=torch.ones_like(w))  # type: ignore[no-untyped-call]
    return mask.bool()


def two_four_mask(w: Tensor) -> Tensor:
    """Keep-mask with the 2 largest |w| of every 4 consecutive inputs per row (trailing <4 stay dense)."""
    out_f, in_f = w.shape
    full = (in_f // 4) * 4
    mask = torch.ones_like(w, dtype=torch.bool)
    if full:
        groups = w.detach()[:, :full].abs().reshape(out_f, full // 4, 4)  # (out, in/4, 4)
        keep = torch.zeros_like(groups, dtype=torch.bool)
        keep.scatter_(-1, groups.topk(2, dim=-1).indices, True)
        mask[:, :full] = keep.reshape(out_f, full)
    return mask


def head_importance(attn: Attention) -> Tensor:
    """(n_heads,) importance of each head: the squared L2 norm of its q/k/v rows and out_proj columns.

    A weight-magnitude proxy (cf. Michel et al., 2019): a head whose projections are small contributes
    little. Structured head pruning removes the least important heads; inheritance keeps the most important.
    """
    q, k, v, o = attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj
    nh, hs = int(attn.n_heads), int(attn.head_dim)
    score = torch.zeros(nh, device=q.weight.device)
    for lin in (q, k, v):
        score += lin.weight.detach().float().view(nh, hs, -1).pow(2).sum(dim=(1, 2))
    score += o.weight.detach().float().view(o.out_features, nh, hs).pow(2).sum(dim=(0, 2))
    return score


def neuron_importance(ffn: FeedForward) -> Tensor:
    """(d_ffn,) importance of each FFN hidden neuron: the squared L2 norm of its fc1 row and fc2 column."""
    fc1, fc2 = ffn.fc1, ffn.fc2
    return fc1.weight.detach().float().pow(2).sum(dim=1) + fc2.weight.detach().float().pow(2).sum(dim=0)


def top_indices(score: Tensor, k: int) -> Tensor:
    """The indices of the ``k`` highest scores, in increasing index order (so kept units keep their order)."""
    return torch.sort(torch.argsort(score, descending=True)[:k]).values


def head_channels(heads: Tensor, head_dim: int) -> Tensor:
    """The q/k/v output rows (and out_proj input columns) of ``heads``: ``head * head_dim + [0, head_dim)``."""
    return (heads[:, None] * head_dim + torch.arange(head_dim, device=heads.device)).reshape(-1)


def _check_plain(module: nn.Module, fqn: str) -> None:
    if parametrize.is_parametrized(module):
        raise ConfigError(
            "structured pruning needs plain weights, but this layer is already quantized or masked",
            field=fqn,
            fix="prune heads/FFN neurons before quantize_ (apply_candidate_compression does this)",
        )


def _linear_like(src: nn.Linear, weight: Tensor, bias: Tensor | None) -> nn.Linear:
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None,
                    device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None and new.bias is not None:
            new.bias.copy_(bias)
    new.weight.requires_grad_(src.weight.requires_grad)
    if new.bias is not None and src.bias is not None:
        new.bias.requires_grad_(src.bias.requires_grad)
    new.train(src.training)
    return new


def _unique(modules: Iterable[M]) -> list[M]:
    """Each module once, in order: a module shared by several layers (``candidate.sharing``) is pruned once."""
    return list({id(m): m for m in modules}.values())


def _prune_heads(model: nn.Module, amount: float) -> dict[str, object]:
    names = qualified_names(model)
    removed: list[int] = []
    for attn in _unique(block.attn for block in getattr(model, "blocks", [])):
        fqn = names[id(attn)]
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            _check_plain(getattr(attn, proj), f"{fqn}.{proj}")
        nh, hs = int(attn.n_heads), int(attn.head_dim)
        n_remove = int(round(nh * amount))
        if n_remove >= nh:
            raise ConfigError(
                f"removing {n_remove} of {nh} heads leaves none",
                field="sparsity.amount", value=amount, fix="use a smaller amount",
            )
        removed.append(n_remove)
        if n_remove == 0:
            continue
        o = attn.out_proj
        idx = head_channels(top_indices(head_importance(attn), nh - n_remove), hs)
        for name in ("q_proj", "k_proj", "v_proj"):
            lin = getattr(attn, name)
            setattr(attn, name, _linear_like(lin, lin.weight.detach()[idx],
                                             None if lin.bias is None else lin.bias.detach()[idx]))
        attn.out_proj = _linear_like(o, o.weight.detach()[:, idx], None if o.bias is None else o.bias.detach())
        attn.n_heads = nh - n_remove
    return {"heads_removed_per_layer": removed}


def _prune_ffn(model: nn.Module, amount: float) -> dict[str, object]:
    names = qualified_names(model)
    removed: list[int] = []
    for ffn in _unique(block.ffn for block in getattr(model, "blocks", [])):
        fc1, fc2 = ffn.fc1, ffn.fc2
        _check_plain(fc1, names[id(fc1)])
        _check_plain(fc2, names[id(fc2)])
        width = int(fc1.out_features)
        n_remove = min(int(round(width * amount)), width - 1)
        removed.append(n_remove)
        if n_remove == 0:
            continue
        idx = top_indices(neuron_importance(ffn), width - n_remove)
        ffn.fc1 = _linear_like(fc1, fc1.weight.detach()[idx], None if fc1.bias is None else fc1.bias.detach()[idx])
        ffn.fc2 = _linear_like(fc2, fc2.weight.detach()[:, idx], None if fc2.bias is None else fc2.bias.detach())
    return {"neurons_removed_per_layer": removed}


def _mask_linears(model: nn.Module, kind: str, amount: float) -> dict[str, object]:
    names = qualified_names(model)
    groups = layer_groups(model)
    zeros = total = 0
    dense_tail = 0
    for group in ("attention", "ffn"):
        for module, pname in groups[group]:
            if not isinstance(module, nn.Linear) or pname != "weight":
                continue  # Linformer E/F are not Linear weights
            w = module.weight
            mask = magnitude_mask(w, amount) if kind == "magnitude" else two_four_mask(w)
            if kind == "2:4":
                dense_tail += int(w.shape[1] % 4)
            parametrize.register_parametrization(module, "weight", WeightMask(mask))
            zeros += int((~mask).sum())
            total += mask.numel()
            log.debug("masked %s: %.3f sparse", names[id(module)], float((~mask).float().mean()))
    details: dict[str, object] = {"sparsity_reached": zeros / total if total else 0.0, "masked_weights": total}
    if kind == "2:4" and dense_tail:
        details["dense_tail_inputs_per_row"] = dense_tail
    return details


#: How a sparsity kind prunes: ``(model, amount) -> (details, kernels, simulated)``.
Pruner = Callable[[nn.Module, float], tuple[dict[str, object], str, bool]]
#: One :data:`Pruner` per name of :data:`nas.vocab.SPARSITY_KIND`.
PRUNERS: Registry[Pruner] = Registry(SPARSITY_KIND, "pruner")


@PRUNERS.register("none")
def _none(model: nn.Module, amount: float) -> tuple[dict[str, object], str, bool]:
    return {}, "dense fp32 (no pruning)", False


@PRUNERS.register("heads")
def _heads(model: nn.Module, amount: float) -> tuple[dict[str, object], str, bool]:
    return _prune_heads(model, amount), "structured head pruning (physically smaller dense matrices)", False


@PRUNERS.register("ffn")
def _ffn(model: nn.Module, amount: float) -> tuple[dict[str, object], str, bool]:
    return _prune_ffn(model, amount), "structured FFN-neuron pruning (physically smaller dense matrices)", False


@PRUNERS.register("magnitude")
def _magnitude(model: nn.Module, amount: float) -> tuple[dict[str, object], str, bool]:
    return (_mask_linears(model, "magnitude", amount),
            f"unstructured magnitude mask {amount:.0%} (dense kernels, no energy saving)", True)


@PRUNERS.register("2:4")
def _two_four(model: nn.Module, amount: float) -> tuple[dict[str, object], str, bool]:
    return (_mask_linears(model, "2:4", 0.5),
            "2:4 semi-structured mask (dense kernels; no 2:4 sparse kernel used)", True)


PRUNERS.require_complete()


def prune_(model: nn.Module, prune_config: PruneConfig) -> CompressionReport:
    """Prune a model in place (see the module docstring for each kind).

    Args:
        model: A model from :func:`nas.models.build`.
        prune_config: Kind and amount.

    Returns:
        A :class:`CompressionReport`. Masks (``magnitude``, ``2:4``) are ``simulated=True``: dense kernels
        still multiply the zeros. Structured kinds are ``simulated=False``: the matrices are smaller.

    Raises:
        ConfigError: If the config is not a PruneConfig, its kind is unknown, a structured prune would
            remove every head, or the layers are already quantized/masked before structured pruning.
    """
    if not isinstance(prune_config, PruneConfig):
        raise ConfigError(f"prune_ needs a PruneConfig, got {type(prune_config).__name__}",
                          field="prune_config", fix="pass nas.config.PruneConfig(...)")
    before = num_params(model)
    kind, amount = prune_config.kind, prune_config.amount
    details, kernels, simulated = PRUNERS.lookup(kind)(model, amount)
    if prune_config.is_noop:
        return CompressionReport(kernels=kernels, simulated=simulated, params_before=before,
                                 params_after=before, details={"step": "prune", "kind": "none"})
    after = num_params(model)
    log.info("prune_ %s(%.2f): params %d -> %d", kind, amount, before, after)
    return CompressionReport(kernels=kernels, simulated=simulated, params_before=before, params_after=after,
                             details={"step": "prune", "kind": kind, "amount": amount, **details})
