"""The study's teacher, made ready once in the driver before any trial runs.

:func:`prepare_teacher` does the teacher's work once per study, in the driver process:

1. resolve the teacher: a Hugging Face folder whose head fits the task is used as it is; any other folder
   is fine-tuned on the task (:func:`evaluators.teacher_fit.resolve_teacher`, cached by content hash);
   ``auto`` trains (or loads) the service's own teacher;
2. build (or find) the teacher-outputs cache the trials distil from (:mod:`evaluators.teacher_cache`);
3. measure the teacher like a student (:func:`evaluators.pipeline.assess`: dev and test accuracy, J/sample
   under the study's protocol, meter, batch and sequence length, with a trial worker's
   ``resources.torch_threads``) and store it as the study's reference
   row (:class:`nas.reference.TeacherReference`), with what the fine-tuning and the cache cost *this*
   study (a cache hit costs nothing), so those joules count once in the study's search cost.

A resumed study keeps its stored reference: nothing is measured or charged twice. The trials then load
the resolved folder (:attr:`PreparedTeacher.path`), and the search space cuts ``init: teacher``
candidates from :attr:`PreparedTeacher.candidate`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from evaluators.pipeline import TrialContext, assess, cached_task
from evaluators.remeasure import torch_threads
from evaluators.teacher import Teacher, load_teacher
from evaluators.teacher_cache import build_or_load
from evaluators.teacher_fit import resolve_teacher
from nas.config import Candidate
from nas.records import TrainSummary
from nas.reference import TeacherReference
from nas.spec import StudySpec
from search_spaces import load_space
from storage import Store

__all__ = ["PreparedTeacher", "prepare_teacher", "ProgressBars", "progress_bars"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedTeacher:
    """What the trials need of the study's teacher.

    Attributes:
        path: What workers load: the resolved folder (fine-tuned or as given), or ``auto``.
        candidate: The teacher as a candidate (layout and shape), which ``init: teacher`` students are cut from.
        reference: The study's stored reference row.
    """

    path: str
    candidate: Candidate
    reference: TeacherReference


def prepare_teacher(spec: StudySpec, store: Store, *, progress: bool = False) -> PreparedTeacher | None:
    """Resolve, cache and measure the study's teacher once; ``None`` when the study has none.

    Args:
        spec: The study.
        store: Where the reference row goes (and where a resumed study's reference is read from).
        progress: Draw progress bars for the fine-tuning and the cache build (the CLI).
    """
    if spec.teacher is None:
        return None
    space = load_space(spec.space.preset, spec.space.overrides)
    task = cached_task(spec.task, spec.train.seed, space.max_len)
    with TrialContext.open(spec.train, spec.measure) as ctx, progress_bars(progress) as bars:
        resolved = resolve_teacher(spec.teacher, task, seed=spec.train.seed, device=ctx.device, meter=ctx.meter,
                                   progress=bars.callback("fine-tuning the teacher"))
        assert resolved is not None
        teacher = load_teacher(resolved.path, task, seed=spec.train.seed, device=ctx.device, meter=ctx.meter)
        assert teacher is not None
        task_t = teacher.adapt_task(task)
        outputs = None
        if space.uses_distillation:
            outputs = build_or_load(teacher, task_t, needs_hidden=space.needs_teacher_hidden,
                                    needs_attention=space.needs_teacher_attention,
                                    batch_size=spec.train.eval_batch_size, device=ctx.device, meter=ctx.meter,
                                    progress=bars.callback("caching the teacher's outputs"))
        stored = store.teacher_reference(spec.name)
        if stored is not None:
            log.info("teacher: the study's reference %s is kept (measured before)", stored.name)
            return PreparedTeacher(resolved.path, _candidate(teacher), stored)
        with torch_threads(spec.resources.torch_threads):  # measured as a trial is: same intra-op threads
            result = assess(teacher.model, task_t, _no_training(ctx), spec.measure, ctx,
                            eval_batch_size=spec.train.eval_batch_size)
    fitted = resolved.fitted
    ref = TeacherReference(name=teacher.name, source=resolved.source, result=result,
                           fine_tune=(fitted.training if fitted is not None else None) or teacher.take_training(),
                           cache_build=outputs.take_build_cost() if outputs is not None else None)
    store.put_teacher_reference(spec.name, ref)
    log.info("teacher %s: dev accuracy %s, %s J/sample (%s)", ref.name, ref.dev_accuracy,
             ref.energy_per_sample_j, ref.meter)
    return PreparedTeacher(resolved.path, _candidate(teacher), ref)




def _candidate(teacher: Teacher) -> Candidate:
    cand = getattr(teacher.model, "candidate", None)
    assert isinstance(cand, Candidate)
    return cand


def _no_training(ctx: TrialContext) -> TrainSummary:
    """The reference's own ``train`` field: measuring the teacher trains nothing."""
    return TrainSummary(steps=0, wall_s=0.0, final_loss=float("nan"), energy_j=0.0, meter=ctx.meter.name,
                        is_estimate=ctx.meter.is_estimate, device=ctx.device)


class ProgressBars:
    """Rich progress bars for the driver's teacher work, or silent callbacks."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress

    def callback(self, what: str) -> Callable[[int, int], None] | None:
        """``callback(done, total)`` advancing a new bar named ``what``; None when silent."""
        bars = self.progress
        if bars is None:
            return None
        task_id = bars.add_task(what, total=None)

        def advance(done: int, total: int) -> None:
            bars.update(task_id, completed=done, total=total)

        return advance


@contextmanager
def progress_bars(show: bool) -> Iterator[ProgressBars]:
    """Rich progress bars for the driver's long work (``show``), or silent callbacks."""
    if not show:
        yield ProgressBars(None)
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), transient=False) as bars:
        yield ProgressBars(bars)
