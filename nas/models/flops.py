"""FLOP counting for a forward pass, with every attention on its countable (explicit matmul) path."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

from .encoder import EncoderClassifier

__all__ = ["count_flops"]


def count_flops(model: EncoderClassifier, input_ids: Tensor, attention_mask: Tensor | None = None) -> int:
    """Count the FLOPs of one inference forward pass (``torch.utils.flop_counter``).

    ``F.scaled_dot_product_attention`` is not counted by ``FlopCounterMode`` on CPU, so the fused path is
    switched off while counting (the explicit path does the same arithmetic) and restored afterwards.
    Sparse (masked) weights are counted dense: no sparse kernel runs.

    Args:
        model: The model to count.
        input_ids: (B, T) token ids.
        attention_mask: (B, T) or None.

    Returns:
        Total FLOPs for the batch (divide by B for per-sample).
    """
    blocks = model.iter_blocks()
    previous = [block.attn.use_fused for block in blocks]
    was_training = model.training
    model.eval()
    model.set_fused_attention(False)
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(input_ids, attention_mask)
    finally:
        for block, flag in zip(blocks, previous, strict=True):
            block.attn.use_fused = flag
        model.train(was_training)
    return int(counter.get_total_flops())
