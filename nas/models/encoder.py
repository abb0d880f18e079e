"""Transformer encoder classifier built only from a :class:`~nas.config.Candidate`.

Two layouts, chosen by ``candidate.norm``. ``pre`` (the default; GPT-2 / Xiong et al., 2020 "On Layer
Normalization in the Transformer Architecture", which trains without a warmup-sensitive post-LN)::

    tok_emb + pos_emb -> dropout -> [x + attn(ln_1(x)); x + ffn(ln_2(x))] * n_layers -> ln_f -> pool -> head

``post`` (BERT, RoBERTa, DistilBERT: what a converted Hugging Face teacher uses)::

    emb_ln(tok_emb + pos_emb) -> dropout -> [ln_1(x + attn(x)); ln_2(x + ffn(x))] * n_layers -> pool -> head

``emb_ln`` is ``nn.Identity`` in the pre layout and ``ln_f`` is ``nn.Identity`` in the post layout. With
``pooling: cls`` an optional ``pooler`` (``Linear(d_model, d_model)`` then tanh or relu, as BERT's pooler
and DistilBERT's pre-classifier) sits between the pooled vector and the head. Every LayerNorm uses
``candidate.layer_norm_eps``.

Layer groups used by :mod:`nas.compress` (see :meth:`EncoderClassifier.layer_groups`):
``embedding`` (token and position tables), ``attention`` (q/k/v/out projections and Linformer E/F),
``ffn`` (``fc1``/``fc2``). The classifier ``head``, the ``pooler`` and the LayerNorms are never compressed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from nas.config import Candidate
from nas.errors import ConfigError

from .attention import ATTENTION_REGISTRY, Attention
from .lowrank import LowRankLinear, Projection, make_linear

__all__ = ["ModelOutput", "FeedForward", "Block", "EncoderClassifier", "build", "LogitsOnly"]

log = logging.getLogger(__name__)

#: Layer-group name -> list of (module, parameter name) pairs.
LayerGroups = dict[str, list[tuple[nn.Module, str]]]


@dataclass(frozen=True)
class ModelOutput:
    """What :meth:`EncoderClassifier.forward` returns.

    Attributes:
        logits: (B, num_labels) unnormalised class scores.
        hidden_states: ``n_layers + 1`` tensors of shape (B, T, d_model): the embedding output (after
            ``emb_ln``), then the output of each block (before ``ln_f``); None unless requested. This is
            the layout of Hugging Face's ``hidden_states``.
        attentions: One entry per layer: (B, nh, T, T) probabilities for ``softmax``/``local``, None for
            ``linear``/``lowrank`` (no T x T map exists); the whole field is None unless requested.
    """

    logits: Tensor
    hidden_states: tuple[Tensor, ...] | None = None
    attentions: tuple[Tensor | None, ...] | None = None


class FeedForward(nn.Module):
    """Position-wise MLP ``fc2(dropout(gelu(fc1(x))))`` with hidden width ``d_ffn``."""

    def __init__(self, config: Candidate) -> None:
        super().__init__()
        d, f = config.d_model, config.d_ffn
        self.fc1: Projection = make_linear(d, f, config.rank.of("ffn", d, f))  # LowRankLinear when rank.ffn < 1
        self.fc2: Projection = make_linear(f, d, config.rank.of("ffn", f, d))
        self.dropout = nn.Dropout(config.dropout)

    @property
    def d_ffn(self) -> int:
        """Current hidden width (shrinks under FFN-neuron pruning)."""
        return int(self.fc1.out_features)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the MLP to ``x`` of shape (B, T, C)."""
        y: Tensor = self.fc2(self.dropout(F.gelu(self.fc1(x))))  # (B, T, C)
        return y


class Block(nn.Module):
    """One encoder block, pre-LN or post-LN (``candidate.norm``)."""

    def __init__(self, config: Candidate) -> None:
        super().__init__()
        attention_class = ATTENTION_REGISTRY.lookup(config.attention.kind)
        self.post_norm = config.norm == "post"
        self.ln_1 = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.attn: Attention = attention_class(config)
        self.ln_2 = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.ffn = FeedForward(config)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(
        self, x: Tensor, key_padding_mask: Tensor | None = None, need_weights: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """Attention then MLP, each with a residual; returns the output and (if asked) the weights."""
        if self.post_norm:  # BERT: LayerNorm after each residual sum
            a, w = self.attn(x, key_padding_mask, need_weights)  # (B, T, C)
            x = self.ln_1(x + self.resid_dropout(a))
            x = self.ln_2(x + self.resid_dropout(self.ffn(x)))  # (B, T, C)
            return x, w
        a, w = self.attn(self.ln_1(x), key_padding_mask, need_weights)  # (B, T, C)
        x = x + self.resid_dropout(a)
        x = x + self.resid_dropout(self.ffn(self.ln_2(x)))  # (B, T, C)
        return x, w


def _linear_weights(layers: Iterable[nn.Module]) -> list[tuple[nn.Module, str]]:
    """``(module, "weight")`` of each Linear; a :class:`LowRankLinear` gives its two factors."""
    out: list[tuple[nn.Module, str]] = []
    for layer in layers:
        parts = (layer.down, layer.up) if isinstance(layer, LowRankLinear) else (layer,)
        out += [(part, "weight") for part in parts]
    return out


def _shared_blocks(candidate: Candidate) -> list[Block]:
    """One block per layer, where the layers of a sharing group use their group's first block's modules.

    ``all`` repeats the group's block itself; ``attention``/``ffn`` give each layer its own block (and
    LayerNorms) holding the group's attention or FFN module. The model's ``parameters()`` yield a shared
    tensor once, so parameter counts and sizes count it once; every layer still computes.
    """
    share, n = candidate.sharing, candidate.n_layers
    blocks: list[Block] = []
    for i in range(n):
        owner = blocks[share.owner(i, n)] if share.owner(i, n) < i else None
        if owner is not None and share.kind == "all":
            blocks.append(owner)
            continue
        block = Block(candidate.for_layer(i))
        if owner is not None and share.kind == "attention":
            block.attn = owner.attn
        elif owner is not None and share.kind == "ffn":
            block.ffn = owner.ffn
        blocks.append(block)
    return blocks


class EncoderClassifier(nn.Module):
    """Sequence classifier: embeddings, ``n_layers`` blocks, final LayerNorm (pre-LN), pooling, pooler, head.

    Args:
        candidate: The frozen architecture (kept as ``self.candidate``).
        vocab_size: Number of token ids.
        num_labels: Number of classes.
    """

    def __init__(self, candidate: Candidate, vocab_size: int, num_labels: int) -> None:
        super().__init__()
        self.candidate = candidate
        self.vocab_size = vocab_size
        self.num_labels = num_labels
        self.max_len = candidate.max_len
        self.pooling = candidate.pooling
        d, eps, post = candidate.d_model, candidate.layer_norm_eps, candidate.norm == "post"
        self.tok_emb = nn.Embedding(vocab_size, d)
        self.pos_emb = nn.Embedding(candidate.max_len, d)
        self.emb_ln: nn.Module = nn.LayerNorm(d, eps=eps) if post else nn.Identity()
        self.emb_dropout = nn.Dropout(candidate.dropout)
        self.blocks = nn.ModuleList(_shared_blocks(candidate))
        self.layerdrop = candidate.layerdrop
        self.layers_dropped = False
        self.ln_f: nn.Module = nn.Identity() if post else nn.LayerNorm(d, eps=eps)
        self.pooler = nn.Linear(d, d) if candidate.pooler != "none" else None
        self.pooler_act: nn.Module = nn.ReLU() if candidate.pooler == "relu" else nn.Tanh()
        self.pool_dropout = nn.Dropout(candidate.dropout)
        self.head = nn.Linear(d, num_labels)
        self.gradient_checkpointing = False
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # BERT/GPT-2 initialisation: N(0, 0.02) weights, zero biases.
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    # --- switches ---------------------------------------------------------------------------------
    def enable_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute block activations in the backward pass (less memory, ~30% more compute).

        Only takes effect in training mode with gradients enabled.
        """
        self.gradient_checkpointing = bool(enabled)

    def set_fused_attention(self, enabled: bool) -> None:
        """Use ``F.scaled_dot_product_attention`` where possible (default) or the explicit matmul path.

        The explicit path is numerically equivalent and is what ``FlopCounterMode`` can count on CPU.
        """
        for block in self.iter_blocks():
            block.attn.use_fused = bool(enabled)

    def iter_blocks(self) -> list[Block]:
        """The encoder blocks in layer order, typed; a block shared by several layers appears for each."""
        return [cast(Block, b) for b in self.blocks]

    def keep_inference_layers_(self) -> tuple[int, ...]:
        """Drop the layers that ``candidate.infer_layers`` does not keep, for good (LayerDrop's pruning).

        Called after training, before evaluation, measurement and saving; a no-op when every layer is kept or
        the layers are already dropped. Returns the kept layers (0-based, of the trained ones).
        """
        kept = self.candidate.kept_layers
        if not self.layers_dropped and len(kept) < len(self.blocks):
            self.blocks = nn.ModuleList([self.blocks[i] for i in kept])
            log.debug("kept layers %s of %d for inference", kept, self.candidate.n_layers)
        self.layers_dropped = True
        return kept

    # --- structure used by nas.compress -------------------------------------------------------------
    def layer_groups(self) -> LayerGroups:
        """The weights of each compressible layer group, as (module, parameter name) pairs.

        Returns:
            ``{"embedding": [...], "attention": [...], "ffn": [...]}``. The classifier head and the
            LayerNorms are deliberately absent: they stay in fp32.
        """
        groups: LayerGroups = {
            "embedding": [(self.tok_emb, "weight"), (self.pos_emb, "weight")],
            "attention": [],
            "ffn": [],
        }
        seen: set[int] = set()  # a module shared by several layers (candidate.sharing) is listed once
        for block in self.iter_blocks():
            attn, ffn = block.attn, block.ffn
            if id(attn) not in seen:
                seen.add(id(attn))
                groups["attention"] += _linear_weights(getattr(attn, n) for n in ("q_proj", "k_proj", "v_proj", "out_proj"))
                for name in ("E", "F"):
                    if isinstance(getattr(attn, name, None), Tensor):
                        groups["attention"].append((attn, name))
            if id(ffn) not in seen:
                seen.add(id(ffn))
                groups["ffn"] += _linear_weights((ffn.fc1, ffn.fc2))
        return groups

    def num_parameters(self) -> int:
        """Number of stored parameter elements, shared ones once (structured pruning lowers it; masks do not)."""
        return sum(p.numel() for p in self.parameters())

    # --- forward ------------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> ModelOutput:
        """Classify a batch of token-id sequences.

        Args:
            input_ids: (B, T) token ids, T <= candidate.max_len.
            attention_mask: (B, T), 1/True = real token, 0 = padding; None = all real. Each row should
                hold at least one real token (an all-padding row gives finite but meaningless logits).
            output_hidden_states: Also return the embedding output and every block's output.
            output_attentions: Also return per-layer attention maps (None for linear/lowrank layers).

        Returns:
            A :class:`ModelOutput`.

        Raises:
            ConfigError: If ``input_ids`` is not 2-D or is longer than ``max_len``.
        """
        if input_ids.dim() != 2:
            raise ConfigError(
                "input_ids must be 2-D (batch, seq_len)",
                field="input_ids",
                value=tuple(input_ids.shape),
                fix="add a batch dimension with input_ids.unsqueeze(0)",
            )
        B, T = input_ids.shape
        if not torch.jit.is_tracing() and self.max_len < T:  # type: ignore[attr-defined,no-untyped-call]
            raise ConfigError(
                f"sequence length {T} exceeds the candidate's max_len {self.max_len}",
                field="input_ids",
                value=T,
                fix="truncate inputs to max_len or build a candidate with a larger max_len",
            )
        key_padding_mask = None
        if attention_mask is not None:
            key_padding_mask = attention_mask == 0  # (B, T) True = pad

        pos = torch.arange(T, device=input_ids.device)
        x = self.emb_dropout(self.emb_ln(self.tok_emb(input_ids) + self.pos_emb(pos)[None]))  # (B, T, C)

        hidden: list[Tensor] = [x]
        maps: list[Tensor | None] = []
        use_ckpt = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        drop = self.layerdrop if self.training and not self.layers_dropped else 0.0
        for block in self.blocks:
            if drop and bool(torch.rand(()) < drop):  # LayerDrop (Fan et al., 2020): skip the whole layer
                hidden.append(x)
                maps.append(None)
                continue
            if use_ckpt:
                x, w = checkpoint(block, x, key_padding_mask, output_attentions, use_reentrant=False)
            else:
                x, w = block(x, key_padding_mask, output_attentions)
            hidden.append(x)
            maps.append(w)

        logits = self.head(self._pool(self.ln_f(x), key_padding_mask))  # (B, num_labels)
        return ModelOutput(
            logits=logits,
            hidden_states=tuple(hidden) if output_hidden_states else None,
            attentions=tuple(maps) if output_attentions else None,
        )

    def _pool(self, h: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        """(B, T, C) final states -> (B, C): the [CLS] state (through the pooler, if any) or a masked mean."""
        if self.pooling == "cls":
            pooled = h[:, 0]  # (B, C)
            if self.pooler is not None:
                pooled = self.pool_dropout(self.pooler_act(self.pooler(pooled)))  # (B, C)
            return pooled
        if key_padding_mask is None:
            return h.mean(dim=1)
        keep = (~key_padding_mask)[..., None].to(h.dtype)  # (B, T, 1)
        return (h * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1.0)  # (B, C)


class LogitsOnly(nn.Module):
    """Wraps an :class:`EncoderClassifier` so it returns a plain logits tensor.

    ``torch.jit.trace`` and ``torch.onnx.export`` need tensor outputs, not a dataclass; export code
    traces ``LogitsOnly(model)`` with ``(input_ids, attention_mask)``.
    """

    def __init__(self, model: EncoderClassifier) -> None:
        super().__init__()
        self.model = model
        self.train(model.training)  # exporters honour the wrapper's mode; keep the model's

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """The wrapped model's logits, shape (B, num_labels)."""
        logits: Tensor = self.model(input_ids, attention_mask).logits
        return logits


def build(candidate: Candidate, vocab_size: int, num_labels: int) -> EncoderClassifier:
    """Build an :class:`EncoderClassifier` from a candidate.

    Args:
        candidate: The frozen architecture. Compression in ``candidate.quant``/``candidate.sparsity`` is
            *not* applied here; call :func:`nas.compress.apply_candidate_compression`.
        vocab_size: Number of token ids (>= 1).
        num_labels: Number of classes (>= 1).

    Returns:
        A freshly initialised model in training mode.

    Raises:
        ConfigError: On a non-Candidate argument or a non-positive size.
    """
    if not isinstance(candidate, Candidate):
        raise ConfigError(
            f"build() needs a nas.config.Candidate, got {type(candidate).__name__}",
            field="candidate",
            fix="validate the dict first: nas.config.validate(Candidate, data)",
        )
    for name, val in (("vocab_size", vocab_size), ("num_labels", num_labels)):
        if not isinstance(val, int) or isinstance(val, bool) or val < 1:
            raise ConfigError(f"{name} must be a positive integer", field=name, value=val,
                              fix=f"pass the task's {name}")
    model = EncoderClassifier(candidate, vocab_size=vocab_size, num_labels=num_labels)
    log.debug("built %s attention model with %d parameters", candidate.attention.kind, model.num_parameters())
    return model
