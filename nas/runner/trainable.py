"""What a Ray worker runs for one trial.

Train (with accuracy rungs reported to Tune), compress, measure, and report one final record. Workers never
touch the database: the result travels back to the driver as a :class:`~nas.runner.protocol.TrialReport`.
Weights go to a staging folder that only the driver moves into place.

In a study that measures first (:func:`measure_first_rule`), the trial measures its built, compressed model
before training and reports ``FAIL`` of kind ``INFEASIBLE`` at once, with that reading and its reason, when a
study constraint excludes it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import traceback
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import ray
import torch
from ray import tune

from evaluators.pipeline import run_trial
from evaluators.placement import place
from nas.config import Candidate
from nas.errors import ConfigError, NASError, TrialFailedError
from nas.feasibility import MeasureFirst
from nas.records import FailKind, RungReport, TrialResult
from nas.runner.protocol import TrialConfig, TrialReport
from nas.runner.supernet_prep import supernet_file
from nas.spec import StudySpec
from nas.where import compile_where

log = logging.getLogger(__name__)

#: Chaos hooks for tests and drills: ``--where`` expressions over ``Candidate.flat()``. Matching
#: candidates fail on purpose (``NAS_FAIL_IF='d_model == 96'``) or their worker process is killed
#: with SIGKILL (``NAS_KILL_IF``), as an OOM killer would, at the phase named by ``NAS_FAULT_AT``:
#: ``start`` (before any work; the default for kills) or one of the pipeline's progress phases,
#: ``evaluate`` (after training: the default for failures, so a failed trial has joules to count),
#: ``measure`` or ``save``.
FAIL_IF_ENV = "NAS_FAIL_IF"
KILL_IF_ENV = "NAS_KILL_IF"
FAULT_AT_ENV = "NAS_FAULT_AT"


def _matches(env: str, candidate: Candidate) -> bool:
    expr = os.environ.get(env)
    if not expr:
        return False
    flat = candidate.flat()
    return bool(compile_where(expr, list(flat))(flat))


def fault_hook(candidate: Candidate) -> Callable[[str], None]:
    """``hook(phase)``: kills or fails this trial at its phase when a chaos variable matches it."""
    at = os.environ.get(FAULT_AT_ENV)
    kill_at = (at or "start") if _matches(KILL_IF_ENV, candidate) else None
    fail_at = (at or "evaluate") if _matches(FAIL_IF_ENV, candidate) else None

    def hook(phase: str) -> None:
        if phase == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        if phase == fail_at:
            raise TrialFailedError(f"injected fault ({FAIL_IF_ENV}={os.environ[FAIL_IF_ENV]!r})")

    return hook


def measure_first_rule(spec: StudySpec) -> MeasureFirst | None:
    """The study's measure-first rule (``fidelity.measure_first``), or ``None`` when its trials train at once.

    Raises:
        ConfigError: ``measure_first: true`` in a study none of whose constraints can be judged before training.
    """
    return MeasureFirst.for_study(spec.constraints, setting=spec.fidelity.measure_first,
                                  margin=spec.fidelity.measure_first_margin)


def run_one(config: dict[str, Any], spec: StudySpec, report: Callable[[dict[str, Any]], None],
            artefacts_dir: str | None = None, gpu_ids: Sequence[Any] | None = None) -> TrialReport:
    """Evaluate one candidate.

    ``report(metrics)`` sends a Tune dict to the driver; the final report is also returned. ``gpu_ids``
    are the GPUs Ray assigned (``ray.get_gpu_ids()``; None outside Ray): the trial is placed on them
    (:func:`evaluators.placement.place`).
    """
    torch.set_num_threads(spec.resources.torch_threads)
    trial = TrialConfig.from_tune(config)

    def on_rung(rung: RungReport) -> bool:
        report(TrialReport(status="RUNNING", step=rung.step, rung=rung).to_tune())
        return False  # Tune's scheduler, not the worker, decides whether to stop

    step = spec.fidelity.max_steps
    try:
        fault = fault_hook(trial.candidate)
        fault("start")
        try:
            placement = place(spec.train.device, ray_gpu_ids=gpu_ids)
        except ConfigError as e:  # the node, not the candidate: e.g. a GPU assigned where torch has no CUDA
            raise TrialFailedError(f"cannot place the trial: {e}", kind=FailKind.DEVICE) from e
        train_cfg = spec.fidelity.trial_train(spec.train)
        rule = measure_first_rule(spec)
        result = run_trial(
            trial.candidate, spec.task, train_cfg=train_cfg, measure_cfg=spec.measure, teacher=spec.teacher,
            rungs=spec.fidelity.rungs[:-1] if spec.fidelity.early_stopping else [], on_rung=on_rung,
            weights_out=(os.path.join(artefacts_dir, staging_name(trial.number))
                         if artefacts_dir and spec.storage.retention != "none" else None),
            progress=lambda phase, _d, _t: fault(phase), placement=placement,
            gate=rule.gate if rule is not None else None,
            supernet=supernet_file(artefacts_dir) if artefacts_dir and spec.fidelity.kind == "supernet" else None,
        )
        final = _final(result, spec)
    except (NASError, FloatingPointError, RuntimeError, ValueError) as e:
        partial = getattr(e, "partial", None)
        reason = partial.error if partial is not None and partial.error else f"{type(e).__name__}: {e}"
        kind = (e.kind if isinstance(e, TrialFailedError) else None) or FailKind.CANDIDATE
        log.info("trial %d failed: %s", trial.number, reason)
        final = TrialReport(status="FAIL", step=0 if kind is FailKind.INFEASIBLE else step, result=partial,
                            error=reason[:2000], fail_kind=kind, traceback=traceback.format_exc()[-4000:])
    report(final.to_tune())
    return final


def staging_name(number: int) -> str:
    """The folder a worker writes a trial's weights to.

    The driver moves it into place when it stores the trial, so a worker that outlived its trial cannot put
    files where a closed trial's would be.
    """
    return f".staging/trial_{number:05d}-{uuid.uuid4().hex[:8]}"


def _final(result: TrialResult, spec: StudySpec) -> TrialReport:
    """The final report of a trial that ran to the end: COMPLETE only with every objective known."""
    if result.status != "COMPLETE":
        return TrialReport(status=result.status, step=spec.fidelity.max_steps, result=result, error=result.error,
                           fail_kind=FailKind.CANDIDATE if result.status == "FAIL" else None)
    values = result.objectives()
    missing = [m for m in spec.objective_names if values.get(m) is None]
    if missing:
        reason = (f"objective(s) {', '.join(missing)} could not be computed for this candidate "
                  f"(meter {result.inference.meter if result.inference else 'none'})")
        failed = dataclasses.replace(result, status="FAIL", error=reason)
        return TrialReport(status="FAIL", step=spec.fidelity.max_steps, result=failed, error=reason,
                           fail_kind=FailKind.CANDIDATE)
    return TrialReport(status="COMPLETE", step=spec.fidelity.max_steps, result=result,
                       objectives={m: float(values[m]) for m in spec.objective_names})  # type: ignore[arg-type]


def tune_trainable(config: dict[str, Any], spec_json: str, artefacts_dir: str | None = None) -> None:
    """The Ray Tune function trainable (wrapped with ``tune.with_parameters``)."""
    spec = StudySpec.model_validate_json(spec_json)
    run_one(config, spec, tune.report, artefacts_dir, gpu_ids=ray.get_gpu_ids())
