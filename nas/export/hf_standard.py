"""Candidates that are a standard ``transformers`` architecture, written as one: BERT or DistilBERT.

Our post-LN encoder computes what BERT computes (:mod:`nas.models.encoder`): embedding LayerNorm, softmax
attention with ``d_model / n_heads``-wide heads, exact GELU, a LayerNorm after each residual sum, learned
absolute positions, and ``[CLS]`` through a tanh pooler into the classifier. With a relu pooler and
LayerNorm epsilon 1e-12 (DistilBERT's, fixed in its code) it is DistilBERT. Such a candidate is written
with the family's ``config.json`` and key names, so ``AutoModelForSequenceClassification`` loads it with
no custom code. :func:`why_not_standard` says why any other candidate is not one; the mapping is the one
:mod:`evaluators.hf_teacher` reads teachers with, run the other way.

Weights are written as the family stores them: fp32, quantized weights at their dequantized values and
pruning masks baked in. BERT has one head count and head width for every layer, so heads removed by
structured pruning (or a candidate with fewer heads than ``d_model / head_dim``) are written as heads whose
query, key, value and output weights are all zero: exactly the same outputs, but computed at the full
width. BERT's single segment embedding is zero. :func:`from_standard` reads such a file back into our
served shapes for :func:`nas.export.load`, refusing one whose padding is not zero.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
import transformers
from torch import Tensor

from evaluators.hf_teacher import _HEAD, _LAYER, _LAYER_PREFIX, _POOLER
from nas.config import Candidate
from nas.errors import ExportError
from nas.models import EncoderClassifier
from nas.teacher_shape import _KEYS

__all__ = ["STANDARD_FAMILIES", "why_not_standard", "standard_family", "standard_config", "to_standard",
           "from_standard"]

#: The families written, with their sequence-classification class.
STANDARD_FAMILIES: dict[str, str] = {"bert": "BertForSequenceClassification",
                                     "distilbert": "DistilBertForSequenceClassification"}
_POOLER_FAMILY = {"tanh": "bert", "relu": "distilbert"}
_DISTILBERT_EPS = 1e-12
_FIX = "re-export the model with `nas export`"


def why_not_standard(c: Candidate) -> list[str]:
    """Why ``c``'s served model is not a BERT or DistilBERT (empty when it is one)."""
    out = []
    if c.attention.kind != "softmax":
        out.append(f"its attention is {c.attention.kind}, not full softmax")
    if c.norm != "post":
        out.append("its blocks are pre-LN (BERT normalises after each residual sum)")
    if c.pooling != "cls" or c.pooler == "none":
        out.append(f"it classifies {'the mean of the tokens' if c.pooling == 'mean' else '[CLS]'} without a pooler "
                   "(BERT has a tanh pooler, DistilBERT a relu pre-classifier, both on [CLS])")
    elif c.pooler == "relu" and c.layer_norm_eps != _DISTILBERT_EPS:
        out.append(f"its relu pooler makes it a DistilBERT, whose LayerNorm epsilon is fixed at 1e-12, not "
                   f"{c.layer_norm_eps:g}")
    if getattr(c.quant, "activation_bits", 32) != 32:
        out.append("its activations are quantized")
    if c.sharing.kind != "none":
        out.append(f"its layers share {c.sharing.kind} weights")
    if c.rank.attention < 1 or c.rank.ffn < 1:
        out.append("it has low-rank factorised weights")
    if c.layers is not None:
        out.append("its layers have different shapes")
    if c.d_model % c.resolved_head_dim or c.attention_width > c.d_model:
        out.append(f"its {c.n_heads} heads of width {c.resolved_head_dim} do not fit d_model={c.d_model} "
                   "as BERT's d_model / n_heads-wide heads")
    return out


def standard_family(c: Candidate) -> str | None:
    """``"bert"`` or ``"distilbert"`` when ``c``'s served model is one, else None."""
    return None if why_not_standard(c) else _POOLER_FAMILY[c.pooler]


def standard_config(family: str, model: EncoderClassifier) -> dict[str, Any]:
    """The family's ``config.json`` keys for ``model`` (its served shapes; labels and ids are added by the caller)."""
    cand = model.candidate
    blocks = model.iter_blocks()
    sizes = {"n_layers": len(blocks), "d_model": cand.d_model, "n_heads": cand.d_model // cand.resolved_head_dim,
             "d_ffn": max(b.ffn.d_ffn for b in blocks), "act": "gelu", "dropout": cand.dropout}
    config: dict[str, Any] = {"model_type": family, "architectures": [STANDARD_FAMILIES[family]],
                              **{_KEYS[family][k]: v for k, v in sizes.items()},
                              "vocab_size": model.vocab_size, "max_position_embeddings": cand.max_len,
                              "initializer_range": 0.02}
    if family == "bert":
        config.update(attention_probs_dropout_prob=cand.dropout, type_vocab_size=1,
                      layer_norm_eps=cand.layer_norm_eps, position_embedding_type="absolute")
    else:
        config.update(attention_dropout=cand.dropout, seq_classif_dropout=cand.dropout, sinusoidal_pos_embds=False)
    return config


def _hf_shapes(config: dict[str, Any]) -> dict[str, torch.Size]:
    """The state-dict shapes of the family's classifier for ``config`` (built on the meta device: no memory)."""
    family = config["model_type"]
    hf_config = transformers.AutoConfig.for_model(family, **{k: v for k, v in config.items() if k != "model_type"})
    with torch.device("meta"):
        model = getattr(transformers, STANDARD_FAMILIES[family])(hf_config)
    return {k: v.shape for k, v in model.state_dict().items()}


def _tensor_pairs(family: str, n_layers: int, ours: set[str]) -> list[tuple[str, str]]:
    """(our key, the family's key) of every tensor of ``ours`` (a served model's keys)."""
    base = getattr(transformers, STANDARD_FAMILIES[family]).base_model_prefix + "."
    modules = [("tok_emb", f"{base}embeddings.word_embeddings"), ("pos_emb", f"{base}embeddings.position_embeddings"),
               ("emb_ln", f"{base}embeddings.LayerNorm")]
    for i in range(n_layers):
        modules += [(f"blocks.{i}.{a}", f"{base}{_LAYER_PREFIX[family]}.{i}.{b}") for a, b in _LAYER[family]]
    on_base, on_head = _POOLER[family]
    modules += [("pooler", base + on_base if on_base else str(on_head)), ("head", _HEAD[family])]
    return [(f"{a}.{s}", f"{b}.{s}") for a, b in modules for s in ("weight", "bias") if f"{a}.{s}" in ours]


def _token_types(family: str) -> str | None:
    if family != "bert":
        return None
    return f"{transformers.BertForSequenceClassification.base_model_prefix}.embeddings.token_type_embeddings.weight"


def to_standard(state: dict[str, Tensor], config: dict[str, Any]) -> dict[str, Tensor]:
    """Our served state in the family's key names and shapes (zero heads where heads were removed).

    Raises:
        ExportError: A tensor is larger than the family's, or the family has a tensor we do not fill.
    """
    family = config["model_type"]
    shapes = _hf_shapes(config)
    n_layers = config[_KEYS[family]["n_layers"]]
    out = {}
    for ours, theirs in _tensor_pairs(family, n_layers, set(state)):
        t = state[ours].float()
        grow = [shapes[theirs][d] - t.shape[d] for d in range(t.dim())]
        if len(shapes[theirs]) != t.dim() or min(grow) < 0:
            raise ExportError(f"{ours} {tuple(t.shape)} does not fit {theirs} {tuple(shapes[theirs])}", field=ours,
                              fix="report this candidate as a bug; export it with trust_remote_code instead")
        out[theirs] = F.pad(t, [p for g in reversed(grow) for p in (0, g)]).contiguous()
    segments = _token_types(family)
    if segments is not None:
        out[segments] = torch.zeros(shapes[segments])
    unfilled = sorted(set(shapes) - set(out))
    if unfilled:
        raise ExportError(f"the {family} layout has tensors the model does not fill: {unfilled[:3]}",
                          field="model_type", value=family, fix="report this candidate as a bug")
    return out


def from_standard(std: dict[str, Tensor], family: str, model: EncoderClassifier) -> dict[str, Tensor]:
    """The family's tensors back in our names and ``model``'s served shapes (the inverse of :func:`to_standard`).

    Raises:
        ExportError: A tensor is missing, smaller than ours, or nonzero where :func:`to_standard` pads.
    """
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    out = {}
    for ours, theirs in _tensor_pairs(family, len(model.iter_blocks()), set(shapes)):
        if theirs not in std:
            raise ExportError(f"model.safetensors has no {theirs}", field="model.safetensors", fix=_FIX)
        t = std[theirs].float()
        if t.dim() != len(shapes[ours]) or any(a < b for a, b in zip(t.shape, shapes[ours], strict=True)):
            raise ExportError(f"{theirs} {tuple(t.shape)} is smaller than the served {tuple(shapes[ours])}",
                              field="model.safetensors", fix=_FIX)
        kept = t[tuple(slice(0, n) for n in shapes[ours])]
        if torch.count_nonzero(kept) != torch.count_nonzero(t):
            raise ExportError(f"{theirs} has nonzero weights in the heads or neurons the candidate removed",
                              field="model.safetensors", fix=_FIX)
        out[ours] = kept.contiguous()
    segments = _token_types(family)
    if segments is not None and segments in std:  # every token is segment 0: its row adds to each position
        out["pos_emb.weight"] = out["pos_emb.weight"] + std[segments][0].float()
    return out
