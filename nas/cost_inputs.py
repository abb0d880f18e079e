"""The cost model's inputs of a candidate: its served form profiled on the CPU (torch; layer L3).

A tiny Transformer's inference cost on a CPU is as much per-operator overhead and memory traffic as it is
arithmetic: a strided attention issues ten times the operators of a softmax one for the same FLOPs. So
besides the FLOPs, :func:`candidate_inputs` builds the candidate, takes the copy a trial measures before
training (:func:`evaluators.measure_first.served_copy`: compressed, inference layers only), then the form that
is served (:func:`evaluators.serving.serving_copy`: weights baked, real int8 kernels where the CPU has them),
and runs one forward pass at the measurement's shape, counting

* ``aten_ops``: the ATen operators it dispatches (the per-operator overhead);
* ``elements_per_sample``: the tensor elements they write, per row (the memory traffic).

Only the shapes matter: the weights are untrained, structured pruning ranks by magnitude (the same heads
and neurons are removed), and activation ranges come from random token ids. It takes a fraction of a
second for the ``tiny`` space. Profiles are cached per candidate, shape and torch version, in memory and on
disk (``cost_profiles/`` under :func:`evaluators.tokenize.cache_dir`), so a study's trials are profiled once
on a machine. The FLOPs are counted as the trial counts them (:func:`evaluators.measure_first.flops_per_sample`),
and equal its stored ``flops_per_sample``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from evaluators.measure_first import flops_per_sample, served_copy
from evaluators.serving import serving_copy
from evaluators.tokenize import cache_dir
from nas.config import Candidate
from nas.cost_model import CostInputs
from nas.models import build

__all__ = ["candidate_inputs", "PROFILE_VOCAB", "PROFILE_VERSION"]

log = logging.getLogger(__name__)

#: Token ids the profile draws from: the vocabulary does not matter (an embedding is a lookup).
PROFILE_VOCAB = 8
#: Part of every cached profile's key: bump it when what a profile counts changes.
PROFILE_VERSION = 1


class _OpCounter(TorchDispatchMode):  # type: ignore[no-untyped-call]
    """Counts the ATen operators dispatched, and the tensor elements they return."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.ops = 0
        self.elements = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        self.ops += 1
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.elements += t.numel()
        return out


@dataclass(frozen=True)
class _RandomRows:
    """The rows :func:`evaluators.measure_first.served_copy` sets activation ranges from: random token ids."""

    train_ids: torch.Tensor
    train_mask: torch.Tensor


def _count(candidate_json: str, batch_size: int, seq_len: int) -> tuple[float, int, float]:
    """FLOPs per row, ATen operators and elements written per row of one forward pass (see the module doc)."""
    candidate = Candidate.from_json(candidate_json)
    ids = torch.randint(1, PROFILE_VOCAB, (batch_size, seq_len), generator=torch.Generator().manual_seed(0))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build(candidate, vocab_size=PROFILE_VOCAB, num_labels=2)
    probe = served_copy(model, cast(Any, _RandomRows(ids, torch.ones_like(ids))))
    flops = flops_per_sample(probe, seq_len, PROFILE_VOCAB) or 0.0
    served, _ = serving_copy(probe, candidate, "cpu")
    with torch.no_grad(), _OpCounter() as counter:
        served(ids)
    return flops, counter.ops, counter.elements / batch_size


@functools.lru_cache(maxsize=4096)
def _profile(candidate_json: str, batch_size: int, seq_len: int) -> tuple[float, int, float]:
    """:func:`_count`, read from the disk cache when this machine has profiled it before."""
    key = f"{PROFILE_VERSION}|{torch.__version__}|{batch_size}|{seq_len}|{candidate_json}"
    path = cache_dir() / "cost_profiles" / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.json"
    try:
        got = json.loads(path.read_text(encoding="utf-8"))
        return float(got["flops"]), int(got["ops"]), float(got["elements"])
    except (OSError, ValueError, KeyError, TypeError):
        pass  # not profiled here yet (or an unreadable entry): count it
    flops, ops, elements = _count(candidate_json, batch_size, seq_len)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"flops": flops, "ops": ops, "elements": elements}), encoding="utf-8")
        os.replace(tmp, path)  # atomic: a concurrent reader sees the whole entry or none
    except OSError as e:
        log.debug("cost profile not cached (%s): %s", path, e)
    return flops, ops, elements


def candidate_inputs(candidate: Candidate, *, batch_size: int, seq_len: int) -> CostInputs:
    """The cost model's inputs of ``candidate`` measured at ``batch_size`` x ``seq_len`` (see the module doc)."""
    flops, ops, elements = _profile(candidate.to_json(), batch_size, seq_len)
    return CostInputs(candidate=candidate, flops_per_sample=flops, batch_size=batch_size, seq_len=seq_len,
                      aten_ops=ops, elements_per_sample=elements)
