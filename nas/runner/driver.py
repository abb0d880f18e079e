"""The driver: one ask -> evaluate -> tell loop, run by Ray Tune, with the database as the truth.

Resume rebuilds everything from the database (ARCHITECTURE decision 2): the Optuna study is loaded from
RDBStorage (its sampler history intact), trials left RUNNING by a dead driver become FAIL with a
reason, and their budget is re-queued; one the dead driver had stored but not yet told Optuna is told
COMPLETE with its stored objectives.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
import ray
from optuna.storages import BaseStorage as OptunaStorage
from optuna.storages import RDBStorage
from optuna.trial import TrialState
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.stopper import Stopper

from nas.config import Candidate
from nas.errors import NASError, SearchError
from nas.feasibility import judgeable
from nas.records import FailKind
from nas.runner.cost_gate import CostGate
from nas.runner.ray_session import RaySession, reap_orphans
from nas.runner.searcher import NASOptunaSearch, make_sampler, sampler_seed, tell_complete, tell_infeasible
from nas.runner.supernet_final import Refined, refine_front
from nas.runner.supernet_prep import prepare_supernet
from nas.runner.teacher_prep import prepare_teacher
from nas.runner.ties import TiesReport, settle_ties
from nas.runner.tracking import (
    artefacts_dir,
    prune_ray_results,
    ray_results_dir,
    tracking_callbacks,
    trial_dirname,
)
from nas.runner.trainable import tune_trainable
from nas.runner.writer import StoreHandle, StoreWriter
from nas.spec import StudySpec, TeacherSpec
from nas.where import compile_where
from search_spaces import load_space
from storage import FILTER_NAMES, Store

log = logging.getLogger(__name__)

INTERRUPTED = "interrupted: the driver stopped before this trial finished"


@dataclass(frozen=True)
class RunOutcome:
    """How a search run ended: the study, how many trials it evaluated, why it stopped, its wall time."""

    study: str
    evaluated: int
    stopped_reason: str
    wall_s: float
    ties: TiesReport | None = None
    refined: tuple[Refined, ...] = ()


def _init_ray(ray_address: str | None, spec: StudySpec) -> str | None:
    """Start local Ray or join ``ray_address``.

    Returns the session folder of the local Ray this call started (which the search then owns and stops),
    else None. A Ray the caller initialised is left to the caller.
    """
    # Tune reads these in the driver, also when the caller started Ray: a FAIL report has no metrics
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")  # rung reports carry accuracy only
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    if ray.is_initialized():
        return None
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if ray_address:
        _check_reachable(ray_address)
        try:
            ray.init(address=ray_address, **kwargs)
        except Exception as e:  # ConnectionError, ValueError from Ray
            raise SearchError(f"cannot join the Ray cluster at {ray_address!r}: {e}",
                              field="--ray-address",
                              fix="start one with `ray start --head` or omit --ray-address for local Ray") from e
        return None
    context = ray.init(address="local", **kwargs)
    return str(context.address_info["session_dir"])  # type: ignore[attr-defined]  # a RayContext


def _check_a_trial_fits(spec: StudySpec) -> None:
    """Fail at once, not wait forever, when no live Ray node has the CPUs and GPUs one trial asks for."""
    need = {"CPU": spec.resources.cpus_per_trial, "GPU": spec.resources.gpus_per_trial}
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]  # type: ignore[no-untyped-call]
    if any(all(res.get(k, 0.0) >= v for k, v in need.items()) for res in nodes):
        return
    have = "; ".join(f"{r.get('CPU', 0):g} CPU, {r.get('GPU', 0):g} GPU" for r in nodes) or "no live node"
    raise SearchError(
        f"no Ray node can run a trial: each asks for {need['CPU']:g} CPU and {need['GPU']:g} GPU, the nodes have "
        f"{have}", field="resources.gpus_per_trial" if need["GPU"] else "resources.cpus_per_trial",
        fix="lower resources.gpus_per_trial or cpus_per_trial, or join a cluster whose nodes have them "
        "(--ray-address; see docs/cluster.md)")


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds, not minutes, when nothing listens at a ``host:port`` Ray address."""
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


class StudyConstraints:
    """``trial number -> {constraint: -1.0 satisfied, +1.0 not}``, judged from the stored trial.

    The sampler sees the study's ``constraints`` as Optuna constraints (<= 0 is feasible), judged from the
    same stored values and by the same rule as the front (:class:`storage.fronts.FrontRule`): a missing
    value does not satisfy a constraint. Picklable (Tune pickles the searcher that holds it): the store
    travels as a :class:`StoreHandle`.
    """

    def __init__(self, handle: StoreHandle, constraints: list[str]) -> None:
        self.handle = handle
        self.checks = {c: compile_where(c, FILTER_NAMES) for c in constraints}

    def __call__(self, number: int) -> dict[str, float]:
        """The constraint values of a stored trial."""
        flat = self.handle.store.trial(self.handle.study, number).values()
        return {c: -1.0 if check(flat) else 1.0 for c, check in self.checks.items()}

    def before_training(self, number: int) -> dict[str, float]:
        """The values of a stored trial's constraints that are judgeable before training (:mod:`nas.feasibility`).

        For a trial that measure-first stopped: the other constraints' values are unknown, and left out.
        """
        return {c: v for c, v in self(number).items() if judgeable(self.checks[c])}


def study_constraints(spec: StudySpec, handle: StoreHandle) -> StudyConstraints | None:
    """What tells the sampler whether a trial met the study's constraints; None for a study without them."""
    return StudyConstraints(handle, spec.constraints) if spec.constraints else None


def _make_searcher(spec: StudySpec, store: Store, handle: StoreHandle, ot_storage: OptunaStorage,
                   failed: set[str], teacher: Candidate | None = None,
                   max_trials: int | None = None) -> NASOptunaSearch:
    """The study's searcher.

    Its sampler is seeded from the study and how many trials Optuna was told, and every candidate already
    COMPLETE in the study blocked from evaluation. ``teacher`` (the prepared teacher as a candidate) is
    what ``init: teacher`` candidates are cut from. The study's constraints reach the sampler through
    :class:`StudyConstraints`. With ``fidelity.predict_skip`` on (``auto``: a constraint reads a predicted
    value), a :class:`~nas.runner.cost_gate.CostGate` keeps candidates the cost model predicts infeasible from
    being built. ``max_trials`` is the trial budget left to this run: a skipped candidate spends a trial of it
    (FAIL, kind infeasible, as measure-first's stopped trials do, and as :func:`_spent` counts it) without
    becoming a Tune trial, so the searcher ends the run at ``max_trials`` candidates handed out plus skipped,
    and Tune's ``num_samples`` is only an upper bound (see :meth:`NASOptunaSearch._skip`).
    """
    try:
        told = len(ot_storage.get_all_trials(ot_storage.get_study_id_from_name(spec.name), deepcopy=False,
                                             states=(TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)))
    except KeyError:
        told = 0
    seed = sampler_seed(spec.sampler.seed, spec.name, told)
    constraints = study_constraints(spec, handle)
    return NASOptunaSearch(
        load_space(spec.space.preset, spec.space.overrides),
        failed_hashes=failed,
        evaluated=store.complete_candidate_hashes(spec.name),
        on_invalid=handle.record_invalid,
        metric=spec.objective_names,
        mode=["max" if d == "maximize" else "min" for d in spec.directions],
        sampler=make_sampler(spec.sampler, seed),
        study_name=spec.name,
        storage=ot_storage,
        teacher=teacher,
        constraints=constraints,
        first_constraints=constraints.before_training if constraints is not None else None,
        gate=CostGate.for_study(spec, handle),
        on_skipped=handle.record_skipped,
        max_trials=max_trials,
    )


def _clean_staging(folder: str) -> None:
    """Weights a worker staged but the driver never stored (a killed driver, an orphaned worker)."""
    shutil.rmtree(os.path.join(folder, ".staging"), ignore_errors=True)


def run_study(spec: StudySpec, store: Store, *, resume: bool, ray_address: str | None = None,
              on_change: Callable[[], None] | None = None, on_ready: Callable[[], None] | None = None,
              show_teacher_progress: bool = False) -> RunOutcome:
    """Run (or continue) ``spec`` until its budget is spent. The caller owns ``store``.

    The study's teacher is made ready first, once (:func:`nas.runner.teacher_prep.prepare_teacher`:
    fine-tuned and its outputs cached when needed, measured as the study's reference row);
    ``show_teacher_progress`` draws its progress bars; ``on_ready`` is called once the teacher is ready
    (the CLI starts its live search display there).
    """
    t0 = time.time()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    name = spec.name
    if resume:
        lost = store.mark_unfinished_failed(name, INTERRUPTED)
        if lost:
            log.info("resume: %d unfinished trial(s) marked FAIL and re-queued: %s", len(lost), lost)
    ot_storage = RDBStorage(store.url, engine_kwargs=store.optuna_engine_kwargs())
    _settle_running_optuna_trials(ot_storage, store, spec)

    done = _spent(store, name)
    remaining = spec.budget.trials - done
    if remaining <= 0:
        return RunOutcome(name, 0, "trial budget already spent", time.time() - t0)
    failed = set(store.failed_candidate_hashes(name))
    handle = StoreHandle(store, name)
    prepared = prepare_teacher(spec, store, progress=show_teacher_progress)
    if prepared is not None:  # workers load the resolved (fine-tuned, cached) teacher, never fit it again
        spec = spec.model_copy(update={"teacher": TeacherSpec(path=prepared.path)})
    art_dir = artefacts_dir(spec, store.url)
    supernet = prepare_supernet(spec, store, art_dir, progress=show_teacher_progress)
    # max_trials: a candidate the cost gate skips spends budget but is no Tune trial (see _make_searcher)
    searcher = _make_searcher(spec, store, handle, ot_storage, failed,
                              teacher=prepared.candidate if prepared is not None else None, max_trials=remaining)
    if on_ready is not None:
        on_ready()
    _clean_staging(art_dir)
    reap_orphans()  # what a search killed with SIGKILL left on this machine
    results_dir = ray_results_dir(art_dir)  # TensorBoard logs, kept per storage.retention (nas.runner.tracking)
    prune_ray_results(results_dir, spec.storage.retention)  # what a killed driver of this study left
    session = RaySession()
    writer = StoreWriter(handle, failed, on_change=on_change, retention=spec.storage.retention,
                         artefacts_dir=art_dir, settle=searcher.settle, on_start=session.record)
    stopper = SearchStopper(handle, spec.budget.joules, writer)
    try:
        ray_session_dir = _init_ray(ray_address, spec)
        session.owns_ray = ray_session_dir is not None
        if ray_session_dir is not None:  # Tune's driver-side copies of the results folder
            session.add_folder(os.path.join(ray_session_dir, "artifacts"))
        session.record()
        _check_a_trial_fits(spec)
        tuner = _tuner(spec, searcher, writer, stopper, art_dir, results_dir, remaining)
        store.set_study_status(name, "RUNNING")
        try:
            tuner.fit()
        except BaseException as e:
            _close_out(store, ot_storage, spec, "FAILED")
            ours = _nas_error_in(e)
            if ours is not None and ours is not e:
                raise ours from e  # Tune wraps what the writer raised (a deleted database, a full disk)
            raise
        if writer.fatal is not None:  # a write failed: Tune logged it; the search stops with it
            _close_out(store, ot_storage, spec, "FAILED")
            raise writer.fatal
        # a trial Tune abandoned (time or joule budget) is not lost: it is marked and re-queued
        _close_out(store, ot_storage, spec, None)
        _link_optuna_study(store, ot_storage, name)
    finally:
        session.stop()
        prune_ray_results(results_dir, spec.storage.retention)
        with contextlib.suppress(OSError):
            os.rmdir(art_dir)  # the study's artefacts folder, when nothing is kept in it (retention: none)
    return _finish(store, spec, stopper, t0, art_dir, supernet)


def _finish(store: Store, spec: StudySpec, stopper: SearchStopper, t0: float, art_dir: str,
            supernet: str | None) -> RunOutcome:
    """After the last trial: fine-tune a supernet study's front, settle ties within noise, close the study."""
    done = _spent(store, spec.name)
    reason = stopper.reason or (
        "trial budget spent" if done >= spec.budget.trials else
        ("wall-time budget reached" if spec.budget.wall_s and time.time() - t0 >= spec.budget.wall_s
         else "stopped")
    )
    refined = refine_front(store, spec, art_dir, supernet)
    ties = _settle_ties(store, spec)
    store.set_study_status(spec.name, "COMPLETE" if done >= spec.budget.trials or stopper.reason else "STOPPED")
    return RunOutcome(spec.name, done, reason, time.time() - t0, ties, refined)


def _settle_ties(store: Store, spec: StudySpec) -> TiesReport | None:
    """Re-measure the front's ties within noise (``front.ties``); a failure there loses no trial, only the settling."""
    try:
        report = settle_ties(store, spec, store.url)
    except NASError as e:
        log.warning("ties within noise were not settled: %s", e)
        return None
    if report is not None:
        log.info("%s", report.describe())
    return report


def _nas_error_in(e: BaseException) -> NASError | None:
    """The first :class:`NASError` in ``e``'s chain of causes."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, NASError):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


def _close_out(store: Store, ot_storage: OptunaStorage, spec: StudySpec, status: str | None) -> None:
    """Trials left running become FAIL (interrupted) in both our tables and Optuna's.

    A failed search is marked so. After a failed write this may fail too: the first error is the one that
    counts.
    """
    try:
        store.mark_unfinished_failed(spec.name, INTERRUPTED)
        _settle_running_optuna_trials(ot_storage, store, spec)
        if status is not None:
            store.set_study_status(spec.name, status)
    except Exception as e:  # noqa: BLE001 - never mask the error that stopped the search
        if status is None:
            raise
        log.error("could not close out study %r after the search stopped: %s", spec.name, e)


def _link_optuna_study(store: Store, ot_storage: OptunaStorage, name: str) -> None:
    """Record Optuna's id of the study (its tables share the database) in our study row."""
    with contextlib.suppress(KeyError):  # KeyError: no trial was ever asked for, so Optuna has no study yet
        store.link_optuna_study(name, ot_storage.get_study_id_from_name(name))


def _spent(store: Store, name: str) -> int:
    """How many of the study's trials spent budget (:attr:`storage.TrialView.spends_budget`)."""
    return sum(v.spends_budget for v in store.trials(name))


def _tuner(spec: StudySpec, searcher: NASOptunaSearch, writer: StoreWriter, stopper: SearchStopper,
           art_dir: str, results_dir: str, remaining: int) -> tune.Tuner:
    search_alg = ConcurrencyLimiter(searcher, max_concurrent=spec.resources.max_concurrent)
    if spec.fidelity.early_stopping:
        scheduler: TrialScheduler = ASHAScheduler(time_attr="step", metric="rung_accuracy", mode="max",
                                       max_t=spec.fidelity.max_steps, grace_period=spec.fidelity.rungs[0],
                                       reduction_factor=spec.fidelity.reduction_factor)
    else:
        scheduler = FIFOScheduler()  # type: ignore[no-untyped-call]
    trainable = tune.with_resources(
        tune.with_parameters(tune_trainable, spec_json=spec.model_dump_json(), artefacts_dir=art_dir),
        {"cpu": spec.resources.cpus_per_trial, "gpu": spec.resources.gpus_per_trial},
    )
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=search_alg, scheduler=scheduler, num_samples=remaining,
                                    time_budget_s=spec.budget.wall_s, reuse_actors=True,
                                    trial_name_creator=trial_dirname, trial_dirname_creator=trial_dirname),
        run_config=tune.RunConfig(name=f"nas-{spec.name}", storage_path=results_dir,
                                  callbacks=[writer, *tracking_callbacks(spec, art_dir)],
                                  stop=stopper, verbose=0, log_to_file=False,
                                  failure_config=tune.FailureConfig(max_failures=0),
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=1)),
    )


class SearchStopper(Stopper):  # type: ignore[misc]
    """Ends the whole search cleanly at the joule budget or after a failed write.

    It stops once the study's stored search energy (training + measurement joules) reaches the budget,
    or at once when the writer could not store a trial (``writer.fatal``).
    """

    def __init__(self, handle: StoreHandle, budget_j: float | None, writer: StoreWriter | None = None) -> None:
        self.handle = handle
        self.budget_j = budget_j
        self.writer = writer
        self.reason = ""

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        """Never stops a single trial (ASHA does that); returns False."""
        return False

    def stop_all(self) -> bool:
        """Whether to end the search now (a failed write, or the joule budget spent); sets ``reason``."""
        if self.writer is not None and self.writer.fatal is not None:
            self.reason = f"stopped: {self.writer.fatal}"
            return True
        if self.budget_j is None:
            return False
        spent = self.handle.store.get_study(self.handle.study).total_energy_j
        if spent is not None and spent >= self.budget_j:
            self.reason = f"joule budget reached ({spent:.1f} J >= {self.budget_j:g} J)"
            return True
        return False


def _settle_running_optuna_trials(ot_storage: OptunaStorage, store: Store, spec: StudySpec) -> None:
    """Optuna trials left RUNNING (a dead driver, an abandoned trial) are told what our tables hold.

    A trial our tables hold as COMPLETE (the driver stored it, then was killed before it told Optuna) is
    told COMPLETE with its stored objectives and constraint values, so the sampler learns from it and both
    histories agree; one they hold as stopped before training (``FailKind.INFEASIBLE``) is told PRUNED
    with its constraint values, as :meth:`NASOptunaSearch.settle` would have. Every other one becomes FAIL,
    so that samplers that condition on running trials (constant liar) are not skewed.
    """
    try:
        study_id = ot_storage.get_study_id_from_name(spec.name)
    except KeyError:
        return
    running = ot_storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
    if not running:
        return
    stored = {v.number: v for v in store.trials(spec.name)}
    constraints = study_constraints(spec, StoreHandle(store, spec.name))
    study = optuna.load_study(study_name=spec.name, storage=ot_storage)
    for t in running:
        view = stored.get(t.number)
        flat = view.values() if view is not None and view.state == "COMPLETE" else {}
        values = [flat.get(m) for m in spec.objective_names]
        if flat and all(isinstance(v, (int, float)) for v in values):
            tell_complete(study, optuna.Trial(study, t._trial_id), [float(v) for v in values],  # type: ignore[arg-type]
                          constraints(t.number) if constraints is not None else None)
            log.info("trial %d: stored COMPLETE but never told to Optuna; told now", t.number)
            continue
        # stopped before training (measure-first), or never built (the cost gate, which tells Optuna at once:
        # only a driver killed between its write and its tell leaves one here; judged on what is stored)
        if view is not None and view.fail_kind is FailKind.INFEASIBLE:
            tell_infeasible(study, optuna.Trial(study, t._trial_id), view.fail_reason or "infeasible",
                            constraints.before_training(t.number) if constraints is not None else {})
            continue
        ot_storage.set_trial_user_attr(t._trial_id, "fail_reason", INTERRUPTED)
        ot_storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
