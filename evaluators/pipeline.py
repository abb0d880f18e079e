"""One trial, end to end.

Load the task (and teacher), build the candidate, train it briefly (dense, then compressed and
fine-tuned), evaluate accuracy, measure inference energy in its serving form, and return one frozen
:class:`nas.records.TrialResult`.

The pipeline is two public phases, shared by the search (:func:`run_trial`) and ``nas export
--retrain``: :func:`train_candidate` (metered training) and :func:`assess` (evaluation, FLOPs, the
energy measurement, saved weights). A :class:`TrialContext` holds what the phases share: the device,
the meter and the measurement lane.

Compression schedule: a candidate with pruning or quantization trains dense for ``DENSE_FRACTION`` of
its step budget, is then compressed in place (prune first, then fake-quant with a straight-through
estimator), and fine-tunes for the rest. A candidate without compression trains for the whole budget.
With ``sparsity.schedule: cubic`` masks grow during training instead, and the model is compressed at
``CUBIC_END`` of the budget (:mod:`evaluators.pruning`).

Every phase that uses the device runs in the lane: training steps, the teacher's training or loading,
dev evaluation, FLOP counting and weight saving hold it shared; the energy measurement holds it alone.

Every joule is counted, however the trial ends. Training is metered in segments that close at each
rung (:class:`evaluators.train_meter.TrainingMeter`), so a rung report carries the cost so far; a trial
that fails after training raises :class:`~nas.errors.TrialFailedError` whose ``partial`` result holds
what it spent; a self-trained teacher's training is metered and charged once, to the trial that
trained it.

A distilling trial reads the teacher's outputs from :mod:`evaluators.teacher_cache` (computed once per
teacher, task and length, and shared by every trial and worker) instead of running the teacher on every
batch; the cost of computing them is metered and charged once too (``TrainSummary.teacher_cache``).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from evaluators.inherit import inherit_
from evaluators.lane import MeasurementLane
from evaluators.measure_first import Gate, charging_first, flops_per_sample, measure_before_training
from evaluators.meters import EnergyMeter, make_meter
from evaluators.metrics import evaluate
from evaluators.placement import place
from evaluators.pruning import CompressionPlan
from evaluators.serving import measure_forms
from evaluators.supernet import cut_, supernet_weights
from evaluators.tasks import load_task as _load
from evaluators.teacher_cache import TeacherOutputs, build_or_load
from evaluators.teacher_fit import resolve_teacher
from evaluators.tokenize import cache_dir
from evaluators.train import build_for_task, train
from evaluators.train_meter import TrainingMeter
from evaluators.weights import save_trial_weights
from nas.compress import applied_compression, model_size_bytes
from nas.compress.gradual import ONE_SHOT_AT
from nas.config import Candidate, DistillConfig, MeasureConfig, TrainConfig
from nas.errors import ConfigError, MeterUnavailableError, TrialFailedError
from nas.models import EncoderClassifier
from nas.placement import Placement
from nas.records import EvalMetrics, FailKind, InferenceEnergy, RungReport, TrainSummary, TrialResult
from nas.spec import TeacherSpec

if TYPE_CHECKING:
    from torch import nn

    from evaluators.tasks import TaskData
    from evaluators.teacher import Teacher

__all__ = ["run_trial", "train_candidate", "assess", "TrialContext", "Trained", "DENSE_FRACTION",
           "Progress", "cached_task", "load_teacher_for", "teacher_outputs_for"]

log = logging.getLogger(__name__)

#: Share of the step budget trained dense before a compressed candidate is pruned/quantized (one-shot).
DENSE_FRACTION = ONE_SHOT_AT
#: ``progress(phase, done, total)``: ``fine-tune`` per step of a teacher's fine-tuning (when one runs),
#: ``measure-first`` (with a ``gate``), ``teacher-cache`` per teacher batch (when the teacher's outputs are
#: computed), ``train`` per step, then ``evaluate``, ``measure``, ``save``.
Progress = Callable[[str, int, int], None]
#: ``on_rung(report)``: a rung was reached; returning True stops training.
OnRung = Callable[[RungReport], "bool | None"]


@functools.lru_cache(maxsize=4)
def cached_task(spec: str, seed: int, max_len: int) -> TaskData:
    """The task, loaded once per process (trials of a study share it)."""
    return _load(spec, seed=seed, max_len=max_len)


_teachers: dict[tuple[str | TeacherSpec, str, int], Teacher | None] = {}
_teacher_outputs: dict[tuple[str, str, str, bool, bool], TeacherOutputs | None] = {}


@dataclass
class TrialContext:
    """The placement, meter and lane that the phases of one trial share.

    Use :meth:`open` and :meth:`close` (or ``with``); the lane is held shared from open to close, except
    while measuring. ``device`` is where torch runs; the meter reads, and the lane is keyed by, the
    physical device of ``placement`` (the same device, except under the fake-GPU test harness).
    """

    device: str
    meter: EnergyMeter
    lane: MeasurementLane
    progress: Progress | None = None
    placement: Placement | None = None

    @classmethod
    def open(cls, train_cfg: TrainConfig, measure_cfg: MeasureConfig, progress: Progress | None = None,
             placement: Placement | None = None) -> TrialContext:
        """Place the trial (unless ``placement`` is given), make its meter and take its lane shared."""
        where = placement if placement is not None else place(train_cfg.device)
        meter = make_meter(measure_cfg.meter, measure_cfg, device=where.device)
        lane = MeasurementLane(where.lane_key)
        lane.enter_shared()
        return cls(device=where.compute, meter=meter, lane=lane, progress=progress, placement=where)

    def close(self) -> None:
        """Release the lane and the meter."""
        self.lane.close()
        self.meter.close()

    def __enter__(self) -> TrialContext:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def step(self, phase: str, done: int, total: int) -> None:
        """A step boundary: let a waiting measurement in, and report progress."""
        self.lane.step_boundary()
        if self.progress is not None:
            self.progress(phase, done, total)


@dataclass(frozen=True)
class Trained:
    """What :func:`train_candidate` returns: the summary, and whether a rung report stopped it."""

    summary: TrainSummary
    stopped: bool


def load_teacher_for(spec: str | TeacherSpec, task: TaskData, seed: int, ctx: TrialContext) -> Teacher | None:
    """The trial's teacher, loaded (or trained, metered in ``ctx``) once per process and task.

    A Hugging Face folder whose head does not fit the task (or a spec with ``fine_tune``) is fine-tuned
    first, cached (:func:`evaluators.teacher_fit.resolve_teacher`); a fine-tuning done here is charged to
    this trial, once, like a self-trained teacher's training.
    """
    key = (spec, task.fingerprint, seed)
    if key not in _teachers:
        resolved = resolve_teacher(spec, task, seed=seed, device=ctx.device, meter=ctx.meter,
                                   progress=lambda done, total: ctx.step("fine-tune", done, total))
        _teachers[key] = None if resolved is None else resolved.load(
            task, seed=seed, meter=ctx.meter, step_callback=lambda: ctx.lane.step_boundary())
    return _teachers[key]


def teacher_outputs_for(teacher: Teacher, task: TaskData, distill: DistillConfig, ctx: TrialContext, *,
                        batch_size: int = 64) -> TeacherOutputs | None:
    """The teacher's cached outputs for ``distill``, built (metered in ``ctx``) or loaded once per process.

    Args:
        teacher: The trial's teacher.
        task: The task (in the teacher's tokenizer).
        distill: The candidate's distillation terms (say whether hidden states and maps are needed).
        ctx: The trial's device, meter and lane (a build takes a step boundary per teacher batch).
        batch_size: Teacher batch size on a build.

    Returns:
        The entry, or ``None`` when ``distill`` uses no teacher, or when the entry could not be written
        (e.g. a full disk: the trial then runs the teacher live, and a warning says so).
    """
    if not distill.uses_logits:
        return None
    need_h, need_a = distill.uses_hidden, distill.uses_attention
    key = (str(cache_dir()), teacher.fingerprint, task.fingerprint, need_h, need_a)
    if key not in _teacher_outputs:
        try:
            _teacher_outputs[key] = build_or_load(
                teacher, task, needs_hidden=need_h, needs_attention=need_a, batch_size=batch_size,
                device=ctx.device, meter=ctx.meter, progress=lambda d, t: ctx.step("teacher-cache", d, t))
        except OSError as e:
            log.warning("could not cache the teacher's outputs (%s); running the teacher live. Fix: free disk "
                        "space under %s or point NAS_CACHE_DIR at a larger disk", e, cache_dir())
            _teacher_outputs[key] = None
    return _teacher_outputs[key]


def _phases(total: int, compress: bool, at: int | None = None) -> list[tuple[int, int, bool]]:
    """``(start, end, compress_first)`` step ranges: dense, then compressed, for a compressed candidate.

    The compressed phase starts after step ``at`` (by default ``DENSE_FRACTION`` of the budget).
    """
    at = max(1, int(total * DENSE_FRACTION)) if at is None else at
    dense = at if compress and total > 1 else total
    return [(0, dense, False)] + ([(dense, total, True)] if dense < total else [])


def train_candidate(model: nn.Module, task: TaskData, train_cfg: TrainConfig, ctx: TrialContext, *,
                    teacher: Teacher | None = None, rungs: Sequence[int] = (),
                    on_rung: OnRung | None = None) -> Trained:
    """Train ``model`` (built from its candidate) for ``train_cfg.steps`` steps, metered.

    A candidate that compresses trains dense first and is compressed at ``DENSE_FRACTION`` (or, pruned
    gradually, at the end of its schedule: :class:`evaluators.pruning.CompressionPlan`); a model
    that is compressed already (continued training) fine-tunes for every step. A distilling candidate
    reads the teacher's outputs from the cache (:func:`teacher_outputs_for`); a build's cost is charged
    to this trial when it happened here.

    Raises:
        TrialFailedError: training failed; ``partial`` holds the cost of what ran.
    """
    candidate: Candidate = model.candidate  # type: ignore[assignment]
    teacher_training = teacher.take_training() if teacher is not None else None
    outputs = teacher_outputs_for(teacher, task, candidate.distill, ctx) if teacher is not None else None
    teacher_cache = outputs.take_build_cost() if outputs is not None else None
    book = TrainingMeter(ctx.meter, ctx.meter.device, batch_size=train_cfg.batch_size, seq_len=task.max_len)
    rung_acc: list[tuple[int, float]] = []
    steps, losses = 0, [float("nan")]

    def summary() -> TrainSummary:
        return book.summary(steps=steps, final_loss=losses[-1], teacher=getattr(teacher, "name", None),
                            rung_accuracies=tuple(rung_acc), teacher_training=teacher_training,
                            teacher_cache=teacher_cache)

    compressed = applied_compression(model) is not None
    compress = not (candidate.quant.is_noop and candidate.sparsity.is_noop) and not compressed
    total = train_cfg.steps
    plan = (CompressionPlan.for_model(model, candidate, task, total, batch_size=train_cfg.batch_size,
                                      seed=train_cfg.seed) if compress else None)
    book.start()
    try:
        if plan is not None:
            plan.start()
        for start, end, compress_first in _phases(total, compress, plan.at_step if plan else None):
            if compress_first and plan is not None:
                plan.compress(model)

            def report(step: int, acc: float, _o: int = start) -> bool | None:
                rung_acc.append((step + _o, acc))
                return on_rung(book.rung(step + _o, acc, teacher_training, teacher_cache)) if on_rung else None

            secs = train_cfg.max_seconds * (end - start) / total if train_cfg.max_seconds is not None else None
            cfg = train_cfg.model_copy(update={"steps": end - start, "max_seconds": secs,
                                               "seed": train_cfg.seed + start})
            def step(s: int, _m: nn.Module, _o: int = start) -> None:
                ctx.step("train", s + _o, total)
                if plan is not None:
                    plan.step(s + _o)

            res = train(model, task, cfg, teacher=teacher, distill=candidate.distill if teacher else None,
                        rungs=[r - start for r in rungs if start < r <= end], report=report, callback=step,
                        teacher_outputs=outputs)
            steps += res.steps
            losses.append(res.final_loss)
            if res.stopped_early:
                return Trained(summary(), stopped=True)
        if plan is not None and applied_compression(model) is None:
            plan.compress(model)  # a one-step budget: compress before evaluating
    except Exception as e:
        raise _failure(e, TrialResult(candidate=candidate, task=task.name, status="FAIL", train=summary(),
                                      placement=ctx.placement)) from e
    return Trained(summary(), stopped=False)


def assess(model: nn.Module, task: TaskData, train_summary: TrainSummary, measure_cfg: MeasureConfig,
           ctx: TrialContext, *, eval_batch_size: int = 256, weights_out: str | Path | None = None) -> TrialResult:
    """Evaluate, count, measure (the device held alone) and save a trained model.

    Raises:
        TrialFailedError: a phase failed; ``partial`` holds the training cost and what was evaluated.
    """
    candidate: Candidate = model.candidate  # type: ignore[assignment]
    metrics: EvalMetrics | None = None
    if isinstance(model, EncoderClassifier):
        model.keep_inference_layers_()  # candidate.infer_layers: evaluate, measure and save the kept layers only
    try:
        _progress(ctx, "evaluate")
        metrics = evaluate(model, task, batch_size=eval_batch_size, test=True)
        flops = flops_per_sample(model, measure_cfg.seq_len, task.vocab_size)
        _progress(ctx, "measure")
        inference, *others = measure_forms(model, candidate, measure_cfg, vocab_size=task.vocab_size,
                                           device=ctx.device, meter=ctx.meter, lane=ctx.lane)
        peak = torch.cuda.max_memory_allocated() if ctx.device.startswith("cuda") else None
        weights_path = None
        if weights_out is not None:
            _progress(ctx, "save")
            weights_path = str(save_trial_weights(weights_out, model, candidate, task))
    except Exception as e:
        partial = TrialResult(candidate=candidate, task=task.name, status="FAIL", metrics=metrics,
                              train=train_summary, placement=ctx.placement)
        raise _failure(e, partial) from e
    return TrialResult(
        candidate=candidate, task=task.name, status="COMPLETE", metrics=metrics, train=train_summary,
        inference=inference, params=int(sum(p.numel() for p in model.parameters())),
        size_bytes=model_size_bytes(model), flops_per_sample=flops, peak_mem_bytes=peak,
        kernels=inference.kernels, weights_path=weights_path, placement=ctx.placement, other_forms=tuple(others),
    )


def _progress(ctx: TrialContext, phase: str) -> None:
    if ctx.progress is not None:
        ctx.progress(phase, 0, 1)


def _failure(e: Exception, partial: TrialResult) -> TrialFailedError:
    """``e`` as a :class:`TrialFailedError` carrying ``partial`` (with the error as its reason).

    The reason names the device the trial was placed on. A meter or NVML failure (a GPU that fell off the
    bus, a driver gone) is the device's fault, not the candidate's: :attr:`FailKind.DEVICE`.
    """
    where = f" on {partial.placement.describe()}" if partial.placement is not None else ""
    if isinstance(e, TrialFailedError):
        reason = str(e) if not where or where[4:] in str(e) else f"{e}{where}"
        err = e
    else:
        oom = isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()
        device_fault = isinstance(e, MeterUnavailableError) or type(e).__name__.startswith("NVMLError")
        reason = f"OOM{where}: {e}" if oom else f"{type(e).__name__}{where}: {e}"
        err = TrialFailedError(
            reason, kind=FailKind.DEVICE if device_fault else None,
            fix=("lower batch_size or pick a smaller space" if oom else
                 "check the device (nvidia-smi, the kernel log for Xid errors); trials on other devices go on"
                 if device_fault and not getattr(e, "fix", None) else None))
    err.partial = dataclasses.replace(partial, error=reason[:2000])
    return err


@contextmanager
def _context(candidate: Candidate, task: str, train_cfg: TrainConfig, measure_cfg: MeasureConfig,
             progress: Progress | None, placement: Placement | None) -> Iterator[TrialContext]:
    where = placement if placement is not None else place(train_cfg.device)
    try:
        ctx = TrialContext.open(train_cfg, measure_cfg, progress, placement=where)
    except MeterUnavailableError as e:  # the placed device's meter cannot open
        raise _failure(e, TrialResult(candidate=candidate, task=task, status="FAIL", placement=where)) from e
    try:
        yield ctx
    finally:
        ctx.close()


def run_trial(
    candidate: Candidate,
    task: str,
    *,
    train_cfg: TrainConfig,
    measure_cfg: MeasureConfig,
    teacher: str | TeacherSpec | None = None,
    rungs: Sequence[int] = (),
    on_rung: OnRung | None = None,
    weights_out: str | Path | None = None,
    progress: Progress | None = None,
    placement: Placement | None = None,
    gate: Gate | None = None,
    supernet: str | Path | None = None,
) -> TrialResult:
    """Train, compress, evaluate and measure ``candidate`` on ``task``.

    Args:
        candidate: the frozen candidate.
        task: ``builtin:NAME`` or a data file/folder.
        train_cfg: brief-training budget and optimiser settings.
        measure_cfg: energy protocol settings (meter, batch, sequence length, windows).
        teacher: ``None``, ``auto``, a local Hugging Face folder, or a :class:`~nas.spec.TeacherSpec`.
            Needed when the candidate distills. A folder whose head does not fit the task is fine-tuned
            on it first (cached; progress phase ``fine-tune``; its cost is charged to this trial).
        rungs: training steps (global) at which dev accuracy is reported through ``on_rung``.
        on_rung: ``on_rung(report)`` with the accuracy and the cost so far; returning True stops training
            (the result is then ``PRUNED``, with its training cost).
        weights_out: folder to write the trained weights, candidate, tokenizer and labels to.
        progress: ``progress(phase, done, total)`` (the CLI draws a progress bar from it).
        placement: Where the trial runs (a Ray trial passes what Ray assigned); by default
            :func:`evaluators.placement.place` of ``train_cfg.device``.
        gate: Measure first: the built, compressed model is measured before any training (progress phase
            ``measure-first``; :mod:`evaluators.measure_first`) and ``gate(record)`` says why the trial
            stops there, or ``None`` to train it. The reading is kept as the result's ``first_reading``
            (its cost counts in the trial's and in every rung report); the reading after training stays
            the one of record.
        supernet: A trained supernet's file (``fidelity.kind: supernet``): the candidate is cut from it
            (:func:`evaluators.supernet.cut_`) before it trains.

    Raises:
        ConfigError: the candidate and task do not fit (e.g. distillation without a teacher).
        TrialFailedError: NaN/inf loss, out-of-memory, or a measurement that could not run; its
            ``partial`` result holds what the trial spent before it failed. Kind ``INFEASIBLE`` when
            ``gate`` stopped the trial before training: ``partial`` is its record before training.
    """
    _need_teacher(candidate, teacher)
    t_start = time.time()
    with _context(candidate, task, train_cfg, measure_cfg, progress, placement) as ctx:
        task_data, teach, model = _build(candidate, task, teacher, train_cfg, ctx, supernet)
        first = _measure_first(model, task_data, measure_cfg, ctx, gate) if gate is not None else None
        try:
            trained = train_candidate(model, task_data, train_cfg, ctx, teacher=teach, rungs=rungs,
                                      on_rung=charging_first(on_rung, first))
            if trained.stopped:
                return TrialResult(candidate=candidate, task=task_data.name, status="PRUNED",
                                   train=trained.summary, error=f"stopped early at step {trained.summary.steps}",
                                   placement=ctx.placement, first_reading=first)
            result = assess(model, task_data, trained.summary, measure_cfg, ctx,
                            eval_batch_size=train_cfg.eval_batch_size, weights_out=weights_out)
        except TrialFailedError as e:
            if e.partial is not None and first is not None:
                e.partial = dataclasses.replace(e.partial, first_reading=first)
            raise
    log.info("trial done in %.1f s: accuracy %.4f, %s", time.time() - t_start, result.accuracy,
             result.inference.meter if result.inference else "no meter")
    return dataclasses.replace(result, first_reading=first)


def _build(candidate: Candidate, task: str, teacher: str | TeacherSpec | None, train_cfg: TrainConfig,
           ctx: TrialContext, supernet: str | Path | None = None) -> tuple[TaskData, Teacher | None, nn.Module]:
    """The task (in the teacher's tokenizer), the teacher, and the model built (inherited, or cut) for them."""
    task_data = cached_task(task, train_cfg.seed, candidate.max_len)
    teach = (load_teacher_for(teacher, task_data, train_cfg.seed, ctx)
             if teacher and _needs_teacher(candidate, teacher) else None)
    if teach is not None:
        task_data = teach.adapt_task(task_data)  # students speak the teacher's tokenizer
    model = build_for_task(candidate, task_data, seed=train_cfg.seed)
    if candidate.init == "teacher" and teach is not None:
        assert isinstance(model, EncoderClassifier) and isinstance(teach.model, EncoderClassifier)
        report = inherit_(model, teach.model)
        log.info("inherited from teacher %s: %s", teach.name, report)
        if train_cfg.freeze_inherited_embeddings:
            model.tok_emb.weight.requires_grad_(False)
    if supernet is not None:
        assert isinstance(model, EncoderClassifier)
        log.info("cut from the supernet: %s", cut_(model, supernet_weights(supernet)))
    return task_data, teach, model


def _measure_first(model: nn.Module, task: TaskData, measure_cfg: MeasureConfig, ctx: TrialContext,
                   gate: Gate) -> InferenceEnergy | None:
    """The built model's reading before training; the trial stops here when ``gate`` says why.

    Raises:
        TrialFailedError: kind ``INFEASIBLE``, with the record before training (and the reason) as
            ``partial``, when ``gate`` stops the trial; or the measurement failed (``partial``: nothing spent
            but what the failure says).
    """
    _progress(ctx, "measure-first")
    candidate: Candidate = model.candidate  # type: ignore[assignment]
    try:
        before = measure_before_training(model, task, measure_cfg, device=ctx.device, meter=ctx.meter,
                                         lane=ctx.lane, placement=ctx.placement)
    except Exception as e:
        raise _failure(e, TrialResult(candidate=candidate, task=task.name, status="FAIL",
                                      placement=ctx.placement)) from e
    reason = gate(before)
    if reason is not None:
        log.info("stopped before training: %s", reason)
        raise TrialFailedError(reason, kind=FailKind.INFEASIBLE, partial=dataclasses.replace(before, error=reason))
    return before.inference


def _needs_teacher(candidate: Candidate, teacher: str | TeacherSpec | None) -> bool:
    """Whether the trial loads the teacher: it distils or inherits from it, or speaks its tokenizer.

    A self-trained (``auto``) teacher shares the task's tokenizer, so a student that neither distils nor
    inherits does not need it (loading it could mean training it).
    """
    if not teacher:
        return False
    if candidate.distill.kind != "none" or candidate.init == "teacher":
        return True
    path = teacher.path if isinstance(teacher, TeacherSpec) else teacher
    return path.strip().lower() != "auto"


def _need_teacher(candidate: Candidate, teacher: str | TeacherSpec | None) -> None:
    """Raise when the candidate distils or inherits but no teacher is given."""
    if teacher:
        return
    if candidate.distill.kind != "none":
        raise ConfigError(
            f"the candidate distills ({candidate.distill.kind!r}) but no teacher was given",
            field="teacher", fix="pass --teacher auto (a cached self-trained teacher) or a local HF folder, "
            "or set distill.kind: none",
        )
    if candidate.init == "teacher":
        raise ConfigError("the candidate starts from the teacher (init: teacher) but no teacher was given",
                          field="teacher", fix="pass --teacher DIR (a Hugging Face folder) or auto, or set init: scratch")

