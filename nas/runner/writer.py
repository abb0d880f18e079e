"""The driver-side Tune callback: the only writer of the database (ARCHITECTURE decision 1).

Workers return results through Ray; this callback, which runs in the driver process, turns each into
one storage transaction (trial row, readings, study cost, persisted Pareto front).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from typing import Any

from ray.tune import Callback

from nas.config import Candidate
from nas.records import TrialResult
from nas.runner.searcher import candidate_hash

log = logging.getLogger(__name__)


class StoreHandle:
    """A picklable reference to the driver's store: Ray Tune pickles its callbacks and searcher for
    experiment snapshots, and an open SQLAlchemy engine cannot be pickled. The store reopens lazily."""

    def __init__(self, store: Any, study: str) -> None:
        self.url = store.url
        self.study = study
        self._store: Any = store

    @property
    def store(self) -> Any:
        if self._store is None:
            from storage import Store

            self._store = Store.open(self.url, create=False)
        return self._store

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "study": self.study, "_store": None}

    def record_invalid(self, number: int, params: dict[str, Any], reason: str) -> None:
        """The searcher rejected a sampled configuration (invalid, or a repeat of a failure)."""
        self.store.fail_trial(self.study, number, reason, candidate=None)


class StoreWriter(Callback):  # type: ignore[misc]
    """Records trial starts, completions and failures in the :class:`storage.Store`.

    Args:
        store: the open store (driver side).
        study: study name.
        failed_hashes: the shared set the searcher consults; failures are added here.
        on_change: called after every stored completion/failure (progress display, budget checks).
    """

    def __init__(self, handle: StoreHandle, failed_hashes: set[str],
                 on_change: Callable[[], None] | None = None, retention: str = "front") -> None:
        self.handle = handle
        self.study = handle.study
        self.failed_hashes = failed_hashes
        self.on_change = on_change
        self.retention = retention
        self._started: dict[str, float] = {}

    @property
    def store(self) -> Any:
        return self.handle.store

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["on_change"] = None  # a UI hook of this process only
        return state

    @staticmethod
    def _number(trial: Any) -> int:
        return int(trial.config["optuna_number"])

    @staticmethod
    def _candidate(trial: Any) -> Candidate:
        return Candidate.model_validate_json(trial.config["candidate_json"])

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._started[trial.trial_id] = time.time()
        self.store.start_trial(self.study, self._number(trial), self._candidate(trial))

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        from storage import TrialCost

        number = self._number(trial)
        res = trial.last_result or {}
        status = res.get("status")
        wall_s = time.time() - self._started.pop(trial.trial_id, time.time())
        gpus = float(trial.placement_group_factory.required_resources.get("GPU", 0.0)) \
            if getattr(trial, "placement_group_factory", None) else 0.0
        if status == "COMPLETE" and res.get("trial_result_json"):
            result = TrialResult.from_dict(json.loads(res["trial_result_json"]))
            cost = TrialCost.from_result(result, wall_s=wall_s, gpu_s=wall_s * gpus)
            self.store.finish_trial(self.study, number, result, cost=cost)
            if result.weights_path:  # finish_trial recorded the "weights" artefact in its transaction
                self._apply_retention()
        elif status == "FAIL":
            self._fail(trial, res.get("error") or "failed without a message")
        else:
            step = res.get("step")
            acc = res.get("rung_accuracy")
            self.store.prune_trial(self.study, number,
                                   f"stopped by ASHA at step {step} (rung accuracy {acc:.4f})"
                                   if acc is not None else "stopped by the scheduler before its first rung",
                                   wall_s=wall_s)
        if self.on_change:
            self.on_change()

    def _apply_retention(self) -> None:
        """``retention: front`` keeps weights of front members only; ``none`` keeps none; ``all`` all."""
        if self.retention == "all":
            return
        keep = set() if self.retention == "none" else {v.number for v in self.store.front(self.study)}
        for art in self.store.artefacts(self.study):
            if art.kind == "weights" and art.trial_number not in keep:
                for path in self.store.remove_artefacts(self.study, art.trial_number, "weights"):
                    shutil.rmtree(path, ignore_errors=True)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        err = getattr(trial, "error_msg", None) or "the trial's worker died"
        lines = [ln for ln in str(err).strip().splitlines() if ln.strip()]
        reason = f"worker error: {lines[-1] if lines else err}"
        self._started.pop(trial.trial_id, None)
        self._fail(trial, reason[:2000])
        if self.on_change:
            self.on_change()

    def _fail(self, trial: Any, reason: str) -> None:
        cand = self._candidate(trial)
        self.failed_hashes.add(candidate_hash(cand))
        try:
            self.store.fail_trial(self.study, self._number(trial), reason, candidate=cand)
        except Exception as e:  # e.g. Tune reporting an error after completion: keep the first verdict
            log.warning("could not record failure of trial %d: %s", self._number(trial), e)
        log.info("trial %d FAIL: %s", self._number(trial), reason)
