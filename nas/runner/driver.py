"""The driver: one ask -> evaluate -> tell loop, run by Ray Tune, with the database as the truth.

Resume rebuilds everything from the database (ARCHITECTURE decision 2): the Optuna study is loaded from
RDBStorage (its sampler history intact), trials left RUNNING by a dead driver become FAIL with a
reason, and their budget is re-queued.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from ray.tune.stopper import Stopper

from nas.errors import SearchError
from nas.spec import StudySpec

log = logging.getLogger(__name__)

INTERRUPTED = "interrupted: the driver stopped before this trial finished"
NOT_BUDGETED_PREFIXES = ("interrupted", "not evaluated", "invalid candidate")


def counts_against_budget(state: str, fail_reason: str | None, retryable: bool = False) -> bool:
    """Whether a stored trial spent budget: interrupted and never-evaluated trials did not."""
    if state == "RUNNING" or (state == "FAIL" and retryable):
        return False
    return not (state == "FAIL" and fail_reason and fail_reason.startswith(NOT_BUDGETED_PREFIXES))


def artefacts_dir(spec: StudySpec, db_url: str) -> str:
    """Where trial weights go: ``storage.artefacts_dir``, else ``nas_artefacts/`` beside a SQLite file."""
    if spec.storage.artefacts_dir:
        base = spec.storage.artefacts_dir
    elif db_url.startswith("sqlite") and ":memory:" not in db_url:
        path = db_url.split("///", 1)[-1]
        base = os.path.join(os.path.dirname(os.path.abspath(path)), "nas_artefacts")
    else:
        base = os.path.join(os.getcwd(), "nas_artefacts")
    return os.path.join(base, spec.name)


@dataclass(frozen=True)
class RunOutcome:
    study: str
    evaluated: int
    stopped_reason: str
    wall_s: float


def _init_ray(ray_address: str | None, spec: StudySpec) -> None:
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")  # rung reports carry accuracy only
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if ray_address:
        _check_reachable(ray_address)
        try:
            ray.init(address=ray_address, **kwargs)
        except Exception as e:  # ConnectionError, ValueError from Ray
            raise SearchError(f"cannot join the Ray cluster at {ray_address!r}: {e}",
                              field="--ray-address",
                              fix="start one with `ray start --head` or omit --ray-address for local Ray") from e
    else:
        ray.init(address="local", **kwargs)


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds, not minutes, when nothing listens at a ``host:port`` Ray address."""
    import socket

    if address in ("auto", "local") or address.startswith("ray://"):
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise SearchError("expected HOST:PORT", field="--ray-address", value=address,
                          fix="pass the head node's GCS address, e.g. 127.0.0.1:6379")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as e:
        raise SearchError(f"no Ray cluster answers at {address} ({e.strerror or e})", field="--ray-address",
                          fix="start one with `ray start --head` or omit --ray-address for local Ray") from e


def run_study(spec: StudySpec, store: Any, *, resume: bool, ray_address: str | None = None,
              on_change: Any = None) -> RunOutcome:
    """Run (or continue) ``spec`` until its budget is spent. The caller owns ``store``."""
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import ConcurrencyLimiter

    from nas.runner.searcher import NASOptunaSearch, make_sampler
    from nas.runner.trainable import tune_trainable
    from nas.runner.writer import StoreHandle, StoreWriter
    from search_spaces import load_space

    t0 = time.time()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    name = spec.name
    if resume:
        lost = store.mark_unfinished_failed(name, INTERRUPTED)
        if lost:
            log.info("resume: %d unfinished trial(s) marked FAIL and re-queued: %s", len(lost), lost)
    ot_storage = optuna.storages.RDBStorage(store.url, engine_kwargs=store.optuna_engine_kwargs())
    _fail_running_optuna_trials(ot_storage, name)

    views = store.trials(name)
    done = sum(counts_against_budget(v.state, v.fail_reason, v.retryable) for v in views)
    remaining = spec.budget.trials - done
    if remaining <= 0:
        return RunOutcome(name, 0, "trial budget already spent", time.time() - t0)
    failed = set(store.failed_candidate_hashes(name))

    handle = StoreHandle(store, name)

    space = load_space(spec.space.preset, spec.space.overrides)
    searcher = NASOptunaSearch(
        space,
        failed_hashes=failed,
        on_invalid=handle.record_invalid,
        metric=spec.objective_names,
        mode=["max" if d == "maximize" else "min" for d in spec.directions],
        sampler=make_sampler(spec.sampler.kind, spec.sampler.seed, spec.sampler.n_startup_trials),
        study_name=name,
        storage=ot_storage,
    )
    search_alg = ConcurrencyLimiter(searcher, max_concurrent=spec.resources.max_concurrent)
    if spec.fidelity.enabled and len(spec.fidelity.rungs) > 1:
        scheduler: Any = ASHAScheduler(time_attr="step", metric="rung_accuracy", mode="max",
                                       max_t=spec.fidelity.max_steps, grace_period=spec.fidelity.rungs[0],
                                       reduction_factor=spec.fidelity.reduction_factor)
    else:
        scheduler = FIFOScheduler()  # type: ignore[no-untyped-call]

    stopper = JouleBudget(handle, spec.budget.joules)

    def changed() -> None:
        if on_change:
            on_change()

    writer = StoreWriter(handle, failed, on_change=changed, retention=spec.storage.retention)
    _init_ray(ray_address, spec)
    trainable = tune.with_resources(
        tune.with_parameters(tune_trainable, spec_json=spec.model_dump_json(),
                             artefacts_dir=artefacts_dir(spec, store.url)),
        {"cpu": spec.resources.cpus_per_trial, "gpu": spec.resources.gpus_per_trial},
    )
    results_dir = tempfile.mkdtemp(prefix="nas-tune-")
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=search_alg, scheduler=scheduler, num_samples=remaining,
                                    time_budget_s=spec.budget.wall_s, reuse_actors=True),
        run_config=tune.RunConfig(name=f"nas-{name}", storage_path=results_dir, callbacks=[writer],
                                  stop=stopper, verbose=0, log_to_file=False,
                                  failure_config=tune.FailureConfig(max_failures=0),
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=1)),
    )
    store.set_study_status(name, "RUNNING")
    try:
        tuner.fit()
    finally:
        # a trial Tune abandoned (time or joule budget) is not lost: it is marked and re-queued
        store.mark_unfinished_failed(name, INTERRUPTED)
        _fail_running_optuna_trials(ot_storage, name)
    views = store.trials(name)
    done = sum(counts_against_budget(v.state, v.fail_reason, v.retryable) for v in views)
    reason = stopper.reason or (
        "trial budget spent" if done >= spec.budget.trials else
        ("wall-time budget reached" if spec.budget.wall_s and time.time() - t0 >= spec.budget.wall_s
         else "stopped")
    )
    store.set_study_status(name, "COMPLETE" if done >= spec.budget.trials or stopper.reason else "STOPPED")
    return RunOutcome(name, done, reason, time.time() - t0)


class JouleBudget(Stopper):  # type: ignore[misc]
    """A Tune stopper that ends the whole search cleanly once the study's stored search energy
    (training + measurement joules) reaches the budget. Picklable (holds a :class:`StoreHandle`)."""

    def __init__(self, handle: Any, budget_j: float | None) -> None:
        self.handle = handle
        self.budget_j = budget_j
        self.reason = ""

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return False

    def stop_all(self) -> bool:
        if self.budget_j is None:
            return False
        spent = self.handle.store.get_study(self.handle.study).total_energy_j
        if spent is not None and spent >= self.budget_j:
            self.reason = f"joule budget reached ({spent:.1f} J >= {self.budget_j:g} J)"
            return True
        return False


def _fail_running_optuna_trials(ot_storage: Any, name: str) -> None:
    """Optuna trials left RUNNING (a dead driver, an abandoned trial) become FAIL, so samplers that
    condition on running trials (constant liar) are not skewed and history stays consistent."""
    import optuna

    try:
        study_id = ot_storage.get_study_id_from_name(name)
    except KeyError:
        return
    for t in ot_storage.get_all_trials(study_id, deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        ot_storage.set_trial_user_attr(t._trial_id, "fail_reason", INTERRUPTED)
        ot_storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
