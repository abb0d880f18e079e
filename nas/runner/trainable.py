"""What a Ray worker runs for one trial: train (with accuracy rungs reported to Tune), compress,
measure, and report one final record. Workers never touch the database: the result travels back to
the driver as JSON inside the final report.
"""

from __future__ import annotations

import logging
import os
import traceback
from typing import Any

from nas.config import Candidate
from nas.errors import NASError, TrialFailedError
from nas.spec import StudySpec

log = logging.getLogger(__name__)

#: Chaos hooks for tests and drills: ``--where`` expressions over ``Candidate.flat()``. Matching
#: candidates fail on purpose (``NAS_FAIL_IF='d_model == 96'``) or their worker process is killed
#: with SIGKILL (``NAS_KILL_IF``), as an OOM killer would.
FAIL_IF_ENV = "NAS_FAIL_IF"
KILL_IF_ENV = "NAS_KILL_IF"


def _matches(env: str, candidate: Candidate) -> bool:
    expr = os.environ.get(env)
    if not expr:
        return False
    from nas.where import compile_where

    flat = candidate.flat()
    return bool(compile_where(expr, list(flat))(flat))


def _maybe_inject_fault(candidate: Candidate) -> None:
    if _matches(KILL_IF_ENV, candidate):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
    if _matches(FAIL_IF_ENV, candidate):
        raise TrialFailedError(f"injected fault ({FAIL_IF_ENV}={os.environ[FAIL_IF_ENV]!r})")


def run_one(config: dict[str, Any], spec: StudySpec, report: Any, artefacts_dir: str | None = None) -> dict[str, Any]:
    """Evaluate one candidate. ``report(metrics) -> None`` sends metrics to the driver (Tune)."""
    import torch

    from evaluators.pipeline import run_trial

    torch.set_num_threads(spec.resources.torch_threads)
    candidate = Candidate.model_validate_json(config["candidate_json"])
    number = int(config["optuna_number"])

    def on_rung(step: int, accuracy: float) -> bool:
        report({"step": step, "rung_accuracy": accuracy, "status": "RUNNING"})
        return False  # Tune's scheduler, not the worker, decides whether to stop

    try:
        _maybe_inject_fault(candidate)
        train_cfg = spec.train.model_copy(update={"steps": spec.fidelity.max_steps})
        result = run_trial(
            candidate,
            spec.task,
            train_cfg=train_cfg,
            measure_cfg=spec.measure,
            teacher=spec.teacher,
            rungs=spec.fidelity.rungs[:-1] if spec.fidelity.enabled else [],
            on_rung=on_rung,
            weights_out=(os.path.join(artefacts_dir, f"trial_{number:05d}")
                         if artefacts_dir and spec.storage.retention != "none" else None),
        )
    except (NASError, FloatingPointError, RuntimeError, ValueError) as e:
        reason = f"{type(e).__name__}: {e}"
        if isinstance(e, RuntimeError) and "out of memory" in str(e).lower():
            reason = f"OOM: {e}"
        log.info("trial %d failed: %s", number, reason)
        final = {"status": "FAIL", "error": reason[:2000], "step": spec.fidelity.max_steps,
                 "traceback": traceback.format_exc()[-4000:]}
        report(final)
        return final
    if result.status != "COMPLETE":
        final = {"status": result.status, "error": result.error, "step": spec.fidelity.max_steps,
                 "trial_result_json": _dumps(result.to_dict())}
        report(final)
        return final
    objectives = result.objectives()
    final = {"status": "COMPLETE", "step": spec.fidelity.max_steps, "rung_accuracy": result.accuracy,
             "trial_result_json": _dumps(result.to_dict()), **{k: v for k, v in objectives.items() if v is not None}}
    report(final)
    return final


def _dumps(d: dict[str, Any]) -> str:
    import json

    return json.dumps(d, default=str)


def tune_trainable(config: dict[str, Any], spec_json: str, artefacts_dir: str | None = None) -> None:
    """The Ray Tune function trainable (wrapped with ``tune.with_parameters``)."""
    from ray import tune

    spec = StudySpec.model_validate_json(spec_json)
    run_one(config, spec, tune.report, artefacts_dir)
