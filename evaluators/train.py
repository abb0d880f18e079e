"""Brief training and distillation of one candidate.

:func:`train` runs AdamW with linear warmup then cosine decay to zero (:func:`lr_multiplier`), gradient
clipping, and a budget of ``cfg.steps`` optimizer steps and/or ``cfg.max_seconds`` of wall time,
whichever ends first. On CPU a step-budgeted run is deterministic given ``cfg.seed`` and the model's
initial weights (see :func:`build_for_task` to seed the initialisation too).

Device behaviour:

- ``cfg.device="auto"`` picks ``cuda`` when available, else ``cpu``. The model is moved there in place.
- ``cfg.amp``: on CUDA with bf16 support, forward passes run under ``torch.autocast(dtype=bfloat16)``
  (no loss scaler is needed for bf16). On CPU, or a GPU without bf16, it is a no-op (float32), so that
  CPU numbers stay comparable and deterministic.
- ``cfg.gradient_checkpointing``: on CUDA, calls ``model.enable_gradient_checkpointing(True)`` for the
  run (and restores the previous setting). On CPU it is a no-op: memory is not the constraint there and
  recomputation only costs time.

Multi-fidelity: at each step in ``rungs`` the dev accuracy is evaluated, recorded in
``rung_accuracies`` and passed to ``report(step, accuracy)``; a ``True`` return stops training (the
search's ASHA-style pruner uses this). ``callback(step, model)`` is called after every optimizer step
(keep it cheap); a ``True`` return also stops training.

Teacher outputs: with ``teacher_outputs`` (an :mod:`evaluators.teacher_cache` entry for this teacher and
task) the distillation loss reads the teacher's logits, hidden states and attention maps from the cache
instead of calling the teacher on every batch. When the loss needs hidden states or attention maps and
the entry holds them for the first ``K`` training examples only, batches are drawn from those ``K``
examples (the logit-only kind still draws from the whole split).

Energy: pass an :class:`evaluators.meters` meter (anything with ``begin(key)`` and
``end(key) -> EnergyReading``) and the whole training window, rung evaluations included, is metered.
Without one, ``energy_j`` is ``None`` and ``meter`` is ``"none"``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

import torch
from torch import nn

from evaluators.distill import DistillLoss
from evaluators.train_loop import StopReason, TrainLoop, TrainProgress, autocast_for, lr_multiplier, run_steps
from nas.config import Candidate, DistillConfig, TrainConfig
from nas.errors import ConfigError
from nas.models import build
from nas.records import EnergyReading, TrainSummary

if TYPE_CHECKING:
    from evaluators.tasks import TaskData
    from evaluators.teacher import Teacher
    from evaluators.teacher_cache import TeacherOutputs

__all__ = ["TrainResult", "train", "lr_multiplier", "resolve_device", "build_for_task", "Meter", "group_by_length"]

log = logging.getLogger(__name__)


class Meter(Protocol):
    """What :func:`train` needs from an energy meter (see :mod:`evaluators.meters`)."""

    def begin(self, key: str) -> None:
        """Open the energy window ``key``."""
        ...

    def end(self, key: str) -> EnergyReading:
        """Close the window ``key`` and return its reading."""
        ...


@dataclass(frozen=True)
class TrainResult:
    """What one brief training run did.

    Attributes:
        steps: Optimizer steps taken.
        wall_s: Wall time of the training window (rung evaluations included), seconds.
        final_loss: Mean training loss over the last ``min(20, steps)`` steps.
        device: Where it ran (``"cpu"``, ``"cuda:0"``).
        stop_reason: ``"steps"``, ``"time"``, ``"report"`` (a rung report asked to stop) or ``"callback"``.
        rung_accuracies: ``(step, dev accuracy)`` at each rung reached.
        rung_eval_s: Seconds spent evaluating rungs (inside ``wall_s``).
        teacher: Name of the teacher, when distilled.
        distill_kind: ``DistillConfig.kind`` used (``"none"`` without a teacher).
        amp_dtype: ``"bfloat16"`` when autocast ran, else ``None``.
        gradient_checkpointing: Whether checkpointing was active.
        losses: Training loss of every step.
        energy: The meter's reading of the window, or ``None``.
    """

    steps: int
    wall_s: float
    final_loss: float
    device: str
    stop_reason: StopReason
    rung_accuracies: tuple[tuple[int, float], ...] = ()
    rung_eval_s: float = 0.0
    teacher: str | None = None
    distill_kind: str = "none"
    amp_dtype: str | None = None
    gradient_checkpointing: bool = False
    losses: tuple[float, ...] = ()
    energy: EnergyReading | None = None

    @property
    def stopped_early(self) -> bool:
        """True when a rung report or the callback ended the run."""
        return self.stop_reason in ("report", "callback")

    def to_summary(self) -> TrainSummary:
        """The :class:`~nas.records.TrainSummary` stored with the trial."""
        e = self.energy
        return TrainSummary(
            steps=self.steps,
            wall_s=self.wall_s,
            final_loss=self.final_loss,
            energy_j=e.energy_j if e is not None else None,
            meter=e.meter if e is not None else "none",
            is_estimate=e.is_estimate if e is not None else False,
            co2eq_g=e.co2eq_g if e is not None else None,
            device=self.device,
            teacher=self.teacher,
            rung_accuracies=self.rung_accuracies,
        )


def resolve_device(device: str) -> torch.device:
    """``"auto"`` → ``cuda`` when available, else ``cpu``; anything else is passed to ``torch.device``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ConfigError(f"unknown device {device!r}", field="device", value=device,
                          fix="use auto, cpu, cuda or cuda:N") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("CUDA was asked for but is not available", field="device", value=device,
                          fix="use device: auto or cpu")
    return dev


def build_for_task(candidate: Candidate, task: TaskData, seed: int = 0) -> nn.Module:
    """Build ``candidate`` for ``task`` with its initial weights drawn from ``seed``.

    Raises:
        ConfigError: The task's rows are longer than ``candidate.max_len``.
    """
    if task.max_len > candidate.max_len:
        raise ConfigError(f"task rows have {task.max_len} tokens but the candidate's max_len is "
                          f"{candidate.max_len}", field="max_len", value=candidate.max_len,
                          fix=f"set max_len >= {task.max_len} in the candidate or load the task with "
                          f"max_len={candidate.max_len}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build(candidate, vocab_size=task.vocab_size, num_labels=task.num_labels)


def _batches(n: int, batch_size: int, generator: torch.Generator,
             lengths: torch.Tensor | None = None) -> Iterator[torch.Tensor]:
    """Endless batches of row indices: a fresh shuffle each epoch, grouped by length when ``lengths`` is given.

    Args:
        n: Rows to draw from (``0..n-1``).
        batch_size: Rows per batch. A trailing partial batch is dropped when a full one exists.
        generator: Seeds the shuffles (the order is reproducible).
        lengths: Real tokens per row; given, each epoch is grouped by length (:func:`group_by_length`).
    """
    while True:
        perm = torch.randperm(n, generator=generator)
        if lengths is not None:
            perm = group_by_length(perm, lengths, batch_size, generator)
        # Drop a trailing partial batch only when at least one full batch exists.
        stop = n - (n % batch_size) if n >= batch_size else n
        for i in range(0, stop, batch_size):
            yield perm[i : i + batch_size]


def group_by_length(perm: torch.Tensor, lengths: torch.Tensor, batch_size: int,
                    generator: torch.Generator, mega: int = 50) -> torch.Tensor:
    """Reorder a shuffled epoch so each batch holds rows of similar length (Hugging Face's ``group_by_length``).

    The epoch is cut into chunks of ``mega`` batches; each chunk is sorted by length and split into
    batches, and the full batches are shuffled. Batches are trimmed to their longest row, so on text of
    mixed lengths far fewer padding tokens are computed; every row is still seen once per epoch.

    Args:
        perm: One epoch's shuffled row indices.
        lengths: Real tokens per row (indexed by row).
        batch_size: Rows per batch.
        generator: Seeds the shuffle of the batches.
        mega: Batches per sorted chunk (larger groups tighter, smaller keeps more randomness).

    Returns:
        The same indices, reordered; a partial batch (if any) stays last.
    """
    span = mega * batch_size
    chunks = [c[torch.argsort(lengths[c], descending=True, stable=True)] for c in torch.split(perm, span)]
    grouped = torch.cat(chunks)
    n_full = len(grouped) // batch_size
    full = grouped[: n_full * batch_size].view(n_full, batch_size)
    order = torch.randperm(n_full, generator=generator)
    return torch.cat([full[order].reshape(-1), grouped[n_full * batch_size :]])


def _lengths(task: TaskData, n_rows: int) -> torch.Tensor:
    """Real tokens in each of the first ``n_rows`` training rows."""
    return task.train_mask[:n_rows].sum(dim=1)


def train(
    model: nn.Module,
    task: TaskData,
    cfg: TrainConfig,
    *,
    teacher: Teacher | None = None,
    distill: DistillConfig | None = None,
    rungs: Sequence[int] = (),
    report: Callable[[int, float], bool | None] | None = None,
    callback: Callable[[int, nn.Module], bool | None] | None = None,
    meter: Meter | None = None,
    schedule: Literal["steps", "budget"] = "steps",
    teacher_outputs: TeacherOutputs | None = None,
) -> TrainResult:
    """Train ``model`` on ``task`` in place (optionally distilling from ``teacher``).

    Args:
        model: A :func:`nas.models.build` module (``model(ids, attention_mask=..., ...)`` returning
            ``.logits`` and optionally ``.hidden_states``/``.attentions``).
        task: The task; the model's vocabulary must cover ``task.vocab_size``.
        cfg: Steps, seconds, batch size, learning rate, seed, device, AMP and checkpointing.
        teacher: A :class:`~evaluators.teacher.Teacher` sharing ``task.tokenizer``.
        distill: Which distillation terms to use; default ``model.candidate.distill`` when it is not
            ``none``, else logit KD. Ignored without a teacher; ``kind="none"`` ignores the teacher.
        rungs: Steps after which dev accuracy is evaluated and reported.
        report: ``report(step, accuracy)``; returning True stops training (early stopping).
        callback: ``callback(step, model)`` after every step; returning True stops training.
        meter: Energy meter for the whole window (``begin("train")``/``end("train")``).
        schedule: ``"steps"`` spreads warmup and cosine over ``cfg.steps`` (deterministic);
            ``"budget"`` uses the larger of step progress and ``elapsed / cfg.max_seconds``, so a
            time-bounded run still finishes its decay.
        teacher_outputs: ``teacher``'s cached outputs on ``task``
            (:func:`evaluators.teacher_cache.build_or_load`), read instead of running the teacher. When
            the loss needs hidden states or attention maps, batches come from the entry's first
            ``hidden_examples`` training examples only. Ignored when not distilling.

    Returns:
        A :class:`TrainResult`; ``.to_summary()`` gives the stored :class:`~nas.records.TrainSummary`.

    Raises:
        TrialFailedError: The loss or the gradient norm became NaN/inf (the message names the step).
        ConfigError: Distillation was asked for without a teacher, teacher and task tokenizers differ,
            or ``teacher_outputs`` belongs to another task or lacks what the loss needs.
    """
    device = resolve_device(cfg.device)
    model.to(device)
    use_teacher, dcfg = _distill_setup(model, task, teacher, distill)
    loop = _make_loop(model, task, cfg, device, teacher if use_teacher else None, dcfg, schedule,
                      teacher_outputs if use_teacher else None)
    ckpt_on, ckpt_prev = _enable_checkpointing(model, cfg, device)
    _, amp_dtype = autocast_for(device, cfg.amp)
    rung_set = sorted({int(r) for r in rungs if 0 < int(r) <= cfg.steps})
    prog = TrainProgress()
    if meter is not None:
        meter.begin("train")
    reading: EnergyReading | None = None
    t0 = time.perf_counter()
    model.train()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(cfg.seed)
            run_steps(loop, prog, rung_set, report, callback, t0)
    finally:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        wall = time.perf_counter() - t0
        if meter is not None:
            reading = meter.end("train")
        if ckpt_on:
            model.enable_gradient_checkpointing(ckpt_prev)  # type: ignore[operator]
    tail = prog.losses[-20:]
    final_loss = float(sum(tail) / len(tail)) if tail else float("nan")
    log.info("trained %d steps in %.1fs (%s), final loss %.4f", prog.step, wall, prog.stop_reason, final_loss)
    return TrainResult(
        steps=prog.step, wall_s=wall, final_loss=final_loss, device=str(device), stop_reason=prog.stop_reason,
        rung_accuracies=tuple(prog.rung_acc), rung_eval_s=prog.rung_eval_s,
        teacher=teacher.name if use_teacher and teacher is not None else None,
        distill_kind=dcfg.kind if use_teacher and dcfg is not None else "none", amp_dtype=amp_dtype,
        gradient_checkpointing=ckpt_on, losses=tuple(prog.losses), energy=reading,
    )


def _make_loop(model: nn.Module, task: TaskData, cfg: TrainConfig, device: torch.device,
               teacher: Teacher | None, dcfg: DistillConfig | None, schedule: Literal["steps", "budget"],
               outputs: TeacherOutputs | None) -> TrainLoop:
    """The run's fixed state: distillation loss, optimizer and batch order.

    Args:
        model: The student, on ``device``.
        task: The task.
        cfg: The training configuration.
        device: Where training runs.
        teacher: The teacher when distilling, else None.
        dcfg: The distillation terms (used with ``teacher``).
        schedule: ``"steps"`` or ``"budget"``.
        outputs: The teacher's cached outputs, or None to call the teacher (used with ``teacher``).

    Returns:
        The :class:`TrainLoop`; batches come from the first ``K`` rows when the loss reads hidden states
        or attention maps from ``outputs``.
    """
    loss_fn = (_distill_loss(model, teacher, dcfg, device, move_teacher=outputs is None)
               if teacher is not None else None)
    n_rows = _check_outputs(outputs, task, loss_fn) if outputs is not None else task.n_train
    params, opt = _optimizer(model, loss_fn, cfg)
    return TrainLoop(model=model, task=task, cfg=cfg, device=device, opt=opt, params=params,
                     batches=_batches(n_rows, cfg.batch_size, torch.Generator().manual_seed(cfg.seed),
                                      _lengths(task, n_rows) if cfg.group_by_length else None),
                     loss_fn=loss_fn, teacher=teacher if loss_fn is not None else None, schedule=schedule,
                     teacher_outputs=outputs)


def _enable_checkpointing(model: nn.Module, cfg: TrainConfig, device: torch.device) -> tuple[bool, bool]:
    """Turn gradient checkpointing on for the run when asked for and useful (CUDA only).

    Args:
        model: The student; it needs ``enable_gradient_checkpointing`` for this to apply.
        cfg: Gives ``gradient_checkpointing``.
        device: Where training runs; on CPU checkpointing only costs time, so it stays off.

    Returns:
        ``(on, previous)``: whether it was turned on, and the model's setting before (to restore).
    """
    ckpt_prev = bool(getattr(model, "gradient_checkpointing", False))
    ckpt_on = bool(cfg.gradient_checkpointing and device.type == "cuda"
                   and hasattr(model, "enable_gradient_checkpointing"))
    if ckpt_on:
        model.enable_gradient_checkpointing(True)  # type: ignore[operator]
    return ckpt_on, ckpt_prev


def _distill_loss(model: nn.Module, teacher: Teacher | None, dcfg: DistillConfig | None,
                  device: torch.device, *, move_teacher: bool = True) -> DistillLoss:
    """Build the distillation loss for ``model`` and move it (and the teacher) to ``device``.

    Args:
        model: The student; its ``candidate`` (or its ``blocks``) gives its depth and width.
        teacher: The teacher (required here).
        dcfg: The distillation terms to use (required here).
        device: Where training runs.
        move_teacher: Move the teacher to ``device``; False when its outputs come from the cache.

    Returns:
        The loss module, on ``device``; the teacher is in eval mode (on ``device`` when moved).
    """
    assert teacher is not None and dcfg is not None
    cand = getattr(model, "candidate", None)
    s_layers = cand.n_layers if cand is not None else len(getattr(model, "blocks", [])) or 1
    s_width = cand.d_model if cand is not None else teacher.d_model
    loss_fn = DistillLoss(dcfg, s_layers, s_width, teacher.n_layers, teacher.d_model).to(device)
    if move_teacher:
        teacher.to(device)
    teacher.eval()
    return loss_fn


def _check_outputs(outputs: TeacherOutputs, task: TaskData, loss_fn: DistillLoss | None) -> int:
    """Check that the cached teacher outputs fit the task and the loss.

    Args:
        outputs: The cache entry.
        task: The task being trained on.
        loss_fn: The distillation loss (says whether hidden states and attention maps are needed).

    Returns:
        How many training rows batches are drawn from: ``K`` when the loss needs hidden states or
        attention maps, else the whole split.

    Raises:
        ConfigError: The entry was computed on another task, or lacks what the loss needs.
    """
    if outputs.task_fingerprint != task.fingerprint or outputs.n_examples != task.n_train:
        raise ConfigError("the teacher outputs were computed on another task (or another encoding of it)",
                          field="teacher_outputs", value=outputs.key,
                          fix="build them for this task: build_or_load(teacher, task, ...)")
    need_h = loss_fn is not None and loss_fn.needs_hidden
    need_a = loss_fn is not None and loss_fn.needs_attention
    if (need_h and outputs.hidden is None) or (need_a and outputs.attentions is None):
        missing = "attention maps" if need_a and outputs.attentions is None else "hidden states"
        raise ConfigError(f"the distillation loss needs the teacher's {missing} but the cache holds none",
                          field="teacher_outputs", value=outputs.key,
                          fix=f"build_or_load(teacher, task, needs_hidden={need_h}, needs_attention={need_a})")
    return outputs.hidden_examples if need_h or need_a else task.n_train


def _optimizer(model: nn.Module, loss_fn: DistillLoss | None,
               cfg: TrainConfig) -> tuple[list[nn.Parameter], torch.optim.AdamW]:
    """AdamW over the trainable parameters, with weight decay on matrices only.

    Args:
        model: The student.
        loss_fn: The distillation loss, whose projections are trained too; None without a teacher.
        cfg: Gives ``lr`` and ``weight_decay``.

    Returns:
        ``(params, optimizer)``: every trained parameter (for gradient clipping) and the optimizer.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if loss_fn is not None:
        params += list(loss_fn.parameters())
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    return params, opt


def _distill_setup(model: nn.Module, task: TaskData, teacher: Teacher | None,
                   distill: DistillConfig | None) -> tuple[bool, DistillConfig | None]:
    if distill is None:
        cand = getattr(model, "candidate", None)
        cand_cfg = cand.distill if cand is not None else None
        if teacher is None:
            return False, None
        distill = cand_cfg if cand_cfg is not None and cand_cfg.uses_logits else DistillConfig(kind="logit")
    if not distill.uses_logits:
        if teacher is not None:
            log.info("distill.kind is 'none': training without the teacher %s", teacher.name)
        return False, distill
    if teacher is None:
        raise ConfigError(f"distillation kind {distill.kind!r} needs a teacher", field="distill.kind",
                          value=distill.kind,
                          fix="pass teacher=load_teacher('auto', task) (or a Hugging Face folder), "
                          "or set distill.kind: none")
    if teacher.tokenizer is not None and teacher.tokenizer.fingerprint != task.tokenizer.fingerprint:
        raise ConfigError("teacher and task use different tokenizers, so token ids would not match",
                          field="teacher", value=teacher.name,
                          fix="re-encode the task with the teacher's tokenizer: task = teacher.adapt_task(task)")
    return True, distill
