"""Static and memory profile of a model: FLOPs per sample, parameter count, peak memory.

* :func:`flops_per_sample` counts with :class:`torch.utils.flop_counter.FlopCounterMode` on one
  sequence. That counter covers matrix multiplications, convolutions and fused attention
  (``mm``/``bmm``/``addmm``/``baddbmm``/``scaled_dot_product_attention``...), 2 FLOPs per
  multiply-add. Element-wise work (softmax, GELU, LayerNorm, masks) is not counted, and sparsity or
  fake-quantization does not reduce it: a masked dense matmul still counts in full.
* :func:`count_params` counts every ``nn.Parameter`` once (tied weights once). Pruning masks that zero
  weights without removing them do not lower it; :func:`count_nonzero_params` does.
* :func:`peak_memory` measures peak memory of a call: CUDA ``max_memory_allocated`` on GPU (label
  ``"cuda-max-allocated"``); on CPU the rise of the process's resident set size over the call, sampled
  from ``/proc/self/statm`` every millisecond by a thread (label ``"cpu-rss-sampled"``; spikes shorter
  than a millisecond can be missed), or, without ``/proc``, the rise of ``getrusage`` ``ru_maxrss``
  (label ``"cpu-maxrss-delta"``; 0 when the process had already peaked higher earlier).
"""

from __future__ import annotations

import os
import resource
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = [
    "flops_per_sample",
    "count_params",
    "count_nonzero_params",
    "peak_memory",
    "peak_memory_bytes",
    "PeakMemory",
]


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def flops_per_sample(model: nn.Module, seq_len: int, vocab_size: int) -> float:
    """Forward FLOPs for one sequence of ``seq_len`` real tokens (matmul-type ops only; see module doc).

    Args:
        model: Called as ``model(input_ids, attention_mask)``; put in eval mode.
        seq_len: Tokens per sequence.
        vocab_size: Token ids are drawn from ``[1, vocab_size)``.

    Returns:
        FLOPs (2 per multiply-add) of one forward pass at batch size 1.
    """
    if seq_len < 1 or vocab_size < 1:
        raise ValueError(f"seq_len and vocab_size must be >= 1 (got {seq_len}, {vocab_size})")
    device = _model_device(model)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1 if vocab_size > 1 else 0, vocab_size, (1, seq_len), generator=gen).to(device)
    mask = torch.ones(1, seq_len, dtype=torch.long, device=device)
    model.eval()
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(ids, mask)
    return float(counter.get_total_flops())


def count_params(model: nn.Module) -> int:
    """Number of parameters (every ``nn.Parameter`` once; zeros from masks included)."""
    return int(sum(p.numel() for p in model.parameters()))


def count_nonzero_params(model: nn.Module) -> int:
    """Number of non-zero parameter entries (what unstructured pruning actually leaves)."""
    with torch.no_grad():
        return int(sum(int(torch.count_nonzero(p)) for p in model.parameters()))


@dataclass(frozen=True)
class PeakMemory:
    """Peak memory of a call and how it was measured.

    Attributes:
        peak_bytes: On CUDA, the peak bytes allocated by torch during the call (weights included); on
            CPU, the peak rise of the process's resident memory above its level before the call.
        method: ``"cuda-max-allocated"``, ``"cpu-rss-sampled"`` or ``"cpu-maxrss-delta"``.
        result: What the call returned.
    """

    peak_bytes: int
    method: str
    result: Any = None


_STATM = Path("/proc/self/statm")


def _rss_bytes() -> int:
    return int(_STATM.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_memory(fn: Callable[[], Any], *, device: str = "cpu", sample_s: float = 0.001) -> PeakMemory:
    """Run ``fn()`` and report its peak memory (see module docstring for the method per device).

    Args:
        fn: The work to profile (e.g. one forward pass).
        device: ``"cpu"`` or ``"cuda:N"``.
        sample_s: RSS sampling period on CPU.
    """
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        result = fn()
        torch.cuda.synchronize(device)
        return PeakMemory(int(torch.cuda.max_memory_allocated(device)), "cuda-max-allocated", result)
    if _STATM.exists():
        base = _rss_bytes()
        peak = [base]
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(sample_s):
                peak[0] = max(peak[0], _rss_bytes())

        thread = threading.Thread(target=sample, name="rss-sampler", daemon=True)
        thread.start()
        try:
            result = fn()
        finally:
            stop.set()
            thread.join()
        peak[0] = max(peak[0], _rss_bytes())
        return PeakMemory(max(peak[0] - base, 0), "cpu-rss-sampled", result)

    # ru_maxrss is KiB on Linux, bytes on macOS.
    scale = 1 if os.uname().sysname == "Darwin" else 1024
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = fn()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return PeakMemory(max(after - before, 0) * scale, "cpu-maxrss-delta", result)


def peak_memory_bytes(fn: Callable[[], Any], *, device: str = "cpu") -> int:
    """:func:`peak_memory` in bytes only (see there for what is measured on each device)."""
    return peak_memory(fn, device=device).peak_bytes
