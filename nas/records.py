"""Frozen records that cross module and process boundaries (layer L0).

Units live in field names: ``_j`` joules, ``_w`` watts, ``_s`` seconds, ``_ms`` milliseconds,
``_g`` grams of CO2-equivalent, ``_bytes`` bytes. Every energy figure carries the ``meter`` that
produced it and ``is_estimate``; an estimate is never presented as a measurement.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from nas.config import Candidate
from nas.failures import FailKind, spends_budget
from nas.placement import Placement
from nas.vocab import METER_READING

__all__ = ["METERS", "ESTIMATE_METERS", "FailKind", "spends_budget", "Provenance", "EnergyReading",
           "InferenceEnergy", "joules_per_sample", "TrainSummary", "RungReport", "sum_known", "EvalMetrics",
           "TrialResult"]

#: Every meter name a reading may carry (:data:`nas.vocab.METER_READING`).
METERS: tuple[str, ...] = METER_READING.names
#: Meters whose numbers are estimates, not measurements.
ESTIMATE_METERS: frozenset[str] = frozenset(METER_READING.where(lambda t: t.always_estimate))


@dataclass(frozen=True)
class Provenance:
    """Where and how a reading was taken.

    A field that could not be read is ``None`` and ``absent`` says why (e.g.
    ``{"power_limit_w": "no GPU: CPU-only machine"}``).
    """

    meter: str
    kernels: str
    device: str  # "cpu" or "cuda:N"
    device_name: str | None = None
    device_uuid: str | None = None
    driver_version: str | None = None
    power_limit_w: float | None = None
    temperature_before_c: float | None = None
    temperature_after_c: float | None = None
    sm_clock_mhz: float | None = None
    dtype: str | None = None
    batch_size: int | None = None
    seq_len: int | None = None
    n_windows: int | None = None
    window_s: float | None = None
    serving_form: str | None = None
    cpu_mode: str | None = None  # codecarbon/estimate: how CPU energy was derived
    versions: dict[str, str] = field(default_factory=dict)
    host_id: str | None = None
    time_utc: str | None = None
    absent: dict[str, str] = field(default_factory=dict)
    #: What was observed of other work on the device during the windows (see ``evaluators.lane``):
    #: ``{"observed_by": ..., "others_cpu_s": ..., ...}``; empty when nothing was watched.
    device_use: dict[str, Any] = field(default_factory=dict)
    #: Taken on the built, compressed model before it trained (measure-first, ARCHITECTURE decision 12).
    before_training: bool = False
    #: Taken again, with more windows, to settle a tie within noise on the front before the search ended
    #: (``front.ties``); the reading it replaced as the trial's reading of record stays in the readings table.
    tie_break: bool = False

    @property
    def hardware_fingerprint(self) -> str:
        """Fronts are compared per fingerprint: the device model (not the individual board)."""
        return self.device_name or self.device

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Provenance:
        """Rebuild from :meth:`to_dict` output."""
        return cls(**d)


def sum_known(values: list[float | None]) -> float | None:
    """The sum, or None when any part is unknown (an unknown part is never read as 0)."""
    if not values or any(v is None for v in values):
        return None
    return float(sum(v for v in values if v is not None))


@dataclass(frozen=True)
class EnergyReading:
    """One energy window from :meth:`evaluators.meters.EnergyMeter.end`.

    ``energy_j`` is the total over the window for the meter's scope (GPU board for NVML; CPU+GPU+RAM for
    CodeCarbon; CPU for the estimate). ``None`` means the meter gave no value: never read it as 0.
    """

    meter: str
    is_estimate: bool
    energy_j: float | None
    duration_s: float
    gpu_energy_j: float | None = None
    cpu_energy_j: float | None = None
    ram_energy_j: float | None = None
    co2eq_g: float | None = None
    device_uuid: str | None = None
    exclusive: bool = True
    cpu_mode: str | None = None
    notes: str = ""

    @property
    def avg_power_w(self) -> float | None:
        """Mean power over the window in watts; None when the energy is unknown or the window is empty."""
        if self.energy_j is None or self.duration_s <= 0:
            return None
        return self.energy_j / self.duration_s

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EnergyReading:
        """Rebuild from :meth:`to_dict` output."""
        return cls(**d)


@dataclass(frozen=True)
class InferenceEnergy:
    """The result of the inference protocol at a declared batch size and sequence length.

    The measured quantities are joules and sample counts: ``windows_energy_j`` (what the meter read in
    each kept window), ``windows_samples`` and ``windows_duration_s``. Every J/sample figure is derived
    from them by :func:`joules_per_sample`: ``windows_j_per_sample`` per window, ``energy_per_sample_j``
    their trimmed mean (gross: what the machine drew) and ``energy_per_sample_net_j`` the same with the
    idle baseline ``idle_w``, measured just before the windows, subtracted. ``cv`` is the coefficient of
    variation of per-window J/sample. ``protocol_energy_j`` is what the whole protocol cost (warm-up,
    calibration, idle baseline, windows, latency pass): the measurement's share of the search cost.
    Records written before the windows' joules were kept have empty ``windows_*`` tuples.
    """

    meter: str
    is_estimate: bool
    energy_per_sample_j: float | None
    energy_per_sample_net_j: float | None
    idle_w: float | None
    cv: float | None
    latency_p50_ms: float
    latency_p95_ms: float
    throughput_samples_s: float
    batch_size: int
    seq_len: int
    n_windows: int
    window_s: float
    serving_form: str
    dtype: str
    kernels: str
    exclusive: bool
    windows_j_per_sample: tuple[float, ...]
    provenance: Provenance
    co2eq_g_per_sample: float | None = None
    protocol_energy_j: float | None = None
    protocol_co2eq_g: float | None = None
    windows_energy_j: tuple[float, ...] = ()
    windows_samples: tuple[int, ...] = ()
    windows_duration_s: tuple[float, ...] = ()

    @property
    def windows_total_energy_j(self) -> float | None:
        """Joules the meter read over all kept windows; ``None`` when they were not kept."""
        return float(sum(self.windows_energy_j)) if self.windows_energy_j else None

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict, provenance nested and windows as lists."""
        d = dataclasses.asdict(self)
        for key in _WINDOW_FIELDS:
            d[key] = list(getattr(self, key))
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InferenceEnergy:
        """Rebuild from :meth:`to_dict` output (older records lack the ``windows_*`` joules)."""
        d = dict(d)
        d["provenance"] = Provenance.from_dict(d["provenance"])
        for key in _WINDOW_FIELDS:
            d[key] = tuple(d.get(key, ()))
        return cls(**d)


_WINDOW_FIELDS = ("windows_j_per_sample", "windows_energy_j", "windows_samples", "windows_duration_s")


def joules_per_sample(energy_j: float, samples: int, *, idle_w: float | None = None,
                      duration_s: float = 0.0) -> float:
    """J/sample of one window: its joules over its samples (the one place J/sample is made from joules).

    With ``idle_w``, the idle baseline ``idle_w * duration_s`` is subtracted first (net J/sample).
    ``samples`` (iterations x batch size) must be positive, else ``ValueError``.
    """
    if samples <= 0:
        raise ValueError(f"a window must run at least one sample, not {samples}")
    net = energy_j - idle_w * duration_s if idle_w is not None else energy_j
    return net / samples


@dataclass(frozen=True)
class TrainSummary:
    """What brief training (or distillation, or a teacher's training) did and cost.

    ``energy_j`` covers the whole training window (rung evaluations included) and is ``None`` when the
    meter gave no number. ``provenance`` describes the device and the run like an inference reading's
    (batch size, sequence length, segments as windows), so both share one hardware fingerprint.
    ``teacher_training`` is the cost of training the teacher, when this trial trained it (a cached
    teacher costs nothing here: its joules were counted where it was trained). ``teacher_cache`` is the
    cost of computing the teacher's outputs (``evaluators.teacher_cache``) when this trial computed them,
    charged once too. Both count in :attr:`total_energy_j` and :attr:`total_co2eq_g`.
    """

    steps: int
    wall_s: float
    final_loss: float
    energy_j: float | None
    meter: str
    is_estimate: bool
    co2eq_g: float | None = None
    device: str = "cpu"
    teacher: str | None = None
    rung_accuracies: tuple[tuple[int, float], ...] = ()
    measurement_overhead_s: float = 0.0
    provenance: Provenance | None = None
    teacher_training: TrainSummary | None = None
    teacher_cache: TrainSummary | None = None

    @property
    def hardware_fingerprint(self) -> str:
        """The provenance's fingerprint, or the device when there is no provenance."""
        return self.provenance.hardware_fingerprint if self.provenance is not None else self.device

    @property
    def total_energy_j(self) -> float | None:
        """Joules of this training plus the teacher's training and outputs it paid for; None if any part is unknown."""
        extras = (self.teacher_training, self.teacher_cache)
        return sum_known([self.energy_j, *(x.total_energy_j for x in extras if x is not None)])

    @property
    def total_co2eq_g(self) -> float | None:
        """CO2eq of this training plus the teacher's training and outputs it paid for; None if any part is unknown."""
        extras = (self.teacher_training, self.teacher_cache)
        return sum_known([self.co2eq_g, *(x.total_co2eq_g for x in extras if x is not None)])

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict, the teacher's training and outputs nested."""
        d = dataclasses.asdict(self)
        d["rung_accuracies"] = [list(r) for r in self.rung_accuracies]
        d["teacher_training"] = self.teacher_training.to_dict() if self.teacher_training else None
        d["teacher_cache"] = self.teacher_cache.to_dict() if self.teacher_cache else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainSummary:
        """Rebuild from :meth:`to_dict` output (a row written before ``teacher_cache`` existed reads too)."""
        d = dict(d)
        d["rung_accuracies"] = tuple(tuple(r) for r in d.get("rung_accuracies", ()))
        if d.get("provenance") is not None:
            d["provenance"] = Provenance.from_dict(d["provenance"])
        for nested in ("teacher_training", "teacher_cache"):
            if d.get(nested) is not None:
                d[nested] = TrainSummary.from_dict(d[nested])
        return cls(**d)


@dataclass(frozen=True)
class RungReport:
    """What a worker reports at an accuracy rung: dev accuracy and what training cost so far.

    The cost travels with every rung so that a trial the scheduler stops there (or whose worker dies
    later) still has its joules counted in the study's search cost.
    """

    step: int
    accuracy: float
    train_energy_j: float | None
    co2eq_g: float | None
    wall_s: float
    meter: str
    is_estimate: bool
    measure_energy_j: float | None = None  # a measurement before training (measure-first), when one ran


@dataclass(frozen=True)
class EvalMetrics:
    """Held-out accuracy of a trained model.

    Train trains, dev selects, test reports: ``accuracy``, ``macro_f1`` and ``n_examples`` are on the
    dev split, which ASHA rungs, the sampler and the Pareto front use. ``test_*`` are on the test split,
    which nothing selects on, so they are the unbiased numbers to report. ``majority_accuracy`` is the
    dev accuracy of always predicting the most frequent dev class (the bar a useful model must clear).
    ``None`` means not measured (e.g. a record written before test splits existed).
    """

    accuracy: float
    macro_f1: float
    n_examples: int
    test_accuracy: float | None = None
    test_macro_f1: float | None = None
    n_test_examples: int | None = None
    majority_accuracy: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvalMetrics:
        """Rebuild from :meth:`to_dict` output."""
        return cls(**d)


TrialStatus = Literal["COMPLETE", "FAIL", "PRUNED"]


@dataclass(frozen=True)
class TrialResult:
    """Everything one trial produced. Returned by workers to the driver, which alone stores it."""

    candidate: Candidate
    task: str
    status: TrialStatus
    metrics: EvalMetrics | None = None
    train: TrainSummary | None = None
    inference: InferenceEnergy | None = None
    params: int | None = None
    size_bytes: int | None = None
    flops_per_sample: float | None = None
    peak_mem_bytes: int | None = None
    kernels: str | None = None
    error: str | None = None
    weights_path: str | None = None
    placement: Placement | None = None  # the device it ran on (None: recorded before placements were)
    #: Readings of the other serving forms ``measure.serving_form`` lists (``inference`` is the primary's).
    other_forms: tuple[InferenceEnergy, ...] = ()
    #: The primary form's reading before training (measure-first) of a trial that then trained; a trial
    #: stopped there has it as ``inference`` (its only reading). Its cost counts in the trial's.
    first_reading: InferenceEnergy | None = None

    # --- flat views used for objectives, tables and filters -------------------------------------
    @property
    def accuracy(self) -> float | None:
        """Dev accuracy, or None when the trial was not evaluated."""
        return self.metrics.accuracy if self.metrics else None

    @property
    def test_accuracy(self) -> float | None:
        """Test accuracy, or None when it was not measured."""
        return self.metrics.test_accuracy if self.metrics else None

    @property
    def majority_accuracy(self) -> float | None:
        """Dev accuracy of always predicting the majority class, or None when unknown."""
        return self.metrics.majority_accuracy if self.metrics else None

    @property
    def energy_per_sample_j(self) -> float | None:
        """Gross inference joules per sample, or None when not measured."""
        return self.inference.energy_per_sample_j if self.inference else None

    @property
    def energy_per_sample_net_j(self) -> float | None:
        """Inference joules per sample net of the idle baseline, or None when not measured."""
        return self.inference.energy_per_sample_net_j if self.inference else None

    @property
    def train_energy_j(self) -> float | None:
        """Joules of this trial's own training (teacher excluded), or None when unknown."""
        return self.train.energy_j if self.train else None

    @property
    def co2eq_g(self) -> float | None:
        """CO2eq of training (and of the teacher's training this trial paid for), when the meter gives it."""
        return self.train.total_co2eq_g if self.train else None

    def reported(self) -> dict[str, float | None]:
        """Metrics that are reported and filterable but never optimised.

        These are test accuracy and macro-F1 (selecting on them would make them as biased as dev), and the
        dev majority-class rate.
        """
        m = self.metrics
        return {
            "test_accuracy": m.test_accuracy if m else None,
            "test_macro_f1": m.test_macro_f1 if m else None,
            "majority_accuracy": m.majority_accuracy if m else None,
        }

    def objectives(self) -> dict[str, float | None]:
        """Every metric a study may optimise or filter on, flat (dev accuracy; see :meth:`reported`)."""
        inf = self.inference
        return {
            "accuracy": self.accuracy,
            "macro_f1": self.metrics.macro_f1 if self.metrics else None,
            "energy_per_sample_j": self.energy_per_sample_j,
            "energy_per_sample_net_j": self.energy_per_sample_net_j,
            "latency_p50_ms": inf.latency_p50_ms if inf else None,
            "latency_p95_ms": inf.latency_p95_ms if inf else None,
            "throughput_samples_s": inf.throughput_samples_s if inf else None,
            "params": float(self.params) if self.params is not None else None,
            "size_bytes": float(self.size_bytes) if self.size_bytes is not None else None,
            "flops_per_sample": self.flops_per_sample,
            "train_energy_j": self.train_energy_j,
        }

    def to_dict(self) -> dict[str, Any]:
        """Nested records plus flat copies of the headline metrics, for storage and ``jq``."""
        return {
            "candidate": self.candidate.model_dump(mode="json"),
            "task": self.task,
            "status": self.status,
            "metrics": self.metrics.to_dict() if self.metrics else None,
            "train": self.train.to_dict() if self.train else None,
            "inference": self.inference.to_dict() if self.inference else None,
            "params": self.params,
            "size_bytes": self.size_bytes,
            "flops_per_sample": self.flops_per_sample,
            "peak_mem_bytes": self.peak_mem_bytes,
            "kernels": self.kernels,
            "error": self.error,
            "weights_path": self.weights_path,
            "placement": self.placement.to_dict() if self.placement else None,
            "other_forms": [f.to_dict() for f in self.other_forms],
            "first_reading": self.first_reading.to_dict() if self.first_reading else None,
            # flat, for humans and jq
            "accuracy": self.accuracy,
            **self.reported(),
            "energy_per_sample_j": self.energy_per_sample_j,
            "energy_per_sample_net_j": self.energy_per_sample_net_j,
            "train_energy_j": self.train_energy_j,
            "co2eq_g": self.co2eq_g,
            "meter": self.inference.meter if self.inference else None,
            "is_estimate": self.inference.is_estimate if self.inference else None,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrialResult:
        """Rebuild from :meth:`to_dict` output (the flat copies are ignored)."""
        return cls(
            candidate=Candidate.model_validate(d["candidate"]),
            task=d["task"],
            status=d["status"],
            metrics=EvalMetrics.from_dict(d["metrics"]) if d.get("metrics") else None,
            train=TrainSummary.from_dict(d["train"]) if d.get("train") else None,
            inference=InferenceEnergy.from_dict(d["inference"]) if d.get("inference") else None,
            params=d.get("params"),
            size_bytes=d.get("size_bytes"),
            flops_per_sample=d.get("flops_per_sample"),
            peak_mem_bytes=d.get("peak_mem_bytes"),
            kernels=d.get("kernels"),
            error=d.get("error"),
            weights_path=d.get("weights_path"),
            placement=Placement.from_dict(d["placement"]) if d.get("placement") else None,
            other_forms=tuple(InferenceEnergy.from_dict(f) for f in d.get("other_forms") or ()),
            first_reading=InferenceEnergy.from_dict(d["first_reading"]) if d.get("first_reading") else None,
        )

