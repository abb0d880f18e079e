"""Optuna inside Ray Tune: a thin :class:`OptunaSearch` subclass.

Three things differ from Ray's stock searcher:

* the define-by-run space is :func:`search_spaces.suggest`; the frozen candidate travels to the
  worker as JSON (workers never import the search space);
* a candidate identical to one that already failed (or that is invalid) is told to Optuna as FAIL at
  once and never evaluated: the sampler sees the failure, the budget is not spent on it;
* a multi-objective trial that Tune's ASHA stopped at an accuracy rung has no energy value; Optuna
  cannot take a partial vector (optuna#3450), so it is told as PRUNED instead of being left RUNNING.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import Any

import optuna
from ray.tune.search.optuna import OptunaSearch

from nas.config import Candidate
from nas.errors import NASError
from search_spaces import SearchSpace, suggest
from storage import candidate_hash

__all__ = ["NASOptunaSearch", "make_sampler", "candidate_hash"]

log = logging.getLogger(__name__)

MAX_RESAMPLE = 50


def make_sampler(kind: str, seed: int, n_startup_trials: int) -> optuna.samplers.BaseSampler:
    if kind == "tpe":
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup_trials, multivariate=True,
                                          group=True, constant_liar=True)
    if kind == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, n_startup_trials))
    return optuna.samplers.RandomSampler(seed=seed)


class NASOptunaSearch(OptunaSearch):  # type: ignore[misc]
    """OptunaSearch whose space is a :class:`SearchSpace` and which skips known-bad candidates.

    Args:
        space: the search space.
        failed_hashes: hashes of candidates that failed before (shared, updated by the writer).
        on_invalid: called in the driver with (optuna trial number, params, reason) when a sampled
            configuration is invalid or repeats a failure, so it can be recorded.
    """

    def __init__(
        self,
        space: SearchSpace,
        *,
        failed_hashes: set[str],
        on_invalid: Callable[[int, dict[str, Any], str], None] | None = None,
        **kwargs: Any,
    ) -> None:
        self._nas_space = space
        self._failed_hashes = failed_hashes
        self._on_invalid = on_invalid
        super().__init__(space=self._define_by_run, **kwargs)

    def _define_by_run(self, trial: Any) -> dict[str, Any]:
        cand = suggest(trial, self._nas_space)
        return {"candidate_json": cand.model_dump_json(), "optuna_number": trial.number}

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        for _ in range(MAX_RESAMPLE):
            try:
                suggested: dict[str, Any] | None = super().suggest(trial_id)
            except NASError as e:  # invalid candidate: record, tell FAIL, sample again
                ot_trial = self._ot_trials.pop(trial_id)
                self._reject(ot_trial, f"invalid candidate: {e}")
                continue
            if suggested is None:
                return None
            config = suggested
            cand = Candidate.model_validate_json(config["candidate_json"])
            h = candidate_hash(cand)
            if h in self._failed_hashes:
                ot_trial = self._ot_trials.pop(trial_id)
                self._reject(ot_trial, "not evaluated: identical to a candidate that failed before")
                continue
            config["candidate_hash"] = h
            return config
        log.warning("the sampler proposed only failed or invalid candidates %d times in a row", MAX_RESAMPLE)
        return None

    @property
    def _study(self) -> Any:
        return self._ot_study

    def _reject(self, ot_trial: optuna.Trial, reason: str) -> None:
        ot_trial.set_user_attr("fail_reason", reason)
        self._study.tell(ot_trial, None, state=optuna.trial.TrialState.FAIL)
        log.info("trial %d rejected: %s", ot_trial.number, reason)
        if self._on_invalid is not None:
            self._on_invalid(ot_trial.number, dict(ot_trial.params), reason)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        ot_trial = self._ot_trials[trial_id]
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        values = [result.get(m) if result else None for m in metrics]
        status = (result or {}).get("status")
        if error or status == "FAIL":
            if result and result.get("error"):
                ot_trial.set_user_attr("fail_reason", str(result["error"])[:500])
            self._study.tell(ot_trial, None, state=optuna.trial.TrialState.FAIL)
        elif status != "COMPLETE" or any(v is None for v in values):
            # stopped at an accuracy rung by ASHA: no energy was measured, so no objective vector
            self._study.tell(ot_trial, None, state=optuna.trial.TrialState.PRUNED)
        else:
            vals = [float(v) for v in values if v is not None]
            self._study.tell(ot_trial, vals if len(vals) > 1 else vals[0])
        self._completed_trials.add(trial_id)
