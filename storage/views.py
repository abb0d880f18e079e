"""Frozen records returned by :class:`storage.Store` (rows never leave the storage package).

Units live in field names: ``_j`` joules, ``_s`` seconds, ``_g`` grams CO2-equivalent, ``_utc`` a
timezone-aware UTC timestamp.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any

from nas.config import Candidate
from nas.fidelity import FidelityReport, rung_correlations
from nas.records import FailKind, InferenceEnergy, RungReport, TrialResult, spends_budget, sum_known
from nas.reference import TeacherRatios, TeacherReference, ratios_to_teacher
from nas.vocab import OBJECTIVE

__all__ = [
    "NO_HARDWARE",
    "OBJECTIVE_NAMES",
    "REPORTED_NAMES",
    "CANDIDATE_NAMES",
    "FILTER_NAMES",
    "candidate_hash",
    "above_majority",
    "requires_above_majority",
    "fidelity_rungs",
    "study_fidelity",
    "TrialCost",
    "StudyCosts",
    "StudyInfo",
    "TrialView",
    "FrontEntry",
    "ArtefactView",
    "ReadingView",
]

#: The hardware fingerprint of a trial that has no inference measurement.
NO_HARDWARE = "unknown"
#: Metric names a study may optimise or filter on (:data:`nas.vocab.OBJECTIVE`, the keys of
#: :meth:`nas.records.TrialResult.objectives`).
OBJECTIVE_NAMES: tuple[str, ...] = OBJECTIVE.names
#: Metrics that are stored, shown and filterable but never optimised (the keys of
#: :meth:`nas.records.TrialResult.reported`): test accuracy and macro-F1, and the dev majority-class rate.
REPORTED_NAMES: tuple[str, ...] = tuple(
    TrialResult(candidate=Candidate(), task="", status="COMPLETE").reported().keys()
)
#: Candidate fields usable in filters (the keys of :meth:`nas.config.Candidate.flat`).
CANDIDATE_NAMES: tuple[str, ...] = tuple(Candidate().flat().keys())
#: Every name a ``--where`` filter over trials may use (the keys of :meth:`TrialView.values`).
FILTER_NAMES: tuple[str, ...] = tuple(
    sorted({*OBJECTIVE_NAMES, *REPORTED_NAMES, *CANDIDATE_NAMES, "meter", "is_estimate", "hardware", "number",
            "state"})
)


def candidate_hash(candidate: Candidate) -> str:
    """SHA-256 of the candidate's canonical JSON: its identity in storage.

    The canonical form is pydantic's ``model_dump_json()`` (fields in declaration order, no spaces),
    the same bytes :mod:`nas.runner.searcher` hashes, so the two always agree.
    """
    return hashlib.sha256(candidate.model_dump_json().encode("utf-8")).hexdigest()


def above_majority(values: Mapping[str, Any]) -> bool:
    """The front's sanity rule: dev ``accuracy`` strictly above the dev ``majority_accuracy``.

    A model that is not better than always predicting the most frequent class is not a trade-off
    worth showing, however cheap it is. A trial with no recorded majority rate (stored before it was
    recorded) is not judged and passes; one with a rate but no accuracy does not.
    """
    majority = values.get("majority_accuracy")
    if majority is None:
        return True
    accuracy = values.get("accuracy")
    return accuracy is not None and float(accuracy) > float(majority)


def requires_above_majority(spec_json: str) -> bool:
    """The study setting ``front.require_above_majority`` in a spec's JSON (default True).

    Read from the JSON rather than through :class:`nas.spec.StudySpec`, so that studies whose spec is
    not a full study spec (created through the Python API) get the default.
    """
    try:
        spec = json.loads(spec_json)
    except (TypeError, ValueError):
        return True
    front = spec.get("front") if isinstance(spec, dict) else None
    value = front.get("require_above_majority", True) if isinstance(front, dict) else True
    return bool(value)


def fidelity_rungs(spec_json: str) -> tuple[int, ...]:
    """The study setting ``fidelity.rungs`` in a spec's JSON; ``()`` when the spec has none.

    Read from the JSON, like :func:`requires_above_majority`, so that studies whose spec is not a full
    study spec (created through the Python API) read too.
    """
    try:
        spec = json.loads(spec_json)
    except (TypeError, ValueError):
        return ()
    fidelity = spec.get("fidelity") if isinstance(spec, dict) else None
    rungs = fidelity.get("rungs") if isinstance(fidelity, dict) else None
    if not isinstance(rungs, list) or not all(isinstance(r, int) and not isinstance(r, bool) for r in rungs):
        return ()
    return tuple(rungs)


def finite_or_none(value: Any) -> Any:
    """``None`` for NaN and infinities, the value otherwise."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _measured_protocol_cost(inf: InferenceEnergy) -> tuple[float | None, float | None]:
    """Joules and grams CO2eq the inference protocol cost, from what was measured.

    The protocol's own meter reading (``protocol_energy_j``) when the record has it; else, for records
    written before it was metered, the joules read over the kept windows (``windows_energy_j``, a lower
    bound: warm-up and idle baseline are missing); else, for the oldest records, which kept only
    J/sample, J/sample times the windows' samples (the same lower bound, rebuilt).
    """
    samples = sum(inf.windows_samples) if inf.windows_samples else (
        inf.throughput_samples_s * inf.n_windows * inf.window_s)
    co2 = inf.protocol_co2eq_g
    if co2 is None and inf.co2eq_g_per_sample is not None and math.isfinite(samples):
        co2 = inf.co2eq_g_per_sample * samples
    if inf.protocol_energy_j is not None:
        return inf.protocol_energy_j, co2
    if inf.windows_total_energy_j is not None:
        return inf.windows_total_energy_j, co2
    if inf.energy_per_sample_j is not None and math.isfinite(samples):
        return inf.energy_per_sample_j * samples, co2
    return None, co2


@dataclass(frozen=True)
class TrialCost:
    """What a trial cost the search (decision 11: search cost is a first-class number).

    Attributes:
        train_energy_j: Joules spent training and distilling; ``None`` when no meter could read it.
        measure_energy_j: Joules spent measuring inference energy and latency.
        co2eq_g: Grams CO2-equivalent of the above, when the meter gives it.
        wall_s: Wall-clock seconds of the whole trial.
        gpu_s: GPU-seconds (fraction of a GPU times seconds) the trial held.
        meter: The meter behind the joules.
        is_estimate: Whether the joules are an estimate rather than a measurement.
    """

    train_energy_j: float | None = None
    measure_energy_j: float | None = None
    co2eq_g: float | None = None
    wall_s: float = 0.0
    gpu_s: float = 0.0
    meter: str = "none"
    is_estimate: bool = False

    @property
    def total_energy_j(self) -> float | None:
        """Training plus measurement joules (known parts); ``None`` when neither is known."""
        parts = [p for p in (self.train_energy_j, self.measure_energy_j) if p is not None]
        return sum(parts) if parts else None

    @classmethod
    def from_result(cls, result: TrialResult, *, wall_s: float = 0.0, gpu_s: float = 0.0) -> TrialCost:
        """The cost recorded in a result, whatever its status.

        Training joules (a teacher trained for this trial included) plus the joules of the whole measurement
        protocol.

        A phase that ran but whose meter gave no number leaves its part ``None``: unknown stays unknown.
        ``measure_energy_j`` is the protocol's metered energy (warm-up, idle baseline, windows, latency
        pass) of every reading the trial took, the one before training (measure-first) included; see
        :func:`_measured_protocol_cost` for records written before it was metered. A trial stopped by its
        reading before training trained for nothing: its training joules are 0, known.
        """
        train, readings = result.train, [r for r in (result.inference, result.first_reading) if r is not None]
        costs = [_measured_protocol_cost(r) for r in readings]
        co2_parts = ([train.total_co2eq_g] if train else []) + [co2 for _, co2 in costs]
        meters = [m.meter for m in (train, *readings) if m is not None and m.meter != "none"]
        stopped_first = train is None and result.inference is not None and result.inference.provenance.before_training
        return cls(
            train_energy_j=train.total_energy_j if train else (0.0 if stopped_first else None),
            measure_energy_j=sum_known([j for j, _ in costs]) if costs else None,
            co2eq_g=sum_known(co2_parts),
            wall_s=wall_s,
            gpu_s=gpu_s,
            meter=meters[0] if meters else "none",
            is_estimate=any(m.is_estimate for m in (train, *readings) if m is not None),
        )

    @classmethod
    def from_rung(cls, rung: RungReport, *, wall_s: float = 0.0, gpu_s: float = 0.0) -> TrialCost:
        """The cost of a trial known only from its last rung report (stopped there, or its worker died).

        Its training so far, and its measurement before training when it measured first.
        """
        return cls(train_energy_j=rung.train_energy_j, measure_energy_j=rung.measure_energy_j, co2eq_g=rung.co2eq_g,
                   wall_s=wall_s, gpu_s=gpu_s, meter=rung.meter, is_estimate=rung.is_estimate)


@dataclass(frozen=True)
class StudyCosts:
    """A study's search cost and trial counts, derived from its trials and teacher (see :class:`StudyInfo`)."""

    train_energy_j: float | None
    measure_energy_j: float | None
    co2eq_g: float | None
    wall_s: float
    gpu_s: float
    cost_includes_estimate: bool
    n_trials_unmetered: int
    n_trials_complete: int
    n_trials_failed: int
    n_trials_pruned: int
    teacher_energy_j: float | None = None
    supernet_energy_j: float | None = None


@dataclass(frozen=True)
class StudyInfo:
    """One study and its running search cost.

    Attributes:
        name: Unique study name (also the Optuna study name).
        optuna_study_id: Optuna's ``study_id`` in the same database, when linked.
        spec_json: The study spec as JSON text.
        objectives: ``(metric, direction)`` pairs, direction ``"maximize"`` or ``"minimize"``.
        status: ``RUNNING``, ``COMPLETE``, ``FAILED`` or ``STOPPED``.
        train_energy_j: Joules spent training, summed over the trials whose meter gave a number (a
            teacher trained for a trial included); ``None`` when no trial's did.
        measure_energy_j: Joules spent measuring, likewise.
        co2eq_g: Grams CO2-equivalent; ``None`` unless every trial that ran has a CO2 figure.
        wall_s: Total trial wall-clock seconds.
        gpu_s: Total GPU-seconds.
        cost_includes_estimate: Whether any of the totals comes from an estimate.
        n_trials_unmetered: Trials that ran but whose training joules are unknown (no meter, a worker
            killed before its first rung report, a driver that died): the totals are a lower bound.
        teacher_energy_j: The part of the totals the study's teacher reference cost (fine-tuning and the
            outputs cache, in ``train_energy_j``, when this study caused them; its measurement, in
            ``measure_energy_j``); ``None`` without a teacher reference or when it was not metered.
        supernet_energy_j: The part of ``train_energy_j`` the study's weight-sharing supernet cost (every
            run's training, ``fidelity.kind: supernet``); ``None`` without one or when it was not metered.

    The totals and the trial counts are derived from the trials' stored costs and states, plus the teacher
    reference's cost (counted once), whenever the study is read.
    """

    name: str
    optuna_study_id: int | None
    spec_json: str
    objectives: tuple[tuple[str, str], ...]
    status: str
    created_utc: datetime
    updated_utc: datetime
    budget_energy_j: float | None
    budget_trials: int | None
    budget_wall_s: float | None
    train_energy_j: float | None
    measure_energy_j: float | None
    co2eq_g: float | None
    wall_s: float
    gpu_s: float
    cost_includes_estimate: bool
    n_trials_complete: int
    n_trials_failed: int
    n_trials_pruned: int
    n_trials_unmetered: int = 0
    teacher_energy_j: float | None = None
    supernet_energy_j: float | None = None

    @property
    def total_energy_j(self) -> float | None:
        """Training plus measurement joules (known parts); ``None`` when neither is known."""
        parts = [p for p in (self.train_energy_j, self.measure_energy_j) if p is not None]
        return float(sum(parts)) if parts else None

    @property
    def objectives_key(self) -> str:
        """The objectives as one string, e.g. ``accuracy:maximize,energy_per_sample_j:minimize``."""
        return ",".join(f"{m}:{d}" for m, d in self.objectives)

    @property
    def spec(self) -> Any:
        """The study spec, parsed from ``spec_json``."""
        return json.loads(self.spec_json)

    @property
    def require_above_majority(self) -> bool:
        """Whether the study's front keeps out trials not above the dev majority-class rate."""
        return requires_above_majority(self.spec_json)

    @property
    def fidelity_rungs(self) -> tuple[int, ...]:
        """The study's accuracy rungs (``fidelity.rungs``; the last is the full training), ``()`` if unknown."""
        return fidelity_rungs(self.spec_json)


@dataclass(frozen=True)
class TrialView:
    """One stored trial.

    Attributes:
        study: The study name.
        number: The trial number (Optuna's ``trial.number``).
        state: ``RUNNING``, ``COMPLETE``, ``FAIL`` or ``PRUNED``.
        fail_reason: Why it failed (``FAIL``) or was stopped early (``PRUNED``), for humans.
        fail_kind: What kind of failure (``FAIL`` only), which decides whether it spent budget and
            whether its candidate may be sampled again (:class:`~nas.records.FailKind`).
        candidate: The candidate, when known (a trial can fail before it has one).
        candidate_hash: :func:`candidate_hash` of the candidate.
        result: The full result, once finished.
        hardware_fingerprint: The device model of the inference measurement (:data:`NO_HARDWARE` if none).
        cost: What the trial cost the search, once finished or failed.
        flat: The flat values used for fronts and ``--where`` filters (see :meth:`values`).
        rung_accuracies: ``(step, dev accuracy)`` at each accuracy rung the trial reached while it trained,
            by step, whatever its state (stored as each rung report arrived). Measured mid-training, before
            the final compression; the study's last rung is not here: it is the final dev ``accuracy``.
        remeasured: The trial as seen on another machine than its own (``nas remeasure``'s readings):
            ``result.inference``, ``flat``, ``meter`` and ``hardware_fingerprint`` are that machine's; the
            rest is what the trial measured.
        noise: On a front of a study with ``front.noise: aware``: ``"clear"`` when no other trial may
            dominate it within the measurement noise, ``"tied"`` when one may; None elsewhere.
    """

    study: str
    number: int
    state: str
    fail_reason: str | None
    fail_kind: FailKind | None
    optuna_trial_id: int | None
    candidate: Candidate | None
    candidate_hash: str | None
    result: TrialResult | None
    hardware_fingerprint: str | None
    meter: str | None
    is_estimate: bool | None
    cost: TrialCost | None
    started_utc: datetime | None
    finished_utc: datetime | None
    flat: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    rung_accuracies: tuple[tuple[int, float], ...] = ()
    remeasured: bool = False
    noise: str | None = None

    @property
    def retryable(self) -> bool:
        """A failure that is not the candidate's fault: it may be sampled again."""
        return self.fail_kind is not None and self.fail_kind.retryable

    @property
    def spends_budget(self) -> bool:
        """Whether this trial counts against the study's trial budget (:func:`nas.records.spends_budget`)."""
        return spends_budget(self.state, self.fail_kind)

    def values(self) -> dict[str, Any]:
        """A flat copy of every value a filter may use (the names in :data:`FILTER_NAMES`).

        Every key of :meth:`TrialResult.objectives` and :meth:`TrialResult.reported` (``test_accuracy``,
        ``test_macro_f1``, ``majority_accuracy``), every key of :meth:`Candidate.flat`, plus ``meter``,
        ``is_estimate``, ``hardware``, ``number`` and ``state``. Missing values are ``None``.
        """
        return dict(self.flat)

    def ratios_to(self, teacher: TeacherReference) -> TeacherRatios:
        """This trial's dev-accuracy and J/sample ratios to ``teacher`` (:func:`nas.reference.ratios_to_teacher`).

        The J/sample ratio needs the same meter, hardware, batch size and sequence length as the teacher's.
        """
        inf = self.result.inference if self.result is not None else None
        values = self.flat
        return ratios_to_teacher(values.get("accuracy"), values.get("energy_per_sample_j"), self.meter, teacher,
                                 hardware=self.hardware_fingerprint if inf is not None else None,
                                 batch_size=inf.batch_size if inf else None, seq_len=inf.seq_len if inf else None)


@dataclass(frozen=True)
class FrontEntry:
    """One member of a persisted Pareto front (a row of ``nas_pareto_front``)."""

    hardware_fingerprint: str
    objectives_key: str
    trial_number: int
    position: int
    values: Mapping[str, float]
    updated_utc: datetime
    clear: bool | None = None  # front.noise: aware: clear (True) or tied within noise (False)


@dataclass(frozen=True)
class ArtefactView:
    """A file produced by a trial."""

    trial_number: int
    kind: str
    path: str
    sha256: str | None
    size_bytes: int | None
    created_utc: datetime


@dataclass(frozen=True)
class ReadingView:
    """One stored energy reading; see :class:`storage.models.EnergyReadingRow` for the fields."""

    trial_number: int
    kind: str
    meter: str
    is_estimate: bool
    exclusive: bool
    energy_j: float | None
    energy_per_sample_j: float | None
    energy_per_sample_net_j: float | None
    idle_w: float | None
    cv: float | None
    duration_s: float | None
    co2eq_g: float | None
    hardware_fingerprint: str | None
    provenance: Mapping[str, Any] | None
    created_utc: datetime
    origin: str | None = None  # "remeasure": `nas remeasure`; "tie_break": front.ties; None: taken by the trial


def study_fidelity(info: StudyInfo, trials: Iterable[TrialView]) -> FidelityReport:
    """How well a study's early rungs rank its candidates (:func:`nas.fidelity.rung_correlations`).

    The one reading of the report that ``nas show STUDY``, the HTTP API and the dashboard share. Each
    trial's rungs are its :attr:`TrialView.rung_accuracies`; its final dev ``accuracy``, when it has one
    (whatever its state), sits at the study's last rung.
    """
    rungs = info.fidelity_rungs
    final = rungs[-1] if rungs else None
    per_trial = []
    for t in trials:
        points = dict(t.rung_accuracies)
        accuracy = t.flat.get("accuracy")
        if final is not None and accuracy is not None:
            points[final] = float(accuracy)
        per_trial.append(points)
    return rung_correlations(per_trial, rungs=rungs)
