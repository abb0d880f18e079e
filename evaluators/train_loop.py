"""The step loop of :func:`evaluators.train.train`: learning-rate schedule, forward, backward, rungs.

:func:`evaluators.train.train` sets a run up (device, distillation loss, optimizer, meter) and hands a
:class:`TrainLoop` and a :class:`TrainProgress` to :func:`run_steps`, which takes the steps.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from evaluators.distill import DistillLoss, DistillTerms
from evaluators.metrics import evaluate, trim_batch
from nas.config import TrainConfig
from nas.errors import TrialFailedError

if TYPE_CHECKING:
    from evaluators.tasks import TaskData
    from evaluators.teacher import Teacher
    from evaluators.teacher_cache import TeacherOutputs

__all__ = ["StopReason", "TrainLoop", "TrainProgress", "autocast_for", "lr_multiplier", "run_steps"]

log = logging.getLogger(__name__)

StopReason = Literal["steps", "time", "report", "callback"]


def lr_multiplier(progress: float, warmup_fraction: float) -> float:
    """Learning-rate factor at ``progress`` in [0, 1]: linear warmup, then cosine decay to 0.

    Args:
        progress: Fraction of the budget used *before* this step.
        warmup_fraction: Fraction of the budget spent warming up.

    Returns:
        ``(progress + eps) / warmup_fraction`` during warmup (the first step is not at 0), then
        ``0.5 * (1 + cos(pi * q))`` where ``q`` is the progress through the decay phase.
    """
    p = min(max(progress, 0.0), 1.0)
    if warmup_fraction > 0 and p < warmup_fraction:
        return max(p / warmup_fraction, 1e-3)
    span = 1.0 - warmup_fraction
    q = (p - warmup_fraction) / span if span > 0 else 1.0
    return 0.5 * (1.0 + math.cos(math.pi * min(max(q, 0.0), 1.0)))


def autocast_for(device: torch.device, amp: bool) -> tuple[contextlib.AbstractContextManager[Any], str | None]:
    """The autocast context for a forward pass, and the dtype it runs in.

    Args:
        device: Where the model runs.
        amp: Whether mixed precision was asked for.

    Returns:
        ``(torch.autocast(bfloat16), "bfloat16")`` on CUDA with bf16 support and ``amp``; else a
        null context and None (float32).
    """
    if amp and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16), "bfloat16"
    return contextlib.nullcontext(), None


@dataclass(frozen=True)
class TrainLoop:
    """What every step of one training run needs, fixed for the run.

    Attributes:
        model: The student being trained (in train mode).
        task: The task whose train split is drawn from.
        cfg: The training configuration (budget, lr schedule, clipping, amp).
        device: Where the model and batches live.
        opt: The AdamW optimizer over ``params``.
        params: The trained parameters (student, plus the distillation projections).
        batches: Endless iterator of shuffled index batches.
        loss_fn: The distillation loss, or None to train on labels alone.
        teacher: The teacher (only when ``loss_fn`` is set).
        schedule: ``"steps"`` or ``"budget"`` (see :func:`train`).
        teacher_outputs: The teacher's cached outputs, read instead of calling ``teacher`` (only when
            ``loss_fn`` is set); None calls the teacher on every batch.
    """

    model: nn.Module
    task: TaskData
    cfg: TrainConfig
    device: torch.device
    opt: torch.optim.Optimizer
    params: list[nn.Parameter]
    batches: Iterator[torch.Tensor]
    loss_fn: DistillLoss | None
    teacher: Teacher | None
    schedule: Literal["steps", "budget"]
    teacher_outputs: TeacherOutputs | None = None


@dataclass
class TrainProgress:
    """What one training run has done so far (updated step by step).

    Attributes:
        step: Optimizer steps taken.
        losses: Training loss of every step.
        rung_acc: ``(step, dev accuracy)`` at each rung reached.
        rung_eval_s: Seconds spent evaluating rungs.
        stop_reason: Why the loop ended (``"steps"`` until something else stops it).
    """

    step: int = 0
    losses: list[float] = field(default_factory=list)
    rung_acc: list[tuple[int, float]] = field(default_factory=list)
    rung_eval_s: float = 0.0
    stop_reason: StopReason = "steps"


def run_steps(loop: TrainLoop, prog: TrainProgress, rung_set: Sequence[int],
               report: Callable[[int, float], bool | None] | None,
               callback: Callable[[int, nn.Module], bool | None] | None, t0: float) -> None:
    """Take optimizer steps until the step or time budget ends, or a report or the callback stops it.

    Args:
        loop: The run's fixed state.
        prog: Updated in place: steps, losses, rung accuracies and the stop reason.
        rung_set: Steps after which dev accuracy is evaluated.
        report: ``report(step, accuracy)`` at each rung; True stops training.
        callback: ``callback(step, model)`` after every step; True stops training.
        t0: ``time.perf_counter()`` at the start of the training window.
    """
    cfg = loop.cfg
    while prog.step < cfg.steps:
        elapsed = time.perf_counter() - t0
        if cfg.max_seconds is not None and elapsed >= cfg.max_seconds:
            prog.stop_reason = "time"
            return
        _set_lr(loop, prog.step, elapsed)
        loss_v = _train_step(loop, prog.step)
        prog.step += 1
        prog.losses.append(loss_v)
        if prog.step in rung_set and _rung(loop, prog, report):
            prog.stop_reason = "report"
            return
        if callback is not None and callback(prog.step, loop.model):
            prog.stop_reason = "callback"
            return


def _set_lr(loop: TrainLoop, step: int, elapsed: float) -> None:
    """Set every parameter group's learning rate for the coming step (warmup, then cosine decay).

    Args:
        loop: The run's fixed state (config, schedule and optimizer).
        step: Steps taken so far.
        elapsed: Seconds since the training window began (used by the ``"budget"`` schedule).
    """
    cfg = loop.cfg
    progress = step / cfg.steps
    if loop.schedule == "budget" and cfg.max_seconds is not None:
        progress = max(progress, elapsed / cfg.max_seconds)
    lr = cfg.lr * lr_multiplier(progress, cfg.warmup_fraction)
    for g in loop.opt.param_groups:
        g["lr"] = lr


def _train_step(loop: TrainLoop, step: int) -> float:
    """One optimizer step on the next batch.

    Args:
        loop: The run's fixed state.
        step: Steps taken before this one (for error messages).

    Returns:
        This step's training loss.

    Raises:
        TrialFailedError: The loss or the gradient norm is NaN/inf.
    """
    task, device = loop.task, loop.device
    idx = next(loop.batches)
    ids, mask = trim_batch(task.train_ids[idx], task.train_mask[idx])
    ids, mask, y = ids.to(device), mask.to(device), task.train_y[idx].to(device)
    ctx, _ = autocast_for(device, loop.cfg.amp)
    with ctx:
        loss = _forward_loss(loop, idx, ids, mask, y)
    loss_v = float(loss.detach())
    if not math.isfinite(loss_v):
        raise TrialFailedError(f"training loss became {loss_v} at step {step + 1}",
                               field="loss", value=loss_v,
                               fix="lower the learning rate, or check the candidate (e.g. "
                               "very low bit-widths) and the data")
    loop.opt.zero_grad(set_to_none=True)
    loss.backward()  # type: ignore[no-untyped-call]
    norm = torch.nn.utils.clip_grad_norm_(loop.params, loop.cfg.grad_clip)
    if not math.isfinite(float(norm)):
        raise TrialFailedError(f"gradient norm became {float(norm)} at step {step + 1}",
                               field="grad_norm", value=float(norm),
                               fix="lower the learning rate or disable amp")
    loop.opt.step()
    return loss_v


def _forward_loss(loop: TrainLoop, idx: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor,
                  y: torch.Tensor) -> torch.Tensor:
    """The batch's loss: cross-entropy on labels, or the distillation loss against the teacher.

    The teacher's side comes from ``loop.teacher_outputs`` (rows ``idx``, cut to ``T``) when there is a
    cache, else from calling the teacher on the batch.

    Args:
        loop: The run's fixed state (model, and teacher and loss when distilling).
        idx: ``(B,)`` training-split rows of the batch.
        ids: ``(B, T)`` token ids, on the device.
        mask: ``(B, T)`` attention mask, on the device.
        y: ``(B,)`` labels, on the device.

    Returns:
        The scalar loss, with its graph.
    """
    model, loss_fn = loop.model, loop.loss_fn
    if loss_fn is None:
        out = model(ids, attention_mask=mask)
        return F.cross_entropy(out.logits.float(), y)
    assert loop.teacher is not None
    need_h, need_a = loss_fn.needs_hidden, loss_fn.needs_attention
    if loop.teacher_outputs is not None:
        t_out = loop.teacher_outputs.batch(idx, ids.shape[1], ids.device, hidden=need_h, attention=need_a)
    else:
        with torch.no_grad():
            t_out = loop.teacher(ids, attention_mask=mask, output_hidden_states=need_h, output_attentions=need_a)
    out = model(ids, attention_mask=mask, output_hidden_states=need_h, output_attentions=need_a)
    terms: DistillTerms = loss_fn(out, t_out, y, mask)
    return terms.total


def _rung(loop: TrainLoop, prog: TrainProgress, report: Callable[[int, float], bool | None] | None) -> bool:
    """Evaluate dev accuracy at a rung, record it and report it.

    Args:
        loop: The run's fixed state.
        prog: Gets the rung's accuracy and evaluation time.
        report: ``report(step, accuracy)``, or None.

    Returns:
        True when the report asks to stop training.
    """
    te = time.perf_counter()
    acc = evaluate(loop.model, loop.task, loop.cfg.eval_batch_size).accuracy
    loop.model.train()
    prog.rung_eval_s += time.perf_counter() - te
    prog.rung_acc.append((prog.step, acc))
    log.debug("rung step %d: dev accuracy %.4f", prog.step, acc)
    return bool(report is not None and report(prog.step, acc))
