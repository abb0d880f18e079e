"""Transformer encoder classifiers built from a frozen :class:`~nas.config.Candidate` (layer L1: torch only).

Public API::

    model = build(candidate, vocab_size=V, num_labels=C)      # -> EncoderClassifier
    out = model(input_ids, attention_mask=None, output_hidden_states=False, output_attentions=False)
    out.logits, out.hidden_states, out.attentions             # ModelOutput

Attention variants live in :data:`ATTENTION_REGISTRY`; add one with :func:`register_attention`.
"""

from __future__ import annotations

from .attention import (
    ATTENTION_REGISTRY,
    Attention,
    LinearAttention,
    LowRankAttention,
    SoftmaxAttention,
    register_attention,
)
from .encoder import Block, EncoderClassifier, FeedForward, LogitsOnly, ModelOutput, build
from .flops import count_flops
from .lowrank import LowRankLinear, make_linear
from .sparse_attention import FixedAttention, HashAttention, LocalAttention, StridedAttention
from .state import load_unique_state, unique_state

__all__ = [
    "build",
    "EncoderClassifier",
    "ModelOutput",
    "LogitsOnly",
    "Block",
    "FeedForward",
    "ATTENTION_REGISTRY",
    "register_attention",
    "Attention",
    "SoftmaxAttention",
    "LocalAttention",
    "StridedAttention",
    "FixedAttention",
    "HashAttention",
    "LinearAttention",
    "LowRankAttention",
    "count_flops",
    "LowRankLinear",
    "make_linear",
    "unique_state",
    "load_unique_state",
]

ATTENTION_REGISTRY.require_complete()
