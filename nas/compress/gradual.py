"""Pruning schedules: at once (``one_shot``) or gradually (``cubic``, Zhu & Gupta, 2017).

A :class:`PruneSchedule` says after which training steps pruning happens and how sparse the model is then.
``cubic`` is the schedule of Zhu & Gupta, 2017 ("To prune, or not to prune"), with ``s_i = 0``::

    s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt)) ** 3      for t0 <= t <= t0 + n * dt

By default pruning runs from ``CUBIC_START`` (10%) to ``CUBIC_END`` (70%) of the step budget in
``CUBIC_PRUNING_STEPS`` (10) steps; the last 30% fine-tune the final model (with its quantization, if any).

:class:`GradualPruner` runs a schedule during training. :meth:`~GradualPruner.install` puts all-ones masks
(:class:`~nas.compress.prune.WeightMask`) on what can be pruned before the optimizer is built (the parameters
stay the same objects, so the optimizer's state stays valid); :meth:`~GradualPruner.step`, called after each
training step, grows the masks to ``s_t`` at the schedule's steps (what is masked stays masked: its score is
``-inf``); :meth:`~GradualPruner.finish` reaches ``s_f`` if training stopped early and leaves the model in the
form one-shot ``prune_`` gives: unstructured masks stay as they are; masked heads and FFN neurons are
removed physically (exactly the masked ones), so ``build`` + ``apply_candidate_compression`` +
``load_state_dict`` rebuilds the trial. While training, a head is masked by its out_proj columns and a neuron
by its fc2 column: the unit then adds nothing, so removing it changes no output.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from nas.config import PruneConfig
from nas.errors import ConfigError
from nas.vocab import PRUNE_SCHEDULE, Registry

from ._util import bake_parametrization, num_params
from .importance import BatchLosses, attention_modules, ffn_modules, masked_linears
from .prune import (
    SIMULATED_KINDS,
    WeightMask,
    check_plain,
    heads_to_remove,
    importance_scores,
    neurons_to_remove,
    prune_label,
    slice_heads,
    slice_neurons,
)
from .report import CompressionReport

__all__ = ["PruneSchedule", "SCHEDULES", "ScheduleFactory", "one_shot", "cubic", "GradualPruner", "ONE_SHOT_AT",
           "CUBIC_START", "CUBIC_END", "CUBIC_PRUNING_STEPS"]

log = logging.getLogger(__name__)

#: Share of the step budget trained dense before one-shot pruning (and quantization).
ONE_SHOT_AT = 0.5
#: Share of the step budget at which the cubic schedule starts pruning (t0).
CUBIC_START = 0.1
#: Share of the step budget at which it reaches ``amount`` (t0 + n dt); the rest fine-tunes.
CUBIC_END = 0.7
#: Pruning steps of the cubic schedule (n).
CUBIC_PRUNING_STEPS = 10


@dataclass(frozen=True)
class PruneSchedule:
    """When pruning happens in a run, and the sparsity it prunes to.

    Attributes:
        final: The final sparsity ``s_f`` (``sparsity.amount``).
        start_step: ``t0``: training steps taken before the schedule starts (sparsity ``s_i = 0`` until then).
        end_step: ``t0 + n dt``: the step after which sparsity reaches ``final``; the compressed model
            fine-tunes from there.
        prune_steps: The steps after which masks are updated, increasing; the last is ``end_step``.
    """

    final: float
    start_step: int
    end_step: int
    prune_steps: tuple[int, ...]

    def target(self, step: int) -> float:
        """The sparsity after ``step`` training steps (cubic between the start and end steps)."""
        if step >= self.end_step:
            return self.final
        if step <= self.start_step:
            return 0.0
        left = 1.0 - (step - self.start_step) / (self.end_step - self.start_step)
        return self.final * (1.0 - left**3)


#: ``factory(total_steps, final) -> PruneSchedule``.
ScheduleFactory = Callable[[int, float], PruneSchedule]
#: One :data:`ScheduleFactory` per name of :data:`nas.vocab.PRUNE_SCHEDULE`.
SCHEDULES: Registry[ScheduleFactory] = Registry(PRUNE_SCHEDULE, "pruning schedule")


@SCHEDULES.register("one_shot")
def one_shot(total_steps: int, final: float) -> PruneSchedule:
    """Everything at once after ``ONE_SHOT_AT`` of the steps (at least one step)."""
    at = max(1, int(total_steps * ONE_SHOT_AT))
    return PruneSchedule(final=final, start_step=at, end_step=at, prune_steps=(at,))


@SCHEDULES.register("cubic")
def cubic(total_steps: int, final: float) -> PruneSchedule:
    """Zhu & Gupta's cubic ramp from ``CUBIC_START`` to ``CUBIC_END`` of the steps, ``CUBIC_PRUNING_STEPS`` times."""
    end = max(1, int(total_steps * CUBIC_END))
    start = min(int(total_steps * CUBIC_START), end - 1)
    span = end - start
    steps = sorted({start + max(1, round(k * span / CUBIC_PRUNING_STEPS)) for k in range(1, CUBIC_PRUNING_STEPS + 1)})
    return PruneSchedule(final=final, start_step=start, end_step=end, prune_steps=tuple(steps))


SCHEDULES.require_complete()


@dataclass
class _Unit:
    """What one module prunes: the masked Linear, its mask, and which units are kept."""

    module: nn.Module  # attention (heads), FFN (neurons) or the masked Linear (weights)
    linear: nn.Module  # the Linear whose WeightMask hides the units
    mask: WeightMask
    keep: Tensor  # (n_heads,), (d_ffn,) or the weight's shape; bool
    width: int  # mask columns per unit (head_dim for heads, 1 for neurons; 0: the mask is ``keep``)

    def write(self) -> None:
        with torch.no_grad():
            cols = self.keep if self.width == 0 else self.keep.repeat_interleave(self.width)[None, :]
            self.mask.mask.copy_(cols.expand_as(self.mask.mask))


class GradualPruner:
    """Prunes a model towards ``config.amount`` during training, on ``schedule`` (see the module docstring).

    Args:
        model: A model from :func:`nas.models.build`, not yet pruned or quantized.
        config: Kind, amount and importance (``heads``, ``ffn`` or ``magnitude``).
        schedule: When to prune, e.g. ``SCHEDULES.lookup(config.schedule)(total_steps, config.amount)``.
        batch_losses: The task loss of a few training batches, read at each pruning step by ``taylor``.

    Raises:
        ConfigError: The kind has no gradual form (``none``, ``2:4``).
    """

    def __init__(self, model: nn.Module, config: PruneConfig, schedule: PruneSchedule,
                 batch_losses: BatchLosses | None = None) -> None:
        if config.kind not in ("heads", "ffn", "magnitude"):
            raise ConfigError(f"kind {config.kind!r} has no gradual form", field="sparsity.schedule",
                              value=config.schedule, fix="use schedule: one_shot, or kind magnitude, heads or ffn")
        self.model, self.config, self.schedule, self.batch_losses = model, config, schedule, batch_losses
        self.units: dict[str, _Unit] = {}
        self.trace: list[tuple[int, float, float]] = []  # (step, target, sparsity reached)
        self.facts: dict[str, object] = {"importance": config.importance}
        self._params_before = num_params(model)
        self._target = 0.0

    def install(self) -> None:
        """Put all-ones masks on everything that can be pruned (before the optimizer is built)."""
        kind = self.config.kind
        if kind == "heads":
            for name, attn in attention_modules(self.model):
                for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
                    check_plain(getattr(attn, proj), f"{name}.{proj}")
                self._add(name, attn, attn.out_proj, int(attn.n_heads), int(attn.head_dim))
        elif kind == "ffn":
            for name, ffn in ffn_modules(self.model):
                check_plain(ffn.fc1, f"{name}.fc1")
                check_plain(ffn.fc2, f"{name}.fc2")
                self._add(name, ffn, ffn.fc2, int(ffn.d_ffn), 1)
        else:
            for name, lin in masked_linears(self.model):
                self._add(name, lin, lin, 0, 0)

    def _add(self, name: str, module: nn.Module, linear: Any, n_units: int, width: int) -> None:
        weight: Tensor = linear.weight
        mask = WeightMask(torch.ones_like(weight, dtype=torch.bool))
        parametrize.register_parametrization(linear, "weight", mask)
        shape = (n_units,) if width else tuple(weight.shape)
        keep = torch.ones(shape, dtype=torch.bool, device=weight.device)
        self.units[name] = _Unit(module, linear, mask, keep, width)

    @property
    def sparsity(self) -> float:
        """The share of prunable units (heads, neurons or weights) masked now."""
        total = sum(u.keep.numel() for u in self.units.values())
        return sum(int((~u.keep).sum()) for u in self.units.values()) / total if total else 0.0

    def step(self, step: int) -> bool:
        """After training step ``step``: grow the masks when the schedule prunes then. True when it did."""
        if step not in self.schedule.prune_steps or not self.units:
            return False
        self._prune_to(self.schedule.target(step))
        self.trace.append((step, round(self._target, 6), round(self.sparsity, 6)))
        log.debug("gradual pruning at step %d: target %.3f, reached %.3f", step, self._target, self.sparsity)
        return True

    def _removed(self, unit: _Unit, target: float) -> int:
        n = unit.keep.numel()
        if self.config.kind == "heads":
            return heads_to_remove(n, target)
        return neurons_to_remove(n, target) if self.config.kind == "ffn" else int(round(target * n))

    def _prune_to(self, target: float) -> None:
        self._target = max(self._target, target)
        need = {name: self._removed(u, self._target) for name, u in self.units.items()}
        if all(need[name] <= int((~u.keep).sum()) for name, u in self.units.items()):
            return
        scores, self.facts = importance_scores(self.model, self.config, self.batch_losses)
        for name, u in self.units.items():
            u.keep = u.keep.to(u.mask.mask.device)  # the model may have moved since install (model.to(device))
            score = scores[name].detach().float().reshape(u.keep.shape).to(u.keep.device, copy=True)
            score[~u.keep] = float("-inf")  # what is masked stays masked: the masks only grow
            drop = torch.topk(score.flatten(), need[name], largest=False).indices
            keep = torch.ones_like(u.keep)
            keep.view(-1)[drop] = False
            u.keep = keep
            u.write()

    def finish(self) -> CompressionReport:
        """Reach ``amount`` (if training stopped early), remove masked heads or neurons, and report.

        Returns:
            The report of the pruning, as :func:`~nas.compress.prune_` gives it, with the schedule's steps
            and the sparsity reached at each.
        """
        if self._target < self.config.amount:
            self._prune_to(self.config.amount)
            self.trace.append((-1, self.config.amount, round(self.sparsity, 6)))  # -1: at the end of training
        kind, details = self.config.kind, self._structure()
        after = num_params(self.model)
        log.info("gradual %s pruning (%s): params %d -> %d", kind, self.config.schedule, self._params_before, after)
        s = self.schedule
        return CompressionReport(
            kernels=prune_label(self.config), simulated=kind in SIMULATED_KINDS, params_before=self._params_before,
            params_after=after, details={
                "step": "prune", "kind": kind, "amount": self.config.amount, **self.facts,
                "schedule": self.config.schedule,
                "schedule_steps": {"start": s.start_step, "end": s.end_step, "prune_steps": len(s.prune_steps)},
                "schedule_trace": [list(t) for t in self.trace], **details})

    def _structure(self) -> dict[str, object]:
        """Physically remove the masked heads or neurons (unstructured masks stay); the report's counts."""
        kind = self.config.kind
        if kind == "magnitude":
            total = sum(u.keep.numel() for u in self.units.values())
            return {"sparsity_reached": self.sparsity, "masked_weights": total}
        removed = []
        for u in self.units.values():
            bake_parametrization(u.linear, "weight")
            removed.append(int((~u.keep).sum()))
            if not removed[-1]:
                continue
            keep = torch.nonzero(u.keep).flatten()  # the kept units, in index order
            if kind == "heads":
                slice_heads(u.module, keep)  # type: ignore[arg-type]
            else:
                slice_neurons(u.module, keep)  # type: ignore[arg-type]
        return {"heads_removed_per_layer" if kind == "heads" else "neurons_removed_per_layer": removed}
