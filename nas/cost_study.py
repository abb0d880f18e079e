"""The cost model of a stored study: fitted per hardware fingerprint on its COMPLETE trials (layer L3).

:mod:`nas.cost_model` is the model; this module feeds it from :class:`storage.BaseStorage` records, each
trial's candidate profiled by :mod:`nas.cost_inputs` at the shape its reading was taken at (cached):

* :func:`study_observations` (:func:`group_observations` of any trial records): every COMPLETE trial with an
  inference reading, grouped by hardware fingerprint and meter (readings of different devices or meters are
  never mixed);
* :func:`fit_study`: the model of one group (``hardware`` picks it when the study has several);
* :func:`predict_candidate`: ``nas predict-cost``: a new candidate's J/sample and latency, at the study's
  measurement shape, and whether it breaks a study constraint with high confidence;
* :func:`trial_check`: ``nas show STUDY TRIAL``: a stored trial predicted by a model fitted on the study's
  other trials of its hardware, beside what was measured;
* :func:`study_cross_validation`: k-fold held-out errors (the dashboard and ``benchmarks/cost_model.py``).
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from nas.config import Candidate
from nas.cost_inputs import candidate_inputs
from nas.cost_model import (
    DEFAULT_CONFIDENCE,
    MIN_TRIALS,
    TARGETS,
    CostInputs,
    CostModel,
    CostModelError,
    CostObservation,
    CostPrediction,
    CrossValidation,
    cross_validate,
    predicted_infeasible,
)
from nas.errors import NASError
from storage import BaseStorage, TrialView

__all__ = ["GroupKey", "trial_observation", "group_observations", "study_observations",
           "fit_study", "StudyPrediction", "predict_candidate", "TrialCheck", "trial_check",
           "study_cross_validation"]

log = logging.getLogger(__name__)

#: ``(hardware fingerprint, meter, is_estimate)``: the readings one model is fitted on.
GroupKey = tuple[str, str, bool]


def trial_observation(view: TrialView) -> tuple[GroupKey, CostObservation] | None:
    """A COMPLETE trial's inputs (profiled at its reading's shape) and measured values, keyed by its group.

    ``None`` without an inference reading, or when the candidate cannot be profiled (logged).
    """
    result = view.result
    if view.state != "COMPLETE" or result is None or result.inference is None or view.candidate is None:
        return None
    inf = result.inference
    try:
        inputs = candidate_inputs(view.candidate, batch_size=inf.batch_size, seq_len=inf.seq_len)
    except (NASError, RuntimeError, ValueError) as e:  # a candidate this build cannot profile is left out
        log.warning("trial %s of %s left out of the cost model: its candidate could not be profiled (%s)",
                    view.number, view.study, e)
        return None
    objectives = result.objectives()
    key = (inf.provenance.hardware_fingerprint, inf.meter, inf.is_estimate)
    return key, CostObservation(inputs=inputs, measured={t: objectives.get(t) for t in TARGETS}, trial=view.number)


def group_observations(views: Iterable[TrialView]) -> dict[GroupKey, list[CostObservation]]:
    """The COMPLETE trials of ``views`` with an inference reading, by (hardware, meter, is_estimate)."""
    groups: dict[GroupKey, list[CostObservation]] = collections.defaultdict(list)
    for view in views:
        found = trial_observation(view)
        if found is not None:
            groups[found[0]].append(found[1])
    return dict(groups)


def study_observations(store: BaseStorage, study: str) -> dict[GroupKey, list[CostObservation]]:
    """The study's COMPLETE trials with an inference reading, by (hardware, meter, is_estimate)."""
    return group_observations(store.trials(study, states=["COMPLETE"]))


def _pick(groups: dict[GroupKey, list[CostObservation]], study: str, hardware: str | None) -> GroupKey:
    keys = [k for k in groups if hardware is None or k[0] == hardware]
    shown = ", ".join(f"{h!r} (meter {m}, {len(groups[(h, m, e)])} trials)" for h, m, e in groups) or "none"
    if not keys:
        what = f"on hardware {hardware!r}" if hardware is not None else "with an inference reading"
        raise CostModelError(f"study {study!r} has no COMPLETE trial {what} (hardware: {shown}); the cost model "
                             f"needs at least {MIN_TRIALS}", field="--hardware" if hardware else None,
                             fix="pass --hardware with one of those fingerprints, or run trials on it first")
    # several meters on one device: the one with the most readings (their joules are not comparable)
    keys.sort(key=lambda k: -len(groups[k]))
    if hardware is None and len({k[0] for k in keys}) > 1:
        raise CostModelError(f"study {study!r} has trials on several hardware fingerprints ({shown})",
                             field="--hardware", fix="pass --hardware with one of them: one model per hardware")
    return keys[0]


def _group(store: BaseStorage, study: str, hardware: str | None) -> tuple[GroupKey, list[CostObservation]]:
    groups = study_observations(store, study)
    key = _pick(groups, study, hardware)
    return key, groups[key]


def fit_study(store: BaseStorage, study: str, *, hardware: str | None = None,
              exclude: Sequence[int] = ()) -> CostModel:
    """The cost model of ``study``'s trials on ``hardware`` (the only hardware when ``None``).

    Args:
        store: The database.
        study: The study name.
        hardware: A hardware fingerprint (``nas pareto`` shows them); required when there are several.
        exclude: Trial numbers left out of the fit (a trial predicted by the others).

    Raises:
        CostModelError: No such hardware, several without ``hardware``, or fewer than :data:`MIN_TRIALS`
            trials to fit on.
        StorageError: Unknown study.
    """
    key, rows = _group(store, study, hardware)
    skip = set(exclude)
    return CostModel.fit([o for o in rows if o.trial not in skip], hardware=key[0], meter=key[1],
                         is_estimate=key[2])


def _study_shape(store: BaseStorage, study: str) -> tuple[int, int]:
    measure = store.get_study(study).spec.get("measure") or {}
    return int(measure.get("batch_size", 32)), int(measure.get("seq_len", 64))


def _constraints(store: BaseStorage, study: str) -> list[str]:
    return list(store.get_study(study).spec.get("constraints") or [])


@dataclass(frozen=True)
class StudyPrediction:
    """``nas predict-cost``'s answer: the model, what it read and what it predicts.

    Attributes:
        study: The study whose trials it was fitted on.
        model: The fitted model (its hardware, meter and trial counts).
        inputs: The candidate, its counted FLOPs and the measurement shape.
        predictions: Each target's prediction.
        infeasible: Why the candidate breaks a study constraint with high confidence, else ``None``.
        constraints: The study's constraints.
        held_out: The model's k-fold cross-validation on the study's trials it was fitted on, when asked for.
    """

    study: str
    model: CostModel
    inputs: CostInputs
    predictions: dict[str, CostPrediction]
    infeasible: str | None
    constraints: tuple[str, ...]
    held_out: CrossValidation | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {"study": self.study, "hardware": self.model.hardware, "meter": self.model.meter,
                "is_estimate": self.model.is_estimate, "fitted_on_trials": dict(self.model.n_trials),
                "candidate": self.inputs.candidate.model_dump(mode="json"),
                "flops_per_sample": self.inputs.flops_per_sample, "batch_size": self.inputs.batch_size,
                "seq_len": self.inputs.seq_len, "constraints": list(self.constraints),
                "predicted_infeasible": self.infeasible,
                "predictions": {k: v.to_dict() for k, v in self.predictions.items()},
                "held_out": ({k: dict(v) for k, v in self.held_out.summary.items()} | {"folds": self.held_out.folds}
                             if self.held_out is not None else None)}


def predict_candidate(store: BaseStorage, study: str, candidate: Candidate, *, hardware: str | None = None,
                      batch_size: int | None = None, seq_len: int | None = None,
                      confidence: float = DEFAULT_CONFIDENCE, held_out: bool = False) -> StudyPrediction:
    """Predict ``candidate``'s J/sample and latency on ``hardware`` from ``study``'s trials there.

    The candidate is built and profiled on the CPU (:mod:`nas.cost_inputs`). The measurement shape defaults to
    the study's (``measure.batch_size``, ``measure.seq_len``). With
    ``held_out``, the model's 5-fold cross-validated error on those trials comes with the answer.

    Raises:
        CostModelError: See :func:`fit_study`.
        StorageError: Unknown study.
    """
    key, rows = _group(store, study, hardware)
    model = CostModel.fit(rows, hardware=key[0], meter=key[1], is_estimate=key[2])
    default_batch, default_seq = _study_shape(store, study)
    inputs = candidate_inputs(candidate, batch_size=batch_size or default_batch, seq_len=seq_len or default_seq)
    constraints = tuple(_constraints(store, study))
    report = cross_validate(rows, hardware=key[0], meter=key[1], is_estimate=key[2],
                            confidence=confidence) if held_out else None
    return StudyPrediction(study=study, model=model, inputs=inputs,
                           predictions=model.predict(inputs, confidence=confidence),
                           infeasible=predicted_infeasible(model, inputs, constraints, confidence=confidence),
                           constraints=constraints, held_out=report)


@dataclass(frozen=True)
class TrialCheck:
    """A stored trial's measured J/sample and latency beside a prediction by a model that never saw it.

    Attributes:
        trial: The trial number.
        model: The model, fitted on the study's other trials of the same hardware and meter.
        measured: Each target's measured value (``None`` where not measured).
        predictions: Each target's prediction.
    """

    trial: int
    model: CostModel
    measured: dict[str, float | None]
    predictions: dict[str, CostPrediction]

    def error(self, target: str) -> float | None:
        """``(predicted - measured) / measured`` of ``target``; ``None`` without a measured value."""
        value = self.measured.get(target)
        return (self.predictions[target].median - value) / value if value else None


def trial_check(store: BaseStorage, study: str, number: int) -> TrialCheck | None:
    """Trial ``number`` predicted by a model of the study's other trials on its hardware and meter.

    Returns:
        The check; ``None`` when the trial has no inference reading.

    Raises:
        CostModelError: Fewer than :data:`MIN_TRIALS` other trials of its hardware and meter.
    """
    found = trial_observation(store.trial(study, number))
    if found is None:
        return None
    (hardware, meter, estimate), obs = found
    others = [o for o in study_observations(store, study).get(found[0], []) if o.trial != number]
    model = CostModel.fit(others, hardware=hardware, meter=meter, is_estimate=estimate)
    return TrialCheck(trial=number, model=model, measured=dict(obs.measured), predictions=model.predict(obs.inputs))


def study_cross_validation(store: BaseStorage, study: str, *, folds: int = 5, hardware: str | None = None,
                           confidence: float = DEFAULT_CONFIDENCE) -> list[CrossValidation]:
    """k-fold held-out predictions of the study's trials, one report per hardware and meter with enough trials.

    Groups with fewer than :data:`MIN_TRIALS` trials are left out.
    """
    out = []
    for (hw, meter, estimate), rows in sorted(study_observations(store, study).items()):
        if (hardware is not None and hw != hardware) or len(rows) < MIN_TRIALS:
            continue
        out.append(cross_validate(rows, hardware=hw, meter=meter, is_estimate=estimate, folds=folds,
                                  confidence=confidence))
    return out
