"""How important each prunable unit is: weight size (``magnitude``) or first-order Taylor (``taylor``).

A scorer returns :data:`Scores`, keyed by the qualified name of the module whose units it ranks (higher is
more important, so kept):

- ``heads``: each attention module -> ``(n_heads,)``;
- ``ffn``: each FFN module -> ``(d_ffn,)``;
- ``magnitude`` and ``2:4``: each masked Linear -> one score per weight (its shape).

``magnitude`` is the weight size: |w| per weight, the squared L2 norm of a head's q/k/v rows and out_proj
columns (:func:`head_importance`), of a neuron's fc1 row and fc2 column (:func:`neuron_importance`).

``taylor`` is the first-order Taylor estimate of the loss change when a unit is removed, summed over a few
batches of the task's training loss (Molchanov et al., 2019, "Importance Estimation for Neural Network
Pruning"):

- a weight: ``sum_b |w * dL_b/dw|`` (a masked weight scores 0);
- a head: ``sum_b |dL_b/dxi_h|``, where ``xi_h = 1`` is a gate on the head's output before ``out_proj``: the
  head-mask gradient of Michel et al., 2019 ("Are Sixteen Heads Really Better than One?");
- an FFN neuron: the same with a gate on its activation before ``fc2``.

The batches come from the caller as :data:`BatchLosses` (this layer never reads a task). Scores are taken in
eval mode (no dropout or LayerDrop) with ``torch.autograd.grad``, so no ``.grad`` of the model is touched
and a running optimizer's state stays as it was.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from nas.errors import ConfigError
from nas.vocab import PRUNE_IMPORTANCE, Registry

from ._util import layer_groups, qualified_names

if TYPE_CHECKING:  # annotations only: nas.compress works on any model with this structure
    from nas.models import Attention, FeedForward

__all__ = ["BatchLosses", "Scores", "Scorer", "IMPORTANCE", "head_importance", "neuron_importance",
           "weight_scores", "taylor_scores", "attention_modules", "ffn_modules", "masked_linears"]

#: ``batch_losses(model)`` yields the scalar training loss of each of a few batches under ``model`` (with
#: its graph); gradient importance sums over them.
BatchLosses = Callable[[nn.Module], Iterable[Tensor]]
#: Module name -> importance of each of its units (higher is kept).
Scores = dict[str, Tensor]
#: ``scorer(model, sparsity_kind, batch_losses) -> Scores``.
Scorer = Callable[[nn.Module, str, "BatchLosses | None"], Scores]
#: One :data:`Scorer` per name of :data:`nas.vocab.PRUNE_IMPORTANCE`.
IMPORTANCE: Registry[Scorer] = Registry(PRUNE_IMPORTANCE, "importance scorer")


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


def _named_unique(model: nn.Module, modules: Iterable[Any]) -> list[tuple[str, Any]]:
    """``(qualified name, module)`` of each module once, in order (a shared module is pruned once)."""
    names = qualified_names(model)
    return [(names[id(m)], m) for m in {id(m): m for m in modules}.values()]


def attention_modules(model: nn.Module) -> list[tuple[str, Attention]]:
    """The model's attention modules with their names, each once."""
    return _named_unique(model, (block.attn for block in getattr(model, "blocks", [])))


def ffn_modules(model: nn.Module) -> list[tuple[str, FeedForward]]:
    """The model's FFN modules with their names, each once."""
    return _named_unique(model, (block.ffn for block in getattr(model, "blocks", [])))


def masked_linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """The Linear layers whose weights unstructured and 2:4 masks cover (attention and FFN; not Linformer E/F)."""
    groups = layer_groups(model)
    return _named_unique(model, (m for g in ("attention", "ffn") for m, p in groups[g]
                                 if isinstance(m, nn.Linear) and p == "weight"))


def _units(model: nn.Module, kind: str) -> list[tuple[str, Any]]:
    if kind == "heads":
        return attention_modules(model)
    if kind == "ffn":
        return ffn_modules(model)
    return masked_linears(model) if kind in ("magnitude", "2:4") else []


@IMPORTANCE.register("magnitude")
def weight_scores(model: nn.Module, kind: str, batch_losses: BatchLosses | None = None) -> Scores:
    """Weight-size scores of ``kind``'s units (``batch_losses`` is not used)."""
    if kind == "heads":
        return {name: head_importance(a) for name, a in attention_modules(model)}
    if kind == "ffn":
        return {name: neuron_importance(f) for name, f in ffn_modules(model)}
    return {name: lin.weight.detach().float().abs() for name, lin in _units(model, kind)}


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@IMPORTANCE.register("taylor")
def taylor_scores(model: nn.Module, kind: str, batch_losses: BatchLosses | None) -> Scores:
    """First-order Taylor scores of ``kind``'s units, summed over the batches of ``batch_losses``.

    Raises:
        ConfigError: No batches were given.
    """
    if batch_losses is None:
        raise ConfigError("taylor importance needs the task loss's gradients, but no batches were given",
                          field="sparsity.importance", value="taylor",
                          fix="pass batch_losses (e.g. evaluators.pruning.importance_losses(task, ...)), "
                              "or use importance: magnitude")
    units = _units(model, kind)
    with _eval_mode(model):
        if kind in ("heads", "ffn"):
            return _gate_scores(model, units, kind, batch_losses)
        return _weight_taylor(model, units, batch_losses)


def _weight_leaf(lin: nn.Linear) -> Tensor:
    """The tensor autograd differentiates for a weight: ``original`` under a mask or fake-quant, else the weight."""
    plist = getattr(getattr(lin, "parametrizations", None), "weight", None)
    return plist.original if plist is not None else lin.weight  # type: ignore[no-any-return]


def _weight_taylor(model: nn.Module, units: list[tuple[str, Any]], batch_losses: BatchLosses) -> Scores:
    """``sum_b |w * dL_b/dw|`` per weight; a weight that is not trained keeps its magnitude as its score."""
    leaves = {name: _weight_leaf(lin) for name, lin in units}
    trained = [n for n, leaf in leaves.items() if leaf.requires_grad]
    scores = {n: torch.zeros_like(leaf, dtype=torch.float32) for n, leaf in leaves.items()}
    for loss in batch_losses(model):
        grads = torch.autograd.grad(loss, [leaves[n] for n in trained], allow_unused=True)
        for n, g in zip(trained, grads, strict=True):
            if g is not None:
                scores[n] += (leaves[n].detach().float() * g.float()).abs()
    for n, lin in units:
        if n not in trained:
            scores[n] = lin.weight.detach().float().abs()
    # a masked weight's gradient reaches ``original`` multiplied by 0, so it scores 0 (stays masked)
    return scores


def _gate_scores(model: nn.Module, units: list[tuple[str, Any]], kind: str, batch_losses: BatchLosses) -> Scores:
    """``sum_b |dL_b/dxi|`` of a gate ``xi = 1`` on each head's output (before out_proj) or neuron (before fc2)."""
    gates: dict[str, Tensor] = {}
    hooks = []
    for name, module in units:
        target = module.out_proj if kind == "heads" else module.fc2
        width = int(module.n_heads) if kind == "heads" else int(module.d_ffn)
        gate = torch.ones(width, device=next(target.parameters()).device, requires_grad=True)
        gates[name] = gate

        def gated(_m: nn.Module, args: tuple[Any, ...], _g: Tensor = gate) -> tuple[Any, ...]:
            x = args[0]  # (..., width * unit): heads (B, T, nh*hs), neurons (B, T, d_ffn)
            return (x.unflatten(-1, (_g.numel(), -1)).mul(_g[:, None]).flatten(-2), *args[1:])

        hooks.append(target.register_forward_pre_hook(gated))
    scores = {n: torch.zeros(g.numel(), device=g.device) for n, g in gates.items()}
    try:
        for loss in batch_losses(model):
            grads = torch.autograd.grad(loss, list(gates.values()), allow_unused=True)
            for n, g in zip(gates, grads, strict=True):
                if g is not None:
                    scores[n] += g.detach().float().abs()
    finally:
        for h in hooks:
            h.remove()
    return scores


IMPORTANCE.require_complete()
