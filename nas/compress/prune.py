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

That ranking is ``importance: magnitude``. ``importance: taylor`` ranks the same units by first-order
Taylor scores from the task loss's gradients (:mod:`nas.compress.importance`); ``prune_`` then needs
``batch_losses``. Without them (a rebuild before ``load_state_dict``, where only the shapes matter) it ranks
by magnitude and the report says so. A gradual ``schedule`` is run by :mod:`nas.compress.gradual`.

Masks are parametrizations (``weight = original * mask``) kept for good: the zeros persist through
further training (the masked entries get zero gradient through the product), compose with fake-quant,
and the mask buffer travels in the ``state_dict``. Structured pruning removes the same *number* of
heads/neurons for the same candidate every time, so ``build`` + ``apply_candidate_compression`` +
``load_state_dict`` rebuilds a trial exactly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils import prune as torch_prune

from nas.config import PruneConfig
from nas.errors import ConfigError
from nas.vocab import SPARSITY_KIND, Registry

from ._util import num_params
from .importance import (
    IMPORTANCE,
    BatchLosses,
    Scores,
    attention_modules,
    ffn_modules,
    head_importance,
    masked_linears,
    neuron_importance,
)
from .report import CompressionReport

if TYPE_CHECKING:  # annotations only: nas.compress works on any model with this structure
    from nas.models import Attention, FeedForward

__all__ = ["WeightMask", "prune_", "magnitude_mask", "two_four_mask", "PRUNERS", "Pruner", "head_importance",
           "neuron_importance", "top_indices", "head_channels", "slice_heads", "slice_neurons", "check_plain",
           "prune_label", "SIMULATED_KINDS"]

log = logging.getLogger(__name__)


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


def top_indices(score: Tensor, k: int) -> Tensor:
    """The indices of the ``k`` highest scores, in increasing index order (so kept units keep their order)."""
    return torch.sort(torch.argsort(score, descending=True)[:k]).values


def head_channels(heads: Tensor, head_dim: int) -> Tensor:
    """The q/k/v output rows (and out_proj input columns) of ``heads``: ``head * head_dim + [0, head_dim)``."""
    return (heads[:, None] * head_dim + torch.arange(head_dim, device=heads.device)).reshape(-1)


def check_plain(module: nn.Module, fqn: str) -> None:
    """Refuse structured pruning of a layer that is already quantized or masked (it slices plain weights)."""
    if parametrize.is_parametrized(module):
        raise ConfigError(
            "structured pruning needs plain weights, but this layer is already quantized or masked",
            field=fqn,
            fix="prune heads/FFN neurons before quantize_ (apply_candidate_compression does this)",
        )


def _linear_like(src: Any, weight: Tensor, bias: Tensor | None) -> nn.Linear:
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


def heads_to_remove(n_heads: int, amount: float) -> int:
    """``round(n_heads * amount)``: the heads a layer loses at ``amount`` (refused when that is all of them)."""
    n_remove = int(round(n_heads * amount))
    if n_remove >= n_heads:
        raise ConfigError(f"removing {n_remove} of {n_heads} heads leaves none",
                          field="sparsity.amount", value=amount, fix="use a smaller amount")
    return n_remove


def neurons_to_remove(width: int, amount: float) -> int:
    """``round(width * amount)`` FFN neurons, keeping at least one."""
    return min(int(round(width * amount)), width - 1)


def _score(scores: Scores, fqn: str, size: int) -> Tensor:
    score = scores.get(fqn)
    if score is None or score.numel() != size:
        raise ConfigError("importance scores do not fit the model (computed on another model or shape)",
                          field=fqn, value=None if score is None else tuple(score.shape),
                          fix="compute the scores on this model, just before pruning it")
    return score


def slice_heads(attn: Attention, keep: Tensor) -> None:
    """Keep only the heads ``keep`` (increasing indices): q/k/v lose rows, out_proj columns; ``n_heads`` shrinks."""
    o, idx = attn.out_proj, head_channels(keep, int(attn.head_dim))
    for name in ("q_proj", "k_proj", "v_proj"):
        lin = getattr(attn, name)
        setattr(attn, name, _linear_like(lin, lin.weight.detach()[idx],
                                         None if lin.bias is None else lin.bias.detach()[idx]))
    attn.out_proj = _linear_like(o, o.weight.detach()[:, idx], None if o.bias is None else o.bias.detach())
    attn.n_heads = int(keep.numel())


def slice_neurons(ffn: FeedForward, keep: Tensor) -> None:
    """Keep only the FFN hidden neurons ``keep`` (increasing indices): fc1 loses rows, fc2 columns."""
    fc1, fc2 = ffn.fc1, ffn.fc2
    ffn.fc1 = _linear_like(fc1, fc1.weight.detach()[keep], None if fc1.bias is None else fc1.bias.detach()[keep])
    ffn.fc2 = _linear_like(fc2, fc2.weight.detach()[:, keep], None if fc2.bias is None else fc2.bias.detach())


def _prune_heads(model: nn.Module, amount: float, scores: Scores) -> dict[str, object]:
    removed: list[int] = []
    for fqn, attn in attention_modules(model):
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            check_plain(getattr(attn, proj), f"{fqn}.{proj}")
        nh = int(attn.n_heads)
        n_remove = heads_to_remove(nh, amount)
        removed.append(n_remove)
        if n_remove:
            slice_heads(attn, top_indices(_score(scores, fqn, nh), nh - n_remove))
    return {"heads_removed_per_layer": removed}


def _prune_ffn(model: nn.Module, amount: float, scores: Scores) -> dict[str, object]:
    removed: list[int] = []
    for fqn, ffn in ffn_modules(model):
        check_plain(ffn.fc1, f"{fqn}.fc1")
        check_plain(ffn.fc2, f"{fqn}.fc2")
        width = int(ffn.fc1.out_features)
        n_remove = neurons_to_remove(width, amount)
        removed.append(n_remove)
        if n_remove:
            slice_neurons(ffn, top_indices(_score(scores, fqn, width), width - n_remove))
    return {"neurons_removed_per_layer": removed}


def _mask_linears(model: nn.Module, kind: str, amount: float, scores: Scores) -> dict[str, object]:
    zeros = total = 0
    dense_tail = 0
    for fqn, module in masked_linears(model):  # Linformer E/F are not Linear weights
        score = _score(scores, fqn, module.weight.numel()).view_as(module.weight)
        mask = magnitude_mask(score, amount) if kind == "magnitude" else two_four_mask(score)
        if kind == "2:4":
            dense_tail += int(score.shape[1] % 4)
        parametrize.register_parametrization(module, "weight", WeightMask(mask))
        zeros += int((~mask).sum())
        total += mask.numel()
        log.debug("masked %s: %.3f sparse", fqn, float((~mask).float().mean()))
    details: dict[str, object] = {"sparsity_reached": zeros / total if total else 0.0, "masked_weights": total}
    if kind == "2:4" and dense_tail:
        details["dense_tail_inputs_per_row"] = dense_tail
    return details


#: Kinds whose effect is a mask over dense matrices (``simulated``: no energy saving can come from it).
SIMULATED_KINDS = ("magnitude", "2:4")


def prune_label(config: PruneConfig) -> str:
    """The ``kernels`` text of ``config``'s pruning; a non-default importance or schedule is named too."""
    label = {
        "none": "dense fp32 (no pruning)",
        "heads": "structured head pruning (physically smaller dense matrices)",
        "ffn": "structured FFN-neuron pruning (physically smaller dense matrices)",
        "magnitude": f"unstructured magnitude mask {config.amount:.0%} (dense kernels, no energy saving)",
        "2:4": "2:4 semi-structured mask (dense kernels; no 2:4 sparse kernel used)",
    }[config.kind]
    if (config.importance, config.schedule) != ("magnitude", "one_shot"):
        label += f" [{config.importance} importance, {config.schedule.replace('_', '-')} schedule]"
    return label


#: How a sparsity kind prunes: ``(model, amount, scores) -> details`` (scores from :mod:`.importance`).
Pruner = Callable[[nn.Module, float, Scores], dict[str, object]]
#: One :data:`Pruner` per name of :data:`nas.vocab.SPARSITY_KIND`.
PRUNERS: Registry[Pruner] = Registry(SPARSITY_KIND, "pruner")
PRUNERS.register("none")(lambda model, amount, scores: {})
PRUNERS.register("heads")(_prune_heads)
PRUNERS.register("ffn")(_prune_ffn)
PRUNERS.register("magnitude")(lambda model, amount, scores: _mask_linears(model, "magnitude", amount, scores))
PRUNERS.register("2:4")(lambda model, amount, scores: _mask_linears(model, "2:4", 0.5, scores))
PRUNERS.require_complete()


def importance_scores(model: nn.Module, config: PruneConfig,
                      batch_losses: BatchLosses | None) -> tuple[Scores, dict[str, object]]:
    """The scores ``config.importance`` ranks ``config.kind``'s units by, and the report's words for them.

    ``taylor`` without ``batch_losses`` (a rebuild that loads trained weights next: only shapes matter) ranks
    by magnitude, and says so.
    """
    importance = config.importance
    facts: dict[str, object] = {"importance": importance}
    if importance == "taylor" and batch_losses is None:
        log.info("taylor importance without training batches: ranking by magnitude (shapes only)")
        importance = "magnitude"
        facts = {"importance": "magnitude", "importance_asked": "taylor (no training batches given)"}
    return IMPORTANCE.lookup(importance)(model, config.kind, batch_losses), facts


def prune_(model: nn.Module, prune_config: PruneConfig, *,
           batch_losses: BatchLosses | None = None) -> CompressionReport:
    """Prune a model in place, at once, to ``prune_config.amount`` (see the module docstring for each kind).

    Args:
        model: A model from :func:`nas.models.build`.
        prune_config: Kind, amount and importance (its ``schedule`` is the caller's: this prunes at once).
        batch_losses: The task loss of a few training batches (:data:`~nas.compress.importance.BatchLosses`),
            read by ``importance: taylor``.

    Returns:
        A :class:`CompressionReport`. Masks (``magnitude``, ``2:4``) are ``simulated=True``: dense kernels
        still multiply the zeros. Structured kinds are ``simulated=False``: the matrices are smaller.
        ``details`` names the importance used.

    Raises:
        ConfigError: If the config is not a PruneConfig, its kind is unknown, a structured prune would
            remove every head, or the layers are already quantized/masked before structured pruning.
    """
    if not isinstance(prune_config, PruneConfig):
        raise ConfigError(f"prune_ needs a PruneConfig, got {type(prune_config).__name__}",
                          field="prune_config", fix="pass nas.config.PruneConfig(...)")
    before = num_params(model)
    kind, amount = prune_config.kind, prune_config.amount
    pruner = PRUNERS.lookup(kind)
    kernels, simulated = prune_label(prune_config), kind in SIMULATED_KINDS
    if prune_config.is_noop:
        return CompressionReport(kernels=kernels, simulated=simulated, params_before=before,
                                 params_after=before, details={"step": "prune", "kind": "none"})
    scores, facts = importance_scores(model, prune_config, batch_losses)
    facts["schedule"] = "one_shot"
    if prune_config.schedule != "one_shot":  # a rebuild of a gradual trial: the same shapes, at once
        facts["schedule_asked"] = f"{prune_config.schedule} (pruned at once here)"
    details = pruner(model, amount, scores)
    after = num_params(model)
    log.info("prune_ %s(%.2f, %s): params %d -> %d", kind, amount, facts["importance"], before, after)
    return CompressionReport(kernels=kernels, simulated=simulated, params_before=before, params_after=after,
                             details={"step": "prune", "kind": kind, "amount": amount, **facts, **details})
