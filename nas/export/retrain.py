"""``--retrain STEPS``: train the chosen candidate longer, then re-measure accuracy and energy.

With saved weights, training continues from them for ``STEPS`` more optimizer steps (a fresh warmup and
cosine schedule, the study's optimiser settings, its teacher when the candidate distills). Without them,
the candidate is trained from scratch for ``STEPS`` steps by :func:`evaluators.pipeline.run_trial`, with
the same dense-then-compress schedule as the search. Either way the result is a new
:class:`~nas.records.TrialResult` measured with the study's own protocol (``spec.measure``), so the final
numbers are comparable with the search-time ones, which stay in the database untouched.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from pathlib import Path
from typing import Any

from evaluators.pipeline import TrialContext, assess, load_teacher_for, run_trial, train_candidate
from nas.config import Candidate
from nas.errors import ConfigError
from nas.records import TrialResult
from nas.spec import StudySpec

from .source import SavedWeights, load_weights

__all__ = ["retrain_from_scratch", "continue_training"]

log = logging.getLogger(__name__)


def retrain_from_scratch(candidate: Candidate, spec: StudySpec, steps: int) -> tuple[SavedWeights, TrialResult]:
    """Train ``candidate`` from scratch for ``steps`` steps on the study's task and measure it."""
    cfg = spec.train.model_copy(update={"steps": steps, "max_seconds": None})
    with tempfile.TemporaryDirectory(prefix="nas-retrain-") as tmp:
        result = run_trial(candidate, spec.task, train_cfg=cfg, measure_cfg=spec.measure, teacher=spec.teacher,
                           weights_out=Path(tmp) / "weights")
        saved = load_weights(Path(tmp) / "weights", candidate)
    return saved, _without_weights_path(result)


def _without_weights_path(result: TrialResult) -> TrialResult:
    return dataclasses.replace(result, weights_path=None)


def continue_training(saved: SavedWeights, candidate: Candidate, spec: StudySpec, task: Any,
                      steps: int) -> TrialResult:
    """Train the loaded model ``steps`` more steps in place, then evaluate and measure it.

    This goes through the search's own pipeline (:func:`evaluators.pipeline.train_candidate` and
    :func:`~evaluators.pipeline.assess`).

    Raises:
        ConfigError: The candidate distills but the study names no teacher.
        TrialFailedError: NaN loss, or the measurement could not run.
    """
    if candidate.distill.kind != "none" and not spec.teacher:
        raise ConfigError("the candidate distills but the study spec names no teacher", field="teacher",
                          fix="set teacher in the study spec, or export without --retrain")
    # A new seed so the extra steps see batches in a new order rather than replaying the search's.
    cfg = spec.train.model_copy(update={"steps": steps, "max_seconds": None, "seed": spec.train.seed + 1})
    with TrialContext.open(cfg, spec.measure) as ctx:
        teacher = (load_teacher_for(spec.teacher, task, spec.train.seed, ctx)
                   if candidate.distill.kind != "none" and spec.teacher else None)
        saved.model.train()
        trained = train_candidate(saved.model, task, cfg, ctx, teacher=teacher)
        return assess(saved.model, task, trained.summary, spec.measure, ctx,
                      eval_batch_size=spec.train.eval_batch_size)
