"""Inheritance: a student (``init: teacher``) starts from its teacher's weights, sliced to its shape.

Both are :class:`~nas.models.EncoderClassifier` (a Hugging Face teacher is converted first,
:mod:`evaluators.hf_teacher`), so this is one family-independent slicing of one model into another
(cf. DistilBERT's layer picking, DynaBERT's and AutoTinyBERT's width slicing):

- **Layers**: student block ``i`` copies teacher block ``layer_map(L_s, L_t)[i] - 1``
  (:func:`evaluators.distill.layer_map`, the uniform mapping that ends at the teacher's last block; the
  same mapping the hidden-state and attention losses use).
- **Heads and FFN neurons**: a student with fewer heads keeps the teacher's most important heads of that
  block, and one with a narrower FFN the most important neurons, by
  :func:`nas.compress.prune.head_importance` and :func:`~nas.compress.prune.neuron_importance` (the squared
  L2 norm of a head's q/k/v rows and out_proj columns, of a neuron's fc1 row and fc2 column; the score
  structured pruning uses), in their original order. Heads must have the teacher's width.
- **Width**: with ``d_s < d_t`` every residual-side weight goes through one fixed map ``P`` (``d_t x d_s``),
  the top ``d_s`` right singular vectors of the teacher's token-embedding matrix (computed once per teacher
  and width, :func:`embedding_projection`). Embeddings become ``E P``; inputs of q/k/v/fc1/pooler/head
  ``W P``; outputs of out_proj/fc2/pooler ``P^T W`` (and their biases ``P^T b``). A LayerNorm's bias is
  ``P^T b``; its gain, which scales each coordinate, becomes the diagonal of ``P^T diag(g) P``
  (``sum_i P_ij^2 g_i``, which keeps a constant gain constant). This is an approximation: the student's
  LayerNorm normalises over its own ``d_s`` coordinates. With ``d_s == d_t`` nothing is projected, so a
  student of the teacher's own shape is an exact copy.
- **Low-rank weights** (``candidate.rank`` < 1): a factorised student Linear gets the truncated SVD of the
  teacher's (sliced, projected) weight, the best fit of its rank.
- **Shared weights** (``candidate.sharing``): a module shared by a group of layers copies the teacher layer
  mapped to the group's first layer.
- **Pooler and head** are copied (projected when narrower); the head only when the label counts agree.

The student must share the teacher's layout (``norm``, ``layer_norm_eps``, ``pooler``, ``pooling``,
head width); vocabulary and positions copy the rows both have. Linformer's E/F have no teacher
counterpart and stay fresh.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from evaluators.distill import layer_map
from nas.compress.prune import head_channels, head_importance, neuron_importance, top_indices
from nas.errors import ConfigError
from nas.models import Block, EncoderClassifier, LowRankLinear

__all__ = ["InheritReport", "inherit_", "embedding_projection", "LAYOUT_FIELDS"]

log = logging.getLogger(__name__)

#: Candidate fields a student must share with its teacher (the head width is compared resolved).
LAYOUT_FIELDS = ("norm", "layer_norm_eps", "pooler", "pooling")

#: teacher -> {(width, weight version, storage): P}; an entry goes when its teacher is collected.
_PROJECTIONS: weakref.WeakKeyDictionary[nn.Module, dict[tuple[int, int, int], Tensor]] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class InheritReport:
    """What :func:`inherit_` copied.

    Attributes:
        teacher_layers: The teacher block (0-based) each student block copied.
        heads: Per student block, the teacher heads it kept (0-based, increasing).
        neurons: Per student block, the number of teacher FFN neurons it kept.
        projected: Whether residual-side weights went through the embedding projection (``d_s < d_t``).
        vocab_rows: Token-embedding rows copied.
        positions: Position-embedding rows copied.
        head_copied: Whether the classifier head was copied (the label counts agree).
        fresh: Student parameters left as initialised.
    """

    teacher_layers: tuple[int, ...]
    heads: tuple[tuple[int, ...], ...]
    neurons: tuple[int, ...]
    projected: bool
    vocab_rows: int
    positions: int
    head_copied: bool
    fresh: tuple[str, ...]


def _mismatch(what: str, student: object, teacher: object, fix: str) -> ConfigError:
    return ConfigError(f"the student's {what} {student!r} differs from the teacher's {teacher!r}, so it cannot "
                       "inherit", field=what, value=student, fix=fix)


def _check(student: EncoderClassifier, teacher: EncoderClassifier) -> None:
    s, t = student.candidate, teacher.candidate
    if s.init != "teacher":
        raise ConfigError("inherit_ needs a student with init: teacher", field="init", value=s.init,
                          fix="set init: teacher, or do not inherit")
    fix = "give the student the teacher's layout (TeacherShape.layout())"
    for name in LAYOUT_FIELDS:
        if getattr(s, name) != getattr(t, name):
            raise _mismatch(name, getattr(s, name), getattr(t, name), fix)
    if s.resolved_head_dim != t.resolved_head_dim:
        raise _mismatch("head_dim", s.resolved_head_dim, t.resolved_head_dim, fix + "; heads keep their width")
    for name, mine, theirs in (("d_model", s.d_model, t.d_model), ("n_heads", s.n_heads, t.n_heads),
                               ("d_ffn", s.d_ffn, t.d_ffn)):
        if mine > theirs:
            raise ConfigError(f"the student's {name} {mine} is larger than the teacher's {theirs}; inheritance "
                              "only slices", field=name, value=mine, fix=f"use {name} <= {theirs}, or init: scratch")
    if t.rank.attention < 1 or t.rank.ffn < 1:
        raise ConfigError("the teacher has low-rank factorised weights; inheritance slices dense ones", field="rank",
                          value=t.rank.model_dump(), fix="use a teacher with rank 1.0 (dense), or init: scratch")
    for label, model in (("student", student), ("teacher", teacher)):
        if any(parametrize.is_parametrized(m) for m in model.modules()):
            raise ConfigError(f"the {label} is already compressed (masked or quantized)", field="init",
                              fix="inherit before apply_candidate_compression")


def embedding_projection(teacher: EncoderClassifier, width: int) -> Tensor:
    """``P`` (``d_t x width``): the top ``width`` right singular vectors of the teacher's token embeddings.

    Orthonormal columns (``P^T P = I``); ``E P`` keeps the most of the embeddings' energy any ``width``
    columns can. Computed once per teacher and width (memoized while the teacher lives and its embedding
    weights are unchanged).
    """
    weight = teacher.tok_emb.weight
    key = (width, weight._version, weight.data_ptr())
    cache = _PROJECTIONS.setdefault(teacher, {})
    if key not in cache:
        _, _, vh = torch.linalg.svd(weight.detach().float(), full_matrices=False)  # vh: (d_t, d_t)
        cache[key] = vh[:width].T.contiguous()  # (d_t, width)
        log.debug("embedding projection %d -> %d computed", weight.shape[1], width)
    return cache[key]


def _rows_in(w: Tensor, p: Tensor | None) -> Tensor:
    """A weight that reads the residual stream (``(out, d_t)``) -> ``W P``."""
    return w if p is None else w.float() @ p


def _rows_out(w: Tensor, p: Tensor | None) -> Tensor:
    """A weight or bias that writes the residual stream (``(d_t, ...)``) -> ``P^T W``."""
    return w if p is None else p.T @ w.float()


def _put(dst: Tensor | None, src: Tensor | None) -> None:
    if dst is not None and src is not None:
        dst.copy_(src.to(dst.device, dst.dtype))


def _linear(dst: nn.Module, weight: Tensor, bias: Tensor | None) -> None:
    if isinstance(dst, LowRankLinear):  # candidate.rank < 1: the best rank-r fit of the teacher's weight
        err = dst.load_dense_(weight, bias)
        log.debug("low-rank %d -> %d at rank %d: relative error %.3f", dst.in_features, dst.out_features, dst.rank, err)
        return
    _put(cast(Tensor, dst.weight), weight)
    _put(cast("Tensor | None", dst.bias), bias)


def _layer_norm(dst: nn.Module, src: nn.Module, p: Tensor | None) -> None:
    if not isinstance(dst, nn.LayerNorm) or not isinstance(src, nn.LayerNorm):
        return  # nn.Identity in the layout where this LayerNorm does not exist
    gain = src.weight.detach() if p is None else (p * p).T @ src.weight.detach().float()
    _linear(dst, gain, _rows_out(src.bias.detach(), p) if src.bias is not None else None)


def _copy_block(dst: Block, src: Block, p: Tensor | None, done: set[int]) -> tuple[tuple[int, ...], int]:
    """Copy teacher block ``src`` into student block ``dst``: kept heads and neurons, projected when narrower.

    A module in ``done`` (already copied for an earlier layer of its sharing group) is left as it is, so a
    shared module holds the teacher layer mapped to its group's first layer; copied modules are added.
    """
    sa, ta = dst.attn, src.attn
    heads = top_indices(head_importance(ta), int(sa.n_heads))
    ch = head_channels(heads, int(ta.head_dim))
    if id(sa) not in done:
        for name in ("q_proj", "k_proj", "v_proj"):
            lin = getattr(ta, name)
            _linear(getattr(sa, name), _rows_in(lin.weight.detach(), p)[ch], lin.bias.detach()[ch])
        o = ta.out_proj
        _linear(sa.out_proj, _rows_out(o.weight.detach()[:, ch], p), _rows_out(o.bias.detach(), p))
    neurons = top_indices(neuron_importance(src.ffn), dst.ffn.d_ffn)
    if id(dst.ffn) not in done:
        fc1, fc2 = src.ffn.fc1, src.ffn.fc2
        _linear(dst.ffn.fc1, _rows_in(fc1.weight.detach(), p)[neurons], fc1.bias.detach()[neurons])
        _linear(dst.ffn.fc2, _rows_out(fc2.weight.detach()[:, neurons], p), _rows_out(fc2.bias.detach(), p))
    if id(dst) not in done:
        _layer_norm(dst.ln_1, src.ln_1, p)
        _layer_norm(dst.ln_2, src.ln_2, p)
    done.update((id(sa), id(dst.ffn), id(dst)))
    return tuple(int(h) for h in heads), len(neurons)


def _copy_ends(student: EncoderClassifier, teacher: EncoderClassifier, p: Tensor | None) -> tuple[int, int, bool]:
    """Embeddings, their LayerNorm, the final LayerNorm, the pooler and (labels agreeing) the head."""
    vocab = min(student.tok_emb.num_embeddings, teacher.tok_emb.num_embeddings)
    positions = min(student.pos_emb.num_embeddings, teacher.pos_emb.num_embeddings)
    _put(student.tok_emb.weight[:vocab], _rows_in(teacher.tok_emb.weight.detach()[:vocab], p))
    _put(student.pos_emb.weight[:positions], _rows_in(teacher.pos_emb.weight.detach()[:positions], p))
    _layer_norm(student.emb_ln, teacher.emb_ln, p)
    _layer_norm(student.ln_f, teacher.ln_f, p)
    if student.pooler is not None and teacher.pooler is not None:
        w = teacher.pooler.weight.detach()
        _linear(student.pooler, _rows_out(_rows_in(w, p), p), _rows_out(teacher.pooler.bias.detach(), p))
    head_copied = student.num_labels == teacher.num_labels
    if head_copied:
        _linear(student.head, _rows_in(teacher.head.weight.detach(), p), teacher.head.bias.detach())
    return vocab, positions, head_copied


def inherit_(student: EncoderClassifier, teacher: EncoderClassifier) -> InheritReport:
    """Initialise ``student`` in place from ``teacher`` (see the module docstring for the rules).

    Args:
        student: A freshly built, uncompressed model whose candidate has ``init: teacher`` and the
            teacher's layout; no wider, and with no more heads or FFN neurons, than the teacher.
        teacher: The teacher's model (unchanged).

    Returns:
        An :class:`InheritReport`.

    Raises:
        ConfigError: ``init`` is not ``teacher``, the layouts differ, the student is larger than the teacher
            in width, heads or FFN neurons, or either model is already compressed.
    """
    _check(student, teacher)
    d_s, d_t = student.candidate.d_model, teacher.candidate.d_model
    p = embedding_projection(teacher, d_s) if d_s < d_t else None
    mapping = [j - 1 for j in layer_map(len(student.blocks), len(teacher.blocks))]
    heads: list[tuple[int, ...]] = []
    neurons: list[int] = []
    done: set[int] = set()
    with torch.no_grad():
        for dst, j in zip(student.iter_blocks(), mapping, strict=True):
            kept, width = _copy_block(dst, teacher.iter_blocks()[j], p, done)
            heads.append(kept)
            neurons.append(width)
        vocab, positions, head_copied = _copy_ends(student, teacher, p)
    fresh = [name for name, _ in student.named_parameters() if name.endswith((".E", ".F"))]
    fresh += [] if head_copied else ["head.weight", "head.bias"]
    if student.pooler is not None and teacher.pooler is None:
        fresh += ["pooler.weight", "pooler.bias"]
    report = InheritReport(teacher_layers=tuple(mapping), heads=tuple(heads), neurons=tuple(neurons),
                           projected=p is not None, vocab_rows=vocab, positions=positions,
                           head_copied=head_copied, fresh=tuple(fresh))
    log.info("inherited %d blocks from teacher blocks %s (width %d -> %d%s)", len(mapping), report.teacher_layers,
             d_t, d_s, ", projected" if p is not None else "")
    return report
