"""Attention variants behind one registry and one forward signature.

The sparse ones, which score O(w) keys per query, are in :mod:`nas.models.sparse_attention`.

Every attention module is built from a :class:`~nas.config.Candidate` alone and implements::

    forward(x, key_padding_mask=None, need_weights=False) -> (y, weights)

    x                 (B, T, C)   block input, C = candidate.d_model
    key_padding_mask  (B, T) bool True = padding (ignored as a key), or None = every token is real
    y                 (B, T, C)   (the heads' inner width nh * hs may differ from C: ``candidate.head_dim``)
    weights           (B, nh, T, T) attention probabilities, or None when ``need_weights`` is False or
                      the variant never forms a T x T map (``linear``, ``lowrank``)

Each module owns separate ``q_proj``, ``k_proj``, ``v_proj`` and ``out_proj`` layers (``nn.Linear``, or
:class:`~nas.models.lowrank.LowRankLinear` when ``candidate.rank.attention`` < 1) and
keeps ``n_heads`` and ``head_dim`` as plain mutable attributes: structured head pruning
(:func:`nas.compress.prune_`) slices the projections and shrinks ``n_heads``, and the forward reads the
attributes, never the candidate.

Padding contract: the output at a real position never depends on the content at padded positions
(masked scores get probability exactly 0; padded keys/values are zeroed for ``linear``/``lowrank``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypeVar, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nas.config import Candidate
from nas.errors import ConfigError
from nas.vocab import ATTENTION_KIND, Registry

from .lowrank import Projection, make_linear

__all__ = [
    "ATTENTION_REGISTRY",
    "register_attention",
    "Attention",
    "SoftmaxAttention",
    "LinearAttention",
    "LowRankAttention",
]

#: kind name (``AttentionConfig.kind``, one of :data:`nas.vocab.ATTENTION_KIND`) -> attention class.
ATTENTION_REGISTRY: Registry[type[Attention]] = Registry(ATTENTION_KIND, "attention class")

A = TypeVar("A", bound="type[Attention]")


def register_attention(kind: str) -> Callable[[A], A]:
    """Class decorator that registers an attention module under ``kind``.

    Args:
        kind: The ``attention.kind`` value that selects this class (a name of
            :data:`nas.vocab.ATTENTION_KIND`).

    Returns:
        The decorator; it returns the class unchanged.

    Raises:
        ConfigError: If ``kind`` is not in the vocabulary or is already registered.
    """
    return cast("Callable[[A], A]", ATTENTION_REGISTRY.register_class(kind, "kind"))


class Attention(nn.Module):
    """Base class: multi-head projections plus the shared forward signature.

    Subclasses implement :meth:`_attend` on per-head tensors; the base class does the projections,
    head split/merge and output projection, so every variant prunes the same way.

    Attributes:
        n_heads: Current number of heads (shrinks under head pruning).
        head_dim: Size of each head (``hs``).
        d_model: Model width ``C`` (input and output size; never changes).
        kind: Registry name of the class.
    """

    kind: str = "base"
    #: Whether this variant can return (B, nh, T, T) probability maps.
    has_attention_map: bool = True

    def __init__(self, config: Candidate) -> None:
        super().__init__()
        self.d_model = config.d_model
        self.n_heads = config.n_heads
        self.head_dim = config.resolved_head_dim
        inner = config.attention_width  # n_heads * head_dim; equals d_model unless candidate.head_dim is set
        rank_in, rank_out = (config.rank.of("attention", self.d_model, inner),
                             config.rank.of("attention", inner, self.d_model))
        # nn.Linear, or LowRankLinear when candidate.rank.attention < 1
        self.q_proj: Projection = make_linear(self.d_model, inner, rank_in)
        self.k_proj: Projection = make_linear(self.d_model, inner, rank_in)
        self.v_proj: Projection = make_linear(self.d_model, inner, rank_in)
        self.out_proj: Projection = make_linear(inner, self.d_model, rank_out)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.dropout_p = config.dropout
        # Fused F.scaled_dot_product_attention is faster, but FlopCounterMode does not count it on CPU;
        # nas.models.count_flops switches this off while counting.
        self.use_fused = True

    def _split(self, t: Tensor) -> Tensor:
        B, T, _ = t.shape
        return t.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)

    def forward(
        self, x: Tensor, key_padding_mask: Tensor | None = None, need_weights: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """Attend over ``x``.

        Args:
            x: Input of shape (B, T, C).
            key_padding_mask: (B, T) bool, True marks padding; None means no padding.
            need_weights: Return the (B, nh, T, T) probability map when the variant has one.

        Returns:
            ``(y, weights)``: y is (B, T, C); weights is (B, nh, T, T) or None.
        """
        B, T, _ = x.shape
        q = self._split(self.q_proj(x))  # (B, nh, T, hs)
        k = self._split(self.k_proj(x))  # (B, nh, T, hs)
        v = self._split(self.v_proj(x))  # (B, nh, T, hs)
        y, w = self._attend(q, k, v, key_padding_mask, need_weights)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, self.n_heads * self.head_dim)  # (B, T, nh*hs)
        return self.out_proj(y), w

    def _attend(
        self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None, need_weights: bool
    ) -> tuple[Tensor, Tensor | None]:
        raise NotImplementedError

    # --- shared softmax core (softmax and local) -------------------------------------------------
    def _masked_softmax_attend(
        self, q: Tensor, k: Tensor, v: Tensor, blocked: Tensor | None, need_weights: bool
    ) -> tuple[Tensor, Tensor | None]:
        """Scaled dot-product attention (Vaswani et al., 2017) with a boolean ``blocked`` mask.

        ``blocked`` broadcasts to (B, nh, T, T), True = may not attend. Blocked scores are set to the
        dtype's most negative finite value, not -inf, and callers never block a whole row (see
        :func:`_padding_block`), so no row is NaN; a real row gives exactly 0 probability to blocked keys.
        """
        neg = torch.finfo(q.dtype).min
        if self.use_fused and not need_weights:
            bias = None
            if blocked is not None:
                bias = torch.zeros(blocked.shape, dtype=q.dtype, device=q.device).masked_fill(blocked, neg)
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=bias, dropout_p=self.dropout_p if self.training else 0.0
            )
            return y, None
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.size(-1)))  # (B, nh, T, T)
        if blocked is not None:
            att = att.masked_fill(blocked, neg)
        att = F.softmax(att, dim=-1)
        y = self.attn_dropout(att) @ v  # (B, nh, T, hs)
        return y, (att if need_weights else None)


def _padding_block(key_padding_mask: Tensor | None, T: int) -> Tensor | None:
    """(B, 1, T, T) True = blocked: padded keys, except that every query may always see itself.

    The diagonal exception only ever lets a *padded* query see its own (padded) key, so real outputs are
    unchanged; but no row is ever fully blocked, so fp16 scores that overflow to -inf cannot produce a
    NaN row that would then leak into real positions through ``0 * NaN`` in the next layer.
    """
    if key_padding_mask is None:
        return None
    eye = torch.eye(T, dtype=torch.bool, device=key_padding_mask.device)  # (T, T)
    return key_padding_mask[:, None, None, :].bool() & ~eye  # (B, 1, T, T)


@register_attention("softmax")
class SoftmaxAttention(Attention):
    """Full softmax attention, O(T^2) in time and memory (Vaswani et al., 2017)."""

    def _attend(
        self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None, need_weights: bool
    ) -> tuple[Tensor, Tensor | None]:
        return self._masked_softmax_attend(q, k, v, _padding_block(key_padding_mask, q.size(-2)), need_weights)


@register_attention("linear")
class LinearAttention(Attention):
    """Kernelised attention, "Transformers are RNNs" (Katharopoulos et al., 2020), non-causal.

    ``y_i = phi(q_i)^T (sum_j phi(k_j) v_j^T) / (phi(q_i)^T sum_j phi(k_j))`` is evaluated right to left
    as ``phi(Q) (phi(K)^T V)``, so time and memory are O(T hs^2) instead of O(T^2 hs). ``phi`` is
    ``elu(x) + 1`` (the paper's choice) or ``relu``. Padded keys get phi = 0, so they add nothing to
    either sum.
    """

    has_attention_map = False

    def __init__(self, config: Candidate, eps: float = 1e-6) -> None:
        super().__init__(config)
        self.feature_map = config.attention.resolved_feature_map
        if self.feature_map not in ("elu", "relu"):
            raise ConfigError(
                "unknown linear-attention feature map",
                field="attention.feature_map",
                value=self.feature_map,
                fix="use 'elu' or 'relu'",
            )
        self.eps = eps

    def _phi(self, t: Tensor) -> Tensor:
        return F.elu(t) + 1.0 if self.feature_map == "elu" else F.relu(t)

    def _attend(
        self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None, need_weights: bool
    ) -> tuple[Tensor, Tensor | None]:
        phi_q = self._phi(q)  # (B, nh, T, hs)
        phi_k = self._phi(k)  # (B, nh, T, hs)
        if key_padding_mask is not None:
            keep = (~key_padding_mask.bool())[:, None, :, None].to(q.dtype)  # (B, 1, T, 1)
            phi_k = phi_k * keep
            v = v * keep  # padded values may be huge/garbage; 0 * finite is 0, so zero them too
        kv = phi_k.transpose(-2, -1) @ v  # (B, nh, hs, hs)
        k_sum = phi_k.sum(dim=-2, keepdim=True)  # (B, nh, 1, hs)
        denom = (phi_q * k_sum).sum(dim=-1, keepdim=True) + self.eps  # (B, nh, T, 1)
        y = (phi_q @ kv) / denom  # (B, nh, T, hs)
        return self.attn_dropout(y), None


@register_attention("lowrank")
class LowRankAttention(Attention):
    """Linformer attention (Wang et al., 2020): keys and values are projected from length T to k.

    ``E`` and ``F`` are learned (k, max_len) matrices; an input of length T < max_len uses their first T
    columns. Padded positions are zeroed before projecting, so they contribute nothing. The softmax runs
    over k projected keys: O(T k) instead of O(T^2). ``projected_kv`` is an identity hook point that sees
    the projected keys, then the projected values, each (B, nh, k, hs).
    """

    has_attention_map = False

    def __init__(self, config: Candidate) -> None:
        super().__init__(config)
        if config.attention.k is None:
            raise ConfigError(
                "lowrank attention needs a projected length",
                field="attention.k",
                fix="set attention.k, e.g. k: 16",
            )
        self.k = int(config.attention.k)
        self.max_len = config.max_len
        self.E = nn.Parameter(torch.empty(self.k, self.max_len))
        self.F = nn.Parameter(torch.empty(self.k, self.max_len))
        nn.init.xavier_normal_(self.E)
        nn.init.xavier_normal_(self.F)
        self.projected_kv = nn.Identity()

    @property
    def projected_length(self) -> int:
        """Length k that keys and values are projected to."""
        return self.k

    def _attend(
        self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None, need_weights: bool
    ) -> tuple[Tensor, Tensor | None]:
        T = q.size(-2)
        if key_padding_mask is not None:
            keep = (~key_padding_mask.bool())[:, None, :, None].to(q.dtype)  # (B, 1, T, 1)
            k = k * keep
            v = v * keep
        E = self.E[:, :T]  # (k, T)
        F_ = self.F[:, :T]  # (k, T)
        k_low = self.projected_kv(E @ k)  # (B, nh, k, hs)
        v_low = self.projected_kv(F_ @ v)  # (B, nh, k, hs)
        y, _ = self._masked_softmax_attend(q, k_low, v_low, None, False)  # (B, nh, T, hs)
        return y, None

