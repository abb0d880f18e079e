"""Pruning inside a trial's training: the batches gradient importance reads, and when pruning happens.

:class:`CompressionPlan` is what :func:`evaluators.pipeline.train_candidate` follows for a compressed
candidate: it trains dense until :attr:`CompressionPlan.at_step`, then compresses and fine-tunes. With
``sparsity.schedule: one_shot`` that step is ``ONE_SHOT_AT`` (half) of the budget and pruning happens there,
at once. With ``cubic`` masks grow from ``CUBIC_START`` to ``CUBIC_END`` of the budget
(:class:`nas.compress.GradualPruner`, stepped after every training step), and at ``CUBIC_END`` the masked
heads or neurons are removed and the quantization applied.

``sparsity.importance: taylor`` reads the task loss (cross-entropy on the labels; a distilling candidate's
teacher terms are left out, keeping importance about the task) on ``IMPORTANCE_BATCHES`` training batches
each time it ranks, drawn from a generator seeded by the trial's seed (each ranking sees fresh batches).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from evaluators.metrics import trim_batch
from nas.compress import SCHEDULES, BatchLosses, CompressionReport, GradualPruner, apply_candidate_compression
from nas.config import Candidate

if TYPE_CHECKING:
    from evaluators.tasks import TaskData

__all__ = ["IMPORTANCE_BATCHES", "importance_losses", "CompressionPlan"]

#: Training batches whose loss gradients each Taylor ranking sums over.
IMPORTANCE_BATCHES = 8


def importance_losses(task: TaskData, batch_size: int, seed: int, n_batches: int = IMPORTANCE_BATCHES) -> BatchLosses:
    """The task loss of ``n_batches`` training batches under a model, for gradient importance.

    Args:
        task: The task; batches come from its training split.
        batch_size: Rows per batch (at most the split's size).
        seed: Seeds the draw; successive calls of the result draw further batches.
        n_batches: Batches per call.

    Returns:
        ``losses(model)``, yielding each batch's cross-entropy with its graph (on the model's device).
    """
    generator = torch.Generator().manual_seed(seed)
    rows = min(batch_size, task.n_train)

    def losses(model: nn.Module) -> Iterator[torch.Tensor]:
        device = next(model.parameters()).device
        for _ in range(n_batches):
            idx = torch.randperm(task.n_train, generator=generator)[:rows]
            ids, mask = trim_batch(task.train_ids[idx], task.train_mask[idx])
            out = model(ids.to(device), attention_mask=mask.to(device))
            yield F.cross_entropy(out.logits.float(), task.train_y[idx].to(device))

    return losses


@dataclass
class CompressionPlan:
    """When and how one trial compresses its model (see the module docstring).

    Attributes:
        at_step: The training step after which the model is compressed (pruned, quantized) and fine-tuned.
        batch_losses: The batches gradient importance reads (None unless ``importance: taylor``).
        pruner: The gradual pruner, for a ``cubic`` schedule.
    """

    at_step: int
    batch_losses: BatchLosses | None = None
    pruner: GradualPruner | None = None
    done: bool = field(default=False, init=False)

    @classmethod
    def for_model(cls, model: nn.Module, candidate: Candidate, task: TaskData, total_steps: int, *,
                  batch_size: int, seed: int) -> CompressionPlan:
        """The plan of ``model`` (built from ``candidate``) over a budget of ``total_steps`` training steps."""
        sparsity = candidate.sparsity
        schedule = SCHEDULES.lookup(sparsity.schedule)(total_steps, sparsity.amount)
        losses = importance_losses(task, batch_size, seed) if sparsity.importance == "taylor" else None
        gradual = not sparsity.is_noop and schedule.start_step < schedule.end_step
        return cls(at_step=schedule.end_step, batch_losses=losses,
                   pruner=GradualPruner(model, sparsity, schedule, losses) if gradual else None)

    def start(self) -> None:
        """Put the gradual pruner's masks on, before training builds its optimizer."""
        if self.pruner is not None:
            self.pruner.install()

    def step(self, step: int) -> None:
        """After training step ``step`` (counted over the whole budget): grow the masks on schedule."""
        if self.pruner is not None and not self.done:
            self.pruner.step(step)

    def compress(self, model: nn.Module) -> CompressionReport:
        """Finish pruning (gradual) or prune at once (one-shot), then quantize: ``model`` as it will be served."""
        self.done = True
        pruned = self.pruner.finish() if self.pruner is not None else None
        return apply_candidate_compression(model, batch_losses=self.batch_losses, pruned=pruned)
