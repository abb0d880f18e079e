"""The driver-side Tune callback: the only writer of the database (ARCHITECTURE decision 1).

Workers return results through Ray; this callback, which runs in the driver process, turns each into
one storage transaction (trial row, readings, study cost, persisted Pareto front). Each rung report is
stored as it arrives (its dev accuracy), so a trial that ASHA stops, or whose worker dies, keeps every rung
it reached.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray.tune import Callback
from ray.tune.experiment import Trial

from nas.config import Candidate
from nas.errors import NASError, StorageError
from nas.records import FailKind, RungReport, TrialResult
from nas.runner.protocol import TrialConfig, TrialReport
from storage import Store, TrialCost, candidate_hash

log = logging.getLogger(__name__)


class StoreHandle:
    """A picklable reference to the driver's store.

    Ray Tune pickles its callbacks and searcher for experiment snapshots, and an open SQLAlchemy engine
    cannot be pickled. The store reopens lazily.
    """

    def __init__(self, store: Store, study: str) -> None:
        self.url = store.url
        self.study = study
        self._store: Store | None = store

    @property
    def store(self) -> Store:
        """The study's store, reopened from ``url`` on first use after unpickling."""
        if self._store is None:
            self._store = Store.open(self.url, create=False)
        return self._store

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "study": self.study, "_store": None}

    def record_invalid(self, number: int, params: dict[str, Any], reason: str, kind: FailKind) -> None:
        """The searcher rejected a sampled configuration (invalid, or a repeat); it never ran."""
        self.store.fail_trial(self.study, number, reason, candidate=None, kind=kind)

    def record_skipped(self, number: int, candidate: Candidate, reason: str) -> None:
        """The cost model predicted the candidate infeasible (:mod:`nas.runner.cost_gate`); it was never built.

        Stored FAIL with kind ``infeasible`` and its candidate (so it spends budget and its hash is blocked,
        also on resume), without a cost: no metered joules were spent on it.
        """
        self.store.fail_trial(self.study, number, reason, candidate=candidate, kind=FailKind.INFEASIBLE)


class StoreWriter(Callback):  # type: ignore[misc]
    """Records trial starts, completions and failures in the :class:`storage.Store`.

    Every trial that ran gets its cost recorded, whatever its end: a complete or failed trial from its
    result (a failed one carries what it spent before failing), a stopped one from its last rung
    report, a dead worker's from its last rung report when it reached one (else its joules are unknown).
    Every rung's dev accuracy is stored when its report arrives (:meth:`on_trial_result`).

    Args:
        handle: the driver's store.
        failed_hashes: the shared set the searcher consults; failures are added here.
        on_change: called after every stored completion/failure (progress display, budget checks).
        retention: which trials keep their weights (``front``, ``all`` or ``none``).
        artefacts_dir: the study's artefacts folder; workers write weights to its ``.staging/`` and the
            writer moves them into place when it stores a COMPLETE trial.
        settle: ``settle(trial_id)`` tells Optuna how a trial ended; called only after the trial is
            stored (see :meth:`NASOptunaSearch.settle`).
        on_start: called when a trial starts (the driver records its local Ray's new processes).
    """

    def __init__(self, handle: StoreHandle, failed_hashes: set[str],
                 on_change: Callable[[], None] | None = None, retention: str = "front",
                 artefacts_dir: str | None = None, settle: Callable[[str], None] | None = None,
                 on_start: Callable[[], None] | None = None) -> None:
        self.handle = handle
        self.study = handle.study
        self.failed_hashes = failed_hashes
        self.on_change = on_change
        self.retention = retention
        self.artefacts_dir = artefacts_dir
        self.settle = settle
        self.on_start = on_start
        self.fatal: NASError | None = None
        self._started: dict[str, float] = {}

    @property
    def store(self) -> Store:
        """The handle's store."""
        return self.handle.store

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for hook in ("on_change", "settle", "on_start"):  # hooks into this driver process only
            state[hook] = None
        return state

    def _done(self, trial: Trial) -> None:
        if self.settle is not None:
            self.settle(trial.trial_id)
        if self.on_change is not None:
            self.on_change()

    # --- Tune's callbacks: a failed write stops the search (see ``fatal``), never a silent loss -------
    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        """Record that a trial started (Tune's callback)."""
        self._guard(self._record_start, trial)

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial, result: dict[str, Any],
                        **info: Any) -> None:
        """Store a rung report's dev accuracy as it arrives (Tune's callback; final reports are left alone)."""
        report = TrialReport.from_tune(result)
        if report is not None and report.status == "RUNNING" and report.rung is not None:
            self._guard(functools.partial(self._record_rung, rung=report.rung), trial)

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        """Store a trial that ended with a final report (Tune's callback)."""
        self._guard(self._record_complete, trial)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        """Store a trial whose worker died or raised (Tune's callback)."""
        self._guard(self._record_error, trial)

    def _guard(self, record: Callable[[Any], None], trial: Trial) -> None:
        """Run ``record(trial)`` unless a write already failed.

        A failed write is kept in ``fatal``: Tune would log and swallow it, so the driver's stopper ends the
        search and re-raises it, and Optuna is not told about the trial (both sides then mark it FAIL on the
        way out).
        """
        if self.fatal is not None:
            return
        try:
            record(trial)
        except NASError as e:
            self.fatal = e
            log.error("stopping the search: %s", e)

    def _record_start(self, trial: Trial) -> None:
        self._started[trial.trial_id] = time.time()
        cfg = TrialConfig.from_tune(trial.config)
        self.store.start_trial(self.study, cfg.number, cfg.candidate)
        if self.on_start is not None:
            self.on_start()

    def _record_rung(self, trial: Trial, rung: RungReport) -> None:
        number = TrialConfig.from_tune(trial.config).number
        self.store.record_rung(self.study, number, rung.step, rung.accuracy)

    def _cost(self, trial: Trial, report: TrialReport | None) -> TrialCost:
        wall_s = time.time() - self._started.pop(trial.trial_id, time.time())
        pgf = getattr(trial, "placement_group_factory", None)
        gpus = float(pgf.required_resources.get("GPU", 0.0)) if pgf is not None else 0.0
        spent = report.spent if report is not None else None
        if isinstance(spent, TrialResult):
            return TrialCost.from_result(spent, wall_s=wall_s, gpu_s=wall_s * gpus)
        if isinstance(spent, RungReport):
            return TrialCost.from_rung(spent, wall_s=wall_s, gpu_s=wall_s * gpus)
        return TrialCost(wall_s=wall_s, gpu_s=wall_s * gpus, meter="unknown")

    def _record_complete(self, trial: Trial) -> None:
        cfg = TrialConfig.from_tune(trial.config)
        report = TrialReport.from_tune(trial.last_result)
        cost = self._cost(trial, report)
        if report is not None and report.status == "COMPLETE" and report.result is not None:
            result = self._place_weights(cfg.number, report.result)
            self.store.finish_trial(self.study, cfg.number, result, cost=cost)
            if result.weights_path:  # finish_trial recorded the "weights" artefact in its transaction
                self._apply_retention()
        elif report is not None and report.status == "FAIL":
            self._drop_weights(report.result)
            self._fail(cfg, report.error or "failed without a message", cost,
                       report.fail_kind or FailKind.CANDIDATE, report.result)
        else:
            self._drop_weights(report.result if report else None)
            rung = report.rung if report is not None else None
            reason = (f"stopped by ASHA at step {rung.step} (rung accuracy {rung.accuracy:.4f})" if rung
                      else "stopped by the scheduler before its first rung")
            self.store.prune_trial(self.study, cfg.number, reason, cost=cost)
        self._done(trial)

    def _record_error(self, trial: Trial) -> None:
        err = getattr(trial, "error_msg", None) or "the trial's worker died"
        lines = [ln for ln in str(err).strip().splitlines() if ln.strip()]
        reason = f"worker error: {lines[-1] if lines else err}"
        report = TrialReport.from_tune(trial.last_result)
        self._fail(TrialConfig.from_tune(trial.config), reason[:2000], self._cost(trial, report), FailKind.CANDIDATE,
                   None)
        self._done(trial)

    def _place_weights(self, number: int, result: TrialResult) -> TrialResult:
        """Move a COMPLETE trial's staged weights to ``trial_NNNNN`` (the only place artefacts live)."""
        if not result.weights_path or not self.artefacts_dir:
            return result
        staged = Path(result.weights_path)
        final = Path(self.artefacts_dir) / f"trial_{number:05d}"
        if staged.resolve() == final.resolve():
            return result
        if not staged.exists():  # written on another node of a cluster, to a folder this machine cannot see
            log.warning("trial %d's weights were saved on the node that ran it (%s), which this driver cannot "
                        "see; the trial is stored without them. Fix: set storage.artefacts_dir to a folder "
                        "every node mounts (see docs/cluster.md)", number, staged)
            return dataclasses.replace(result, weights_path=None)
        if final.exists():
            shutil.rmtree(final)
        staged.rename(final)
        return dataclasses.replace(result, weights_path=str(final))

    @staticmethod
    def _drop_weights(result: TrialResult | None) -> None:
        if result is not None and result.weights_path:
            shutil.rmtree(result.weights_path, ignore_errors=True)

    def _apply_retention(self) -> None:
        """``retention: front`` keeps weights of front members only; ``none`` keeps none; ``all`` all."""
        if self.retention == "all":
            return
        keep = set() if self.retention == "none" else {v.number for v in self.store.front(self.study)}
        for art in self.store.artefacts(self.study):
            if art.kind == "weights" and art.trial_number not in keep:
                for path in self.store.remove_artefacts(self.study, art.trial_number, "weights"):
                    shutil.rmtree(path, ignore_errors=True)

    def _fail(self, cfg: TrialConfig, reason: str, cost: TrialCost, kind: FailKind,
              result: TrialResult | None) -> None:
        if kind.blocks_candidate:  # the store's failed_candidate_hashes() agrees
            self.failed_hashes.add(candidate_hash(cfg.candidate))
        if self._finished(cfg.number):  # e.g. Tune reporting an error after completion: keep the first verdict
            log.warning("trial %d is already stored as finished; not recording: %s", cfg.number, reason)
            return
        if result is not None:
            failed = dataclasses.replace(result, status="FAIL", error=reason, weights_path=None)
            self.store.finish_trial(self.study, cfg.number, failed, cost=cost, fail_kind=kind)
        else:
            self.store.fail_trial(self.study, cfg.number, reason, candidate=cfg.candidate, cost=cost, kind=kind)
        log.info("trial %d FAIL: %s", cfg.number, reason)

    def _finished(self, number: int) -> bool:
        try:
            return self.store.trial(self.study, number).state != "RUNNING"
        except StorageError:
            return False  # never started: fail_trial creates it
