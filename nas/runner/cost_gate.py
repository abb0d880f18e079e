"""Predict, then skip: a sampled candidate the study's cost model says is infeasible is never built.

Issue #16: the learned cost model (:mod:`nas.cost_model`) predicts a candidate's J/sample and latency from a
profile of its served form (:mod:`nas.cost_inputs`, a fraction of a second on the CPU). A :class:`CostGate`
asks it, in the driver, about every candidate the sampler proposes; one predicted to break a study constraint
with high confidence (:func:`nas.cost_model.predicted_broken` at ``fidelity.predict_skip_confidence``) comes
back as a :class:`PredictedSkip`, and :meth:`nas.runner.searcher.NASOptunaSearch.suggest` records it ``FAIL``
(kind ``infeasible``) without building, training or measuring it.

The gate never skips

* until the study has :data:`~nas.cost_model.MIN_TRIALS` COMPLETE trials with an inference reading;
* when those readings come from more than one hardware fingerprint or meter (their joules are not comparable,
  and the candidate's own hardware is not known before it runs);
* when the model cannot be fitted or the candidate cannot be profiled (logged; the candidate is built).

The model is fitted on the study's COMPLETE trials (:func:`nas.cost_study.study_observations`) and refitted
only when their count changes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nas.config import Candidate
from nas.cost_inputs import candidate_inputs
from nas.cost_model import MIN_TRIALS, CostModel, infeasible_reason, predictable, predicted_broken
from nas.cost_study import study_observations
from nas.errors import ConfigError, NASError
from nas.spec import StudySpec

if TYPE_CHECKING:  # the writer needs Ray, which `nas search`'s checks must not import
    from nas.runner.writer import StoreHandle

__all__ = ["PredictedSkip", "CostGate", "skip_constraints"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PredictedSkip:
    """Why a candidate is not built.

    Attributes:
        reason: ``predicted infeasible with 98% confidence by the cost model of HW (meter M, ESTIMATE): breaks
            ...; not built ...``: stored as the trial's fail reason.
        constraints: ``{constraint: 1.0}`` for each study constraint predicted broken (Optuna's convention:
            > 0 is not met); the others are unknown and left out.
    """

    reason: str
    constraints: Mapping[str, float]


def skip_constraints(spec: StudySpec) -> tuple[str, ...]:
    """The constraints the study's cost gate judges (``fidelity.predict_skip``); empty when it is off.

    ``false`` turns it off; ``auto`` on when a constraint is :func:`~nas.cost_model.predictable` (it reads a
    predicted J/sample or p50 latency); ``true`` asks for it.

    Raises:
        ConfigError: ``predict_skip: true`` but no constraint is predictable, or a constraint does not parse.
    """
    setting = spec.fidelity.predict_skip
    if setting is False:
        return ()
    usable = tuple(c for c in spec.constraints if predictable(c))
    if not usable and setting is True:
        raise ConfigError(
            "fidelity.predict_skip is true, but no constraint reads a value the cost model predicts "
            f"(constraints: {list(spec.constraints) or 'none'})", field="fidelity.predict_skip", value=True,
            fix="add a constraint on energy_per_sample_j or latency_p50_ms (e.g. energy_per_sample_j < 0.002), "
            "or set fidelity.predict_skip: auto")
    return usable


class CostGate:
    """``gate(candidate)``: a :class:`PredictedSkip` when the study's cost model says not to build it, else None.

    Picklable (Tune pickles the searcher that holds it): the store travels as a :class:`StoreHandle`, and the
    fitted model is left behind and fitted again on first use.

    Args:
        handle: The study's store.
        constraints: The constraints to judge (:func:`skip_constraints`).
        batch_size: The study's measurement batch size (``measure.batch_size``): the shape a trial is measured at.
        seq_len: The study's measurement sequence length (``measure.seq_len``).
        confidence: ``fidelity.predict_skip_confidence``.
    """

    def __init__(self, handle: StoreHandle, constraints: Sequence[str], *, batch_size: int, seq_len: int,
                 confidence: float) -> None:
        self.handle = handle
        self.constraints = tuple(constraints)
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.confidence = confidence
        self._complete: int | None = None  # COMPLETE trials at the last look
        self._fitted_on: int | None = None  # observations the cached model was fitted on
        self._model: CostModel | None = None

    @classmethod
    def for_study(cls, spec: StudySpec, handle: StoreHandle) -> CostGate | None:
        """The study's gate, or None when ``fidelity.predict_skip`` resolves off (see :func:`skip_constraints`)."""
        constraints = skip_constraints(spec)
        if not constraints:
            return None
        return cls(handle, constraints, batch_size=spec.measure.batch_size, seq_len=spec.measure.seq_len,
                   confidence=spec.fidelity.predict_skip_confidence)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_complete": None, "_fitted_on": None, "_model": None}

    def model(self) -> CostModel | None:
        """The study's cost model now; None while it cannot judge (see the module docstring)."""
        complete = self.handle.store.get_study(self.handle.study).n_trials_complete
        if complete == self._complete:
            return self._model
        self._complete = complete
        if complete < MIN_TRIALS:
            self._model = self._fitted_on = None
            return None
        groups = study_observations(self.handle.store, self.handle.study)
        if len(groups) != 1:
            log.debug("cost gate: %d hardware/meter group(s) among the COMPLETE trials (%s); a model is fitted on "
                      "one only, so no candidate is skipped", len(groups),
                      ", ".join(f"{h!r} meter {m}: {len(v)}" for (h, m, _), v in groups.items()) or "none")
            self._model = self._fitted_on = None
            return None
        ((hardware, meter, estimate), rows), = groups.items()
        if len(rows) == self._fitted_on:
            return self._model
        self._fitted_on, self._model = len(rows), None
        if len(rows) < MIN_TRIALS:
            return None
        try:
            self._model = CostModel.fit(rows, hardware=hardware, meter=meter, is_estimate=estimate)
        except (NASError, ValueError) as e:  # CostModelError; a fit numpy gives up on (LinAlgError)
            log.info("cost gate: no cost model (%s); candidates are built", e)
            return None
        log.debug("cost gate: %s", self._model.describe())
        return self._model

    def __call__(self, candidate: Candidate) -> PredictedSkip | None:
        """Whether ``candidate`` is predicted to break a constraint with high confidence (see the class)."""
        model = self.model()
        if model is None:
            return None
        try:
            inputs = candidate_inputs(candidate, batch_size=self.batch_size, seq_len=self.seq_len)
            broken = predicted_broken(model, inputs, self.constraints, confidence=self.confidence)
        except (NASError, RuntimeError, ValueError) as e:  # a candidate this build cannot profile is built
            log.info("cost gate: candidate not judged (%s); it is built", e)
            return None
        if not broken:
            return None
        reason = (f"{infeasible_reason(model, broken, confidence=self.confidence)}; not built (a CPU profile of "
                  f"its served form, no metered joules; model fitted on {len(model.trials)} COMPLETE trials)")
        return PredictedSkip(reason=reason, constraints={b.constraint: 1.0 for b in broken})
