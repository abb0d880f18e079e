"""Sparse attention that really saves compute: each query scores O(w) keys, never all T.

Every kernel here gathers, for each query, a fixed-size set of keys into a dense block and runs one
softmax over it, so time and memory are O(T * w) and the FLOP counter sees exactly the scores it
computes (no T x T matrix is ever formed, except for the map ``need_weights`` asks for):

* ``local`` (sliding window, cf. Longformer): the sequence is cut into blocks of ``window`` tokens; a
  query scores the keys of its own block and both neighbours (``3 * window`` keys) and the band
  ``|i - j| <= window`` masks the rest. Exact: the band is what it was as a mask over T x T.
  Cost ``3 * window * T`` scores, below softmax's ``T * T`` when ``window < T / 3``. The key windows are
  overlapping strided views (``unfold``, no copies), and without padding the band is one additive mask
  broadcast over batch and heads, so one fused attention call does the work.
* ``strided`` (Sparse Transformer, Child et al. 2019, non-causal): blocks of ``stride`` tokens; a query
  scores its own block (the row) and the tokens at its offset in every other block (the column).
  Cost ``T * (stride + T / stride)``, about ``2 T sqrt(T)`` at ``stride = sqrt(T)``.
* ``fixed`` (Sparse Transformer's "fixed" pattern, non-causal): its own block of ``stride`` tokens, plus
  the last ``summary`` tokens of every block. Cost ``T * (stride + summary * T / stride)``.
* ``hash`` (LSH bucketing with sorted chunks, as in Reformer, Kitaev et al. 2020; with separate query and
  key hashes balanced by sorting, as in SMYRF, Daras et al. 2020): queries and keys are hashed by one
  fixed random projection (``argmax(normalize(x) R)``, R of shape (head_dim, buckets)), each sorted by
  bucket, and the i-th chunk of ``ceil(T / buckets)`` sorted queries attends the i-th chunk of sorted
  keys. Cost ``T * T / buckets``. With one bucket it is softmax.

The padding contract of :mod:`nas.models.attention` holds: padded keys get probability exactly 0, and
no row is fully blocked for a real query.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nas.config import Candidate
from nas.errors import ConfigError

from .attention import Attention, _padding_block, register_attention

__all__ = ["LocalAttention", "StridedAttention", "FixedAttention", "HashAttention"]


def _pad_seq(t: Tensor, before: int, after: Tensor | int) -> Tensor:
    """Zero-pad dim -2 (the sequence) of a (B, nh, T, hs) tensor."""
    return F.pad(t, (0, 0, before, after))  # type: ignore[arg-type]


def _pad_mask(key_padding_mask: Tensor | None, B: int, T: int, after: Tensor | int, device: torch.device,
              before: int = 0) -> Tensor:
    """(B, before + T + after) bool, True = not a real key: padding, and every position outside [0, T)."""
    real = torch.zeros(B, T, dtype=torch.uint8, device=device)
    if key_padding_mask is not None:
        real = key_padding_mask.to(torch.uint8)
    return F.pad(real, (before, after), value=1).bool()  # type: ignore[arg-type]


def _softmax_over(scores: Tensor, blocked: Tensor, dropout: nn.Module) -> Tensor:
    """Softmax of ``scores`` with ``blocked`` entries at the dtype's most negative value (probability 0)."""
    return dropout(F.softmax(scores.masked_fill(blocked, torch.finfo(scores.dtype).min), dim=-1))  # type: ignore[no-any-return]


def _need(value: int | None, field: str, kind: str, example: str) -> int:
    if value is None:
        raise ConfigError(f"{kind} attention needs attention.{field}", field=f"attention.{field}",
                          fix=f"set attention.{field}, e.g. {field}: {example}")
    return int(value)


@register_attention("local")
class LocalAttention(Attention):
    """Softmax attention restricted to the band ``|i - j| <= window``, in blocks: O(T * window).

    ``need_weights`` (attention-map distillation) takes the masked T x T path, which gives the same
    probabilities and the map; every other forward (serving, FLOP counting) takes the blocked kernel.
    """

    def __init__(self, config: Candidate) -> None:
        super().__init__(config)
        self.window = _need(config.attention.window, "window", "local", "8")

    def _attend(
        self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None, need_weights: bool
    ) -> tuple[Tensor, Tensor | None]:
        if need_weights:
            blocked = self.dense_block(q.size(-2), key_padding_mask, q.device)
            return self._masked_softmax_attend(q, k, v, blocked, True)
        B, nh, T, hs = q.shape
        b = w = self.window
        n = (T + b - 1) // b
        tail, L = n * b - T, 3 * b
        # each block of b queries sees the L = b + 2w keys around it: overlapping windows, a strided view
        kw = _pad_seq(k, w, tail + w).unfold(2, L, b).transpose(-1, -2).reshape(B * nh, n, L, hs)
        vw = _pad_seq(v, w, tail + w).unfold(2, L, b).transpose(-1, -2).reshape(B * nh, n, L, hs)
        qb = _pad_seq(q, 0, tail).reshape(B * nh, n, b, hs)
        bias = self._band_bias(B, nh, n, T, key_padding_mask, q)
        if self.use_fused:
            y = F.scaled_dot_product_attention(qb, kw, vw, attn_mask=bias, dropout_p=self.dropout_p if self.training else 0.0)
        else:  # the same arithmetic, countable by FlopCounterMode
            att = F.softmax((qb @ kw.transpose(-2, -1)) * (1.0 / math.sqrt(hs)) + bias, dim=-1)  # (B*nh, n, b, 3b)
            y = self.attn_dropout(att) @ vw
        return y.reshape(B, nh, n * b, hs)[:, :, :T], None

    def _band_bias(self, B: int, nh: int, n: int, T: int, key_padding_mask: Tensor | None, q: Tensor) -> Tensor:
        """Additive mask (1 or B*nh, n, b, 3b): 0 inside the band, the dtype's minimum outside it.

        Query ``i = s + r`` of the block starting at ``s`` sees key ``j = s - w + c``; blocked when
        ``|i - j| > w``, when ``j`` is outside [0, T) or padded, except its own position (no empty row). Without
        padding the mask is one (n, b, 3b) pattern broadcast over batch and heads, so the kernel reads it
        from cache.
        """
        b = w = self.window
        r = torch.arange(b, device=q.device)[:, None]  # (b, 1)
        c = torch.arange(3 * b, device=q.device)[None, :]  # (1, 3b)
        start = torch.arange(n, device=q.device)[:, None, None] * b  # (n, 1, 1)
        j = start - w + c  # (n, 1, 3b) key positions
        blocked = ((r - c + w).abs() > w) | (j < 0) | (j >= T)  # (n, b, 3b)
        if key_padding_mask is not None:
            keys = _pad_mask(key_padding_mask, B, T, n * b - T + w, q.device, before=w)  # (B, n*b + 2w)
            blocked = blocked[None] | keys.unfold(1, 3 * b, b)[:, :, None, :]  # (B, n, b, 3b)
            blocked = blocked[:, None].expand(B, nh, n, b, 3 * b).reshape(B * nh, n, b, 3 * b)
        else:
            blocked = blocked[None]
        blocked = blocked & (c != r + w)  # a query always sees itself
        return torch.zeros(blocked.shape, dtype=q.dtype, device=q.device).masked_fill(blocked, torch.finfo(q.dtype).min)

    def dense_block(self, T: int, key_padding_mask: Tensor | None, device: torch.device) -> Tensor:
        """(B or 1, 1, T, T) True = blocked: outside the band, or a padded key (the masked reference)."""
        idx = torch.arange(T, device=device)
        blocked = ((idx[:, None] - idx[None, :]).abs() > self.window)[None, None]
        pad = _padding_block(key_padding_mask, T)
        return blocked | pad if pad is not None else blocked


class _BlockSparse(Attention):
    """Shared by ``strided`` and ``fixed``: the row (own block of ``stride`` tokens) plus extra keys."""

    has_attention_map = False

    def __init__(self, config: Candidate) -> None:
        super().__init__(config)
        self.stride = _need(config.attention.stride, "stride", self.kind, "16")

    def _blocks(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None
                ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Blocks (B, nh, n, l, hs) of q, k, v, the (B, n, l) not-a-real-key mask and the row scores."""
        B, nh, T, hs = q.shape
        n = (T + self.stride - 1) // self.stride
        tail = n * self.stride - T
        qb, kb, vb = (_pad_seq(t, 0, tail).reshape(B, nh, n, self.stride, hs) for t in (q, k, v))
        pad = _pad_mask(key_padding_mask, B, T, tail, q.device).reshape(B, n, self.stride)
        row = (qb @ kb.transpose(-2, -1)) * (1.0 / math.sqrt(hs))  # (B, nh, n, l, l)
        return qb, kb, vb, pad, row


@register_attention("strided")
class StridedAttention(_BlockSparse):
    """Sparse Transformer's strided pattern, non-causal: own block (row) plus same offset (column)."""

    def _attend(
        self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None, need_weights: bool
    ) -> tuple[Tensor, Tensor | None]:
        B, nh, T, hs = q.shape
        qb, kb, vb, pad, row = self._blocks(q, k, v, key_padding_mask)
        n, L = qb.size(2), qb.size(3)
        qc, kc, vc = qb.transpose(2, 3), kb.transpose(2, 3), vb.transpose(2, 3)  # (B, nh, l, n, hs)
        col = ((qc @ kc.transpose(-2, -1)) * (1.0 / math.sqrt(hs))).transpose(2, 3)  # (B, nh, n, l, n): key block
        blocks = torch.arange(n, device=q.device)
        same_block = blocks[:, None] == blocks[None, :]  # (n, n): the row has that key already
        row_blocked = pad[:, :, None, :]  # (B, n, 1, l)
        col_blocked = pad.transpose(1, 2)[:, None, :, :] | same_block[None, :, None, :]  # (B, n, l, n)
        blocked = torch.cat([row_blocked.expand(-1, -1, L, -1), col_blocked], dim=-1)[:, None]
        p = _softmax_over(torch.cat([row, col], dim=-1), blocked, self.attn_dropout)
        y = p[..., :L] @ vb + (p[..., L:].transpose(2, 3) @ vc).transpose(2, 3)  # (B, nh, n, l, hs)
        return y.reshape(B, nh, n * L, hs)[:, :, :T], None


@register_attention("fixed")
class FixedAttention(_BlockSparse):
    """Sparse Transformer's fixed pattern, non-causal: own block plus each block's last ``summary`` tokens."""

    def __init__(self, config: Candidate) -> None:
        super().__init__(config)
        self.summary = config.attention.resolved_summary

    def _attend(
        self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None, need_weights: bool
    ) -> tuple[Tensor, Tensor | None]:
        B, nh, T, hs = q.shape
        qb, kb, vb, pad, row = self._blocks(q, k, v, key_padding_mask)
        n, L, c = qb.size(2), qb.size(3), self.summary
        ks = kb[:, :, :, L - c:].reshape(B, nh, 1, n * c, hs)  # the summary keys of every block
        vs = vb[:, :, :, L - c:].reshape(B, nh, 1, n * c, hs)
        summ = (qb.reshape(B, nh, 1, n * L, hs) @ ks.transpose(-2, -1)).reshape(B, nh, n, L, n * c)
        summ = summ * (1.0 / math.sqrt(hs))
        blocks = torch.arange(n, device=q.device)
        own = (blocks[:, None] == blocks[None, :])[:, :, None].expand(n, n, c).reshape(n, n * c)  # in the row
        sum_blocked = pad[:, :, L - c:].reshape(B, 1, n * c) | own[None]  # (B, n, n*c)
        blocked = torch.cat([pad[:, :, None, :].expand(-1, -1, L, -1),
                             sum_blocked[:, :, None, :].expand(-1, -1, L, -1)], dim=-1)[:, None]
        p = _softmax_over(torch.cat([row, summ], dim=-1), blocked, self.attn_dropout)
        y = p[..., :L] @ vb + (p[..., L:].reshape(B, nh, 1, n * L, n * c) @ vs).reshape(B, nh, n, L, hs)
        return y.reshape(B, nh, n * L, hs)[:, :, :T], None


def _rows(order: Tensor) -> Tensor:
    """(B, nh, Tp) per-sequence positions -> flat row indices into a (B * nh * Tp, hs) view."""
    B, nh, Tp = order.shape
    base = torch.arange(B * nh, device=order.device).reshape(B, nh, 1) * Tp
    return (order + base).reshape(-1)


@register_attention("hash")
class HashAttention(Attention):
    """LSH attention: queries and keys bucketed by a fixed random projection, sorted, and chunked.

    The projection ``R`` is a buffer drawn from a seeded generator, saved with the weights, so a
    reloaded or exported model hashes exactly as the trained one.
    """

    has_attention_map = False

    def __init__(self, config: Candidate) -> None:
        super().__init__(config)
        self.buckets = _need(config.attention.buckets, "buckets", "hash", "8")
        gen = torch.Generator().manual_seed(0x5EED + self.buckets)
        self.rotations: Tensor
        self.register_buffer("rotations", torch.randn(self.head_dim, self.buckets, generator=gen))

    def _sorted(self, x: Tensor, blocked: Tensor, Tp: Tensor | int) -> Tensor:
        """The order that sorts positions by bucket (blocked positions last), ties by position."""
        B, nh, T, _ = x.shape
        bucket = (x @ self.rotations).argmax(dim=-1)  # (B, nh, T); = argmax(normalize(x) R): |x| > 0 scales a row
        bucket = F.pad(bucket, (0, Tp - T), value=self.buckets)  # type: ignore[arg-type, operator]
        bucket = bucket.masked_fill(blocked[:, None, :], self.buckets)
        pos = torch.arange(bucket.size(-1), device=x.device)
        return torch.argsort(bucket * bucket.size(-1) + pos, dim=-1)  # (B, nh, Tp)

    def _attend(
        self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None, need_weights: bool
    ) -> tuple[Tensor, Tensor | None]:
        B, nh, T, hs = q.shape
        c = (T + self.buckets - 1) // self.buckets
        Tp = c * self.buckets
        pad = _pad_mask(key_padding_mask, B, T, Tp - T, q.device)  # (B, Tp)
        order_q, order_k = self._sorted(q, pad, Tp), self._sorted(k, pad, Tp)

        def take(t: Tensor, order: Tensor) -> Tensor:  # whole rows by flat index: far faster than gather
            return _pad_seq(t, 0, Tp - T).reshape(-1, hs).index_select(0, _rows(order)).reshape(B, nh, self.buckets, c, hs)

        G = nh * self.buckets
        qs, ks, vs = take(q, order_q), take(k, order_k), take(v, order_k)
        key_blocked = None  # no padding and T a multiple of the buckets: nothing to block, the fastest kernel
        if key_padding_mask is not None or Tp > T:
            key_blocked = pad[:, None, :].expand(-1, nh, -1).gather(2, order_k).reshape(B, G, 1, c)
        y_sorted, _ = self._masked_softmax_attend(  # chunk i of sorted queries on chunk i of sorted keys
            qs.reshape(B, G, c, hs), ks.reshape(B, G, c, hs), vs.reshape(B, G, c, hs), key_blocked, False)
        out = torch.empty_like(y_sorted.reshape(-1, hs))
        out[_rows(order_q)] = y_sorted.reshape(-1, hs)  # unsort: row order_q[i] of each (batch, head) gets row i
        return out.reshape(B, nh, Tp, hs)[:, :, :T], None
