"""The study's teacher, made ready once in the driver before any trial runs.

:func:`prepare_teacher` does the teacher's work once per study, in the driver process:

1. resolve the teacher: a Hugging Face folder whose head fits the task is used as it is; any other folder
   is fine-tuned on the task (:func:`evaluators.teacher_fit.resolve_teacher`, cached by content hash);
   ``auto`` trains (or loads) the service's own teacher;
2. build (or find) the teacher-outputs cache the trials distil from (:mod:`evaluators.teacher_cache`);
3. measure the teacher like a student (:func:`evaluators.pipeline.assess`: dev and test accuracy, J/sample
   under the study's protocol, meter, batch and sequence length) and store it as the study's reference
   row (:class:`nas.reference.TeacherReference`), with what the fine-tuning and the cache cost *this*
   study (a cache hit costs nothing), so those joules count once in the study's search cost.

A resumed study keeps its stored reference: nothing is measured or charged twice. The trials then load
the resolved folder (:attr:`PreparedTeacher.path`), and the search space cuts ``init: teacher``
candidates from :attr:`PreparedTeacher.candidate`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from evaluators.pipeline import TrialContext, assess, cached_task
from evaluators.teacher import Teacher, load_teacher
from evaluators.teacher_cache import build_or_load
from evaluators.teacher_fit import resolve_teacher
from nas.config import Candidate
from nas.records import TrainSummary
from nas.reference import TeacherReference
from nas.spec import StudySpec
from search_spaces import SearchSpace, load_space
from storage import Store

__all__ = ["PreparedTeacher", "prepare_teacher"]

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


def prepare_teacher(spec: StudySpec, store: Store) -> PreparedTeacher | None:
    """Resolve, cache and measure the study's teacher once; ``None`` when the study has none."""
    if spec.teacher is None:
        return None
    space = load_space(spec.space.preset, spec.space.overrides)
    task = cached_task(spec.task, spec.train.seed, space.max_len)
    with TrialContext.open(spec.train, spec.measure) as ctx:
        resolved = resolve_teacher(spec.teacher, task, seed=spec.train.seed, device=ctx.device, meter=ctx.meter)
        teacher = load_teacher(str(resolved.folder), task, seed=spec.train.seed, device=ctx.device)
        assert teacher is not None
        task_t = teacher.adapt_task(task)
        stored = store.teacher_reference(spec.name)
        outputs = _outputs(teacher, task_t, space, spec, ctx)
        if stored is not None:
            log.info("teacher: the study's reference %s is kept (measured before)", stored.name)
            return PreparedTeacher(str(resolved.folder), _candidate(teacher), stored)
        result = assess(teacher.model, task_t, _no_training(ctx), spec.measure, ctx,
                        eval_batch_size=spec.train.eval_batch_size)
    ref = TeacherReference(name=teacher.name, source=spec.teacher.path, result=result,
                           fine_tune=resolved.training or teacher.take_training(),
                           cache_build=outputs.take_build_cost() if outputs is not None else None)
    store.put_teacher_reference(spec.name, ref)
    log.info("teacher %s: dev accuracy %.4f, %s J/sample (%s)", ref.name, ref.dev_accuracy or float("nan"),
             ref.energy_per_sample_j, ref.meter)
    return PreparedTeacher(str(resolved.folder), _candidate(teacher), ref)


def _candidate(teacher: Teacher) -> Candidate:
    cand = getattr(teacher.model, "candidate", None)
    assert isinstance(cand, Candidate)
    return cand


def _outputs(teacher: Teacher, task: object, space: SearchSpace, spec: StudySpec, ctx: TrialContext) -> object:
    if not any(d != "none" for d in space.distill):
        return None
    return build_or_load(teacher, task, needs_hidden=space.needs_teacher_hidden,
                         needs_attention=space.needs_teacher_attention, batch_size=spec.train.eval_batch_size,
                         device=ctx.device, meter=ctx.meter)


def _no_training(ctx: TrialContext) -> TrainSummary:
    """The reference's own ``train`` field: the teacher is not trained by the measurement."""
    return TrainSummary(steps=0, wall_s=0.0, final_loss=float("nan"), energy_j=0.0, meter=ctx.meter.name,
                        is_estimate=ctx.meter.is_estimate, device=ctx.device)
