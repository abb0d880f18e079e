"""Optuna inside Ray Tune: a thin :class:`OptunaSearch` subclass.

Four things differ from Ray's stock searcher:

* the define-by-run space is :func:`search_spaces.suggest`; the frozen candidate travels to the
  worker as JSON (workers never import the search space);
* a candidate identical to one that already failed (or that is invalid), or to one that is already
  COMPLETE or being evaluated in this study, is told to Optuna as FAIL at once and never evaluated:
  the budget is not spent on it, and a resumed study never evaluates a candidate twice;
* a multi-objective trial that Tune's ASHA stopped at an accuracy rung has no energy value; Optuna
  cannot take a partial vector (optuna#3450), so it is told as PRUNED instead of being left RUNNING;
* a study's ``constraints`` guide the sampler: a COMPLETE trial is told with one Optuna constraint per
  study constraint (``Trial.set_constraint``: -1 satisfied, +1 not), which TPE, NSGA-II and the GP
  sampler all read, so they learn to avoid the infeasible region instead of only seeing it filtered
  off the front afterwards;
* a trial stopped before training because its measurement broke a constraint (measure-first,
  ``FailKind.INFEASIBLE``) is told as PRUNED with the constraints it was judged on (see :meth:`settle`);
* a candidate the study's cost model predicts infeasible with high confidence (``gate``,
  :mod:`nas.runner.cost_gate`) is never built: it is stored FAIL (``FailKind.INFEASIBLE``) with its
  candidate, told as PRUNED with the constraints predicted broken, blocked like a failure, and the sampler
  is asked again.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections.abc import Callable
from typing import Any, cast

import optuna
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from nas.config import Candidate
from nas.errors import NASError
from nas.records import FailKind
from nas.runner.cost_gate import PredictedSkip
from nas.runner.protocol import TrialConfig, TrialReport
from nas.runner.samplers import make_sampler
from search_spaces import SearchSpace, suggest
from storage import candidate_hash

__all__ = ["NASOptunaSearch", "make_sampler", "sampler_seed", "tell_complete", "tell_infeasible"]

log = logging.getLogger(__name__)

MAX_RESAMPLE = 50


def tell_complete(study: optuna.Study, trial: optuna.Trial, values: list[float],
                  constraints: dict[str, float] | None) -> None:
    """Tell Optuna a trial is COMPLETE with its objective ``values``, after setting its constraint values."""
    for key, value in (constraints or {}).items():
        trial.set_constraint(key, value)
    study.tell(trial, values if len(values) > 1 else values[0])


def tell_infeasible(study: optuna.Study, trial: optuna.Trial, reason: str, constraints: dict[str, float]) -> None:
    """Tell Optuna PRUNED a trial stopped before training, with the constraint values it was judged on.

    See :meth:`NASOptunaSearch.settle` for why PRUNED.
    """
    trial.set_user_attr("fail_reason", reason[:500])
    for key, value in constraints.items():
        trial.set_constraint(key, value)
    study.tell(trial, None, state=optuna.trial.TrialState.PRUNED)


def sampler_seed(seed: int, study: str, n_told: int) -> int:
    """The sampler's seed for a (re)start.

    It comes from the spec's seed, the study and how many trials Optuna was told so far, so that a resumed or
    re-run study draws new candidates instead of replaying.
    """
    digest = hashlib.sha256(f"{seed}:{study}:{n_told}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


class NASOptunaSearch(OptunaSearch):  # type: ignore[misc]
    """OptunaSearch whose space is a :class:`SearchSpace` and which skips known-bad candidates.

    Args:
        space: the search space.
        failed_hashes: hashes of candidates that failed before (shared, updated by the writer).
        evaluated: ``hash -> trial number`` of candidates COMPLETE in the study or being evaluated;
            the searcher adds what it hands out.
        on_invalid: called in the driver with (optuna trial number, params, reason) when a sampled
            configuration is invalid or repeats a failure, so it can be recorded.
        teacher: The study's teacher as a candidate, which ``init: teacher`` candidates are cut from.
        constraints: ``trial number -> {constraint: value}`` for a COMPLETE trial already stored, where a
            value <= 0 means satisfied (Optuna's convention); ``None`` for a study without constraints.
        first_constraints: The same for a trial stopped before training (measure-first), over the
            constraints that can be judged then; ``None`` for a study that does not measure first.
        gate: ``gate(candidate)`` says why a sampled candidate is not to be built (the cost model,
            :class:`nas.runner.cost_gate.CostGate`), or None to build it; ``None`` for a study without it.
        on_skipped: called in the driver with (optuna trial number, candidate, reason) when ``gate`` skips a
            candidate, so that it is recorded (FAIL, kind infeasible) before Optuna is told.
        max_trials: the trials this run may spend (the study's remaining trial budget): candidates handed out
            plus candidates skipped by ``gate``; ``None`` leaves the count to Tune.
    """

    def __init__(
        self,
        space: SearchSpace,
        *,
        failed_hashes: set[str],
        evaluated: dict[str, int] | None = None,
        on_invalid: Callable[[int, dict[str, Any], str, FailKind], None] | None = None,
        teacher: Candidate | None = None,
        constraints: Callable[[int], dict[str, float]] | None = None,
        first_constraints: Callable[[int], dict[str, float]] | None = None,
        gate: Callable[[Candidate], PredictedSkip | None] | None = None,
        on_skipped: Callable[[int, Candidate, str], None] | None = None,
        max_trials: int | None = None,
        **kwargs: Any,
    ) -> None:
        self._nas_space = space
        self._teacher = teacher
        self._constraints = constraints
        self._first_constraints = first_constraints
        self._failed_hashes = failed_hashes
        self._evaluated = evaluated if evaluated is not None else {}
        self._on_invalid = on_invalid
        self._gate = gate
        self._on_skipped = on_skipped
        self._max_trials = max_trials
        self._spent = 0  # trials this run spent budget on: handed out, or skipped by the gate
        self._pending: dict[str, tuple[dict[str, Any] | None, bool]] = {}
        super().__init__(space=self._define_by_run, **kwargs)

    def _define_by_run(self, trial: optuna.Trial) -> dict[str, Any]:
        cand = suggest(trial, self._nas_space, self._teacher)
        return TrialConfig(candidate=cand, number=trial.number, candidate_hash=candidate_hash(cand)).to_tune()

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:  # type: ignore[override]  # Ray: FINISHED
        """The next trial's Tune config, None when the sampler gives up, or ``FINISHED`` at ``max_trials``.

        Invalid candidates, and candidates that failed before or were already evaluated, are recorded as
        rejected and sampled again, up to ``MAX_RESAMPLE`` times; so are candidates ``gate`` skips
        (:meth:`_skip`).
        """
        for _ in range(MAX_RESAMPLE):
            if self._max_trials is not None and self._spent >= self._max_trials:
                return Searcher.FINISHED  # the trial budget is spent (skipped trials count)
            try:
                with warnings.catch_warnings():
                    # the time Ray warns about is the sampler fitting its model (seconds for the GP
                    # sampler), not training done in the wrong place
                    warnings.filterwarnings("ignore", message="Define-by-run function passed in the `space`",
                                            category=UserWarning)
                    suggested: dict[str, Any] | None = super().suggest(trial_id)
            except NASError as e:  # invalid candidate: record, tell FAIL, sample again
                ot_trial = self._ot_trials.pop(trial_id)
                self._reject(ot_trial, f"invalid candidate: {e}", FailKind.INVALID)
                continue
            if suggested is None:
                return None
            config = TrialConfig.from_tune(suggested)
            h = config.candidate_hash
            if h in self._failed_hashes:
                self._reject(self._ot_trials.pop(trial_id), "not evaluated: identical to a candidate that failed before",
                             FailKind.NOT_EVALUATED)
                continue
            if h in self._evaluated:
                self._reject(self._ot_trials.pop(trial_id),
                             f"not evaluated: identical to trial {self._evaluated[h]}, already evaluated in this study",
                             FailKind.NOT_EVALUATED)
                continue
            verdict = self._gate(config.candidate) if self._gate is not None else None
            if verdict is not None:
                self._skip(self._ot_trials.pop(trial_id), config.candidate, h, verdict)
                continue
            self._evaluated[h] = int(suggested["optuna_number"])
            self._spent += 1
            return suggested
        log.warning("the sampler proposed only failed, invalid, already evaluated or predicted infeasible candidates "
                    "%d times in a row", MAX_RESAMPLE)
        return None

    @property
    def _study(self) -> optuna.Study:
        return cast(optuna.Study, self._ot_study)  # set by OptunaSearch._setup_study before any suggest

    def _reject(self, ot_trial: optuna.Trial, reason: str, kind: FailKind) -> None:
        ot_trial.set_user_attr("fail_reason", reason)
        self._study.tell(ot_trial, None, state=optuna.trial.TrialState.FAIL)
        log.info("trial %d rejected: %s", ot_trial.number, reason)
        if self._on_invalid is not None:
            self._on_invalid(ot_trial.number, dict(ot_trial.params), reason, kind)

    def _skip(self, ot_trial: optuna.Trial, candidate: Candidate, digest: str, verdict: PredictedSkip) -> None:
        """Record, tell Optuna and block a candidate ``gate`` says not to build.

        A skipped candidate is stored FAIL with kind ``infeasible`` and its candidate, like a trial that
        measure-first stopped: it spends one trial of the budget (:attr:`FailKind.spends_budget`, as the
        driver's count of spent trials reads it), so it counts toward ``max_trials`` here, since it never
        becomes a Tune trial and Tune's own count never sees it. It costs no metered joules (its cost is left
        unknown: only a CPU profile ran). It is stored before Optuna is told (as :meth:`settle` does), told
        PRUNED with the constraints predicted broken (+1), so TPE learns from it as from measure-first's
        stopped trials, and its hash is blocked like a failure's.
        """
        if self._on_skipped is not None:
            self._on_skipped(ot_trial.number, candidate, verdict.reason)
        tell_infeasible(self._study, ot_trial, verdict.reason, dict(verdict.constraints))
        self._failed_hashes.add(digest)
        self._spent += 1
        log.info("trial %d not built: %s", ot_trial.number, verdict.reason)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        """Tune's notice that a trial ended.

        The tell waits for :meth:`settle`: the driver stores the trial first, so that a failed write (a full
        disk) never leaves Optuna saying COMPLETE about a trial our tables do not hold.
        """
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        self._pending[trial_id] = (result, error)

    def settle(self, trial_id: str) -> None:
        """Tell Optuna how a trial ended, once the driver has stored it.

        A trial stopped before training (``FailKind.INFEASIBLE``) is told PRUNED, with one Optuna constraint
        per study constraint it was judged on (+1 broken, -1 met). Optuna's samplers ignore FAIL trials, and
        COMPLETE would need objective values it never had (its accuracy); TPE reads the constraints of
        PRUNED trials and ranks a trial that breaks one among the infeasible, so it learns to avoid the
        region. NSGA-II, the GP and the evolution sampler read COMPLETE trials only: they do not learn from
        it, and the candidate itself is never evaluated again (its hash is blocked like a failure's).
        """
        if trial_id not in self._pending:
            return
        result, error = self._pending.pop(trial_id)
        ot_trial = self._ot_trials[trial_id]
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        report = TrialReport.from_tune(result)
        if not error and report is not None and report.fail_kind is FailKind.INFEASIBLE:
            self._forget(ot_trial)
            tell_infeasible(self._study, ot_trial, report.error or "infeasible before training",
                            self._first_constraints(ot_trial.number) if self._first_constraints else {})
        elif error or report is None or report.status == "FAIL":
            if report is not None and report.error:
                ot_trial.set_user_attr("fail_reason", report.error[:500])
            self._forget(ot_trial)
            self._study.tell(ot_trial, None, state=optuna.trial.TrialState.FAIL)
        elif report.status != "COMPLETE":
            # stopped at an accuracy rung by ASHA: no energy was measured, so no objective vector
            self._forget(ot_trial)
            self._study.tell(ot_trial, None, state=optuna.trial.TrialState.PRUNED)
        else:  # a COMPLETE report carries every objective (the worker fails it otherwise)
            vals = [float(report.objectives[m]) for m in metrics]
            tell_complete(self._study, ot_trial, vals,
                          self._constraints(ot_trial.number) if self._constraints is not None else None)
        self._completed_trials.add(trial_id)

    def _forget(self, ot_trial: optuna.Trial) -> None:
        """A trial that did not complete no longer blocks its candidate (a failure blocks it instead)."""
        for h, n in list(self._evaluated.items()):
            if n == ot_trial.number:
                del self._evaluated[h]
