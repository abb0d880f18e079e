"""The teacher as a measured reference point, and the ratios of a student to it (layer L0).

A study with a teacher assesses it like a trial, with the students' own protocol (same meter, batch size
and sequence length), and keeps the record as a :class:`TeacherReference`. Every display (``nas pareto``,
``nas show``, the dashboard, the export card) then shows the teacher's point and each model's
:class:`TeacherRatios` to it, all made by :func:`ratios_to_teacher`.

The teacher's own search cost (fine-tuning it and building its outputs cache, when this study caused
them, plus measuring it) counts once in the study's search cost; a teacher fine-tuned by an earlier
study and found in the cache costs this study nothing but its measurement.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from nas.records import TrainSummary, TrialResult

__all__ = ["TeacherReference", "TeacherRatios", "ratios_to_teacher", "ratio_text"]


def _finite(v: float | None) -> float | None:
    return v if v is not None and math.isfinite(v) else None


def _known_sum(values: list[float | None]) -> float | None:
    """The sum of the known parts; ``None`` when no part is known."""
    known = [v for v in values if v is not None]
    return float(sum(known)) if known else None


@dataclass(frozen=True)
class TeacherReference:
    """The teacher of a study, assessed like a trial, and what it cost this study.

    Attributes:
        name: Which teacher: its folder, or ``auto:<cache key>`` for a self-trained one.
        source: How it was obtained, for humans (e.g. ``"hf folder"``, ``"fine-tuned on builtin:sst2"``).
        result: The teacher assessed like a trial (``evaluators.pipeline.assess``): dev and test accuracy,
            inference energy with its meter and ``is_estimate``, parameters, FLOPs, size. Its ``train``
            part, if any, is not counted: the teacher's training cost is ``fine_tune``.
        fine_tune: Fine-tuning the teacher on the task, when this study caused it (``None`` when it was
            already in the cache, or not fine-tuned).
        cache_build: Building the teacher-outputs cache, when this study caused it.
    """

    name: str
    source: str
    result: TrialResult
    fine_tune: TrainSummary | None = None
    cache_build: TrainSummary | None = None

    @property
    def accuracy(self) -> float | None:
        """Dev accuracy: the number a student's ``accuracy`` (also dev) is compared with."""
        return self.result.accuracy

    @property
    def dev_accuracy(self) -> float | None:
        """Dev accuracy (the same as :attr:`accuracy`, named for displays that show both splits)."""
        return self.result.accuracy

    @property
    def test_accuracy(self) -> float | None:
        """Test accuracy, when measured (reported, never compared on)."""
        return self.result.test_accuracy

    @property
    def energy_per_sample_j(self) -> float | None:
        """Gross inference joules per sample under the students' protocol; ``None`` when not measured."""
        return self.result.energy_per_sample_j

    @property
    def meter(self) -> str | None:
        """The meter behind :attr:`energy_per_sample_j`; ``None`` when there is no measurement."""
        return self.result.inference.meter if self.result.inference else None

    @property
    def is_estimate(self) -> bool:
        """Whether :attr:`energy_per_sample_j` is an estimate rather than a measurement."""
        return bool(self.result.inference and self.result.inference.is_estimate)

    @property
    def hardware_fingerprint(self) -> str | None:
        """The device model the teacher was measured on; ``None`` when there is no measurement."""
        return self.result.inference.provenance.hardware_fingerprint if self.result.inference else None

    @property
    def train_energy_j(self) -> float | None:
        """Joules of fine-tuning plus building the outputs cache (known parts); ``None`` when neither is known."""
        return _known_sum([p.total_energy_j for p in (self.fine_tune, self.cache_build) if p is not None])

    @property
    def measure_energy_j(self) -> float | None:
        """Joules the measurement protocol drew while assessing the teacher; ``None`` when not metered."""
        inf = self.result.inference
        return _finite(inf.protocol_energy_j) if inf is not None else None

    @property
    def search_cost_j(self) -> float | None:
        """What the teacher cost this study: fine-tuning, cache build and measurement (known parts)."""
        return _known_sum([self.train_energy_j, self.measure_energy_j])

    @property
    def search_co2eq_g(self) -> float | None:
        """CO2eq of :attr:`search_cost_j` (known parts); ``None`` when no part has a figure."""
        parts = [p.total_co2eq_g for p in (self.fine_tune, self.cache_build) if p is not None]
        inf = self.result.inference
        if inf is not None:
            parts.append(inf.protocol_co2eq_g)
        return _known_sum(parts)

    @property
    def cost_is_estimate(self) -> bool:
        """Whether any part of :attr:`search_cost_j` is an estimate."""
        parts = [p.is_estimate for p in (self.fine_tune, self.cache_build) if p is not None]
        return any(parts) or self.is_estimate

    def ratios_of(self, result: TrialResult) -> TeacherRatios:
        """A trial result's ratios to this teacher (:func:`ratios_to_teacher` with the result's numbers)."""
        inf = result.inference
        return ratios_to_teacher(result.accuracy, result.energy_per_sample_j, inf.meter if inf else None, self,
                                 hardware=inf.provenance.hardware_fingerprint if inf else None,
                                 batch_size=inf.batch_size if inf else None, seq_len=inf.seq_len if inf else None)

    def point(self) -> dict[str, Any]:
        """The teacher's point, compact: what each row of a front table is compared with."""
        return {"name": self.name, "accuracy": self.accuracy, "test_accuracy": self.test_accuracy,
                "energy_per_sample_j": self.energy_per_sample_j, "meter": self.meter,
                "is_estimate": self.is_estimate, "hardware": self.hardware_fingerprint}

    def summary(self) -> dict[str, Any]:
        """The teacher's point and cost as a flat JSON-ready dict (what tables and APIs show)."""
        inf = self.result.inference
        return {
            "name": self.name,
            "source": self.source,
            "accuracy": self.accuracy,
            "dev_accuracy": self.dev_accuracy,
            "test_accuracy": self.test_accuracy,
            "energy_per_sample_j": self.energy_per_sample_j,
            "energy_per_sample_net_j": self.result.energy_per_sample_net_j,
            "meter": self.meter,
            "is_estimate": self.is_estimate,
            "hardware": self.hardware_fingerprint,
            "batch_size": inf.batch_size if inf else None,
            "seq_len": inf.seq_len if inf else None,
            "latency_p50_ms": inf.latency_p50_ms if inf else None,
            "params": self.result.params,
            "size_bytes": self.result.size_bytes,
            "flops_per_sample": self.result.flops_per_sample,
            "fine_tuned_here": self.fine_tune is not None,
            "cache_built_here": self.cache_build is not None,
            "train_energy_j": self.train_energy_j,
            "measure_energy_j": self.measure_energy_j,
            "search_cost_j": self.search_cost_j,
            "search_co2eq_g": self.search_co2eq_g,
            "cost_is_estimate": self.cost_is_estimate,
        }

    def to_dict(self) -> dict[str, Any]:
        """The record as a JSON-ready dict (nested records through their own ``to_dict``)."""
        return {
            "name": self.name,
            "source": self.source,
            "result": self.result.to_dict(),
            "fine_tune": self.fine_tune.to_dict() if self.fine_tune else None,
            "cache_build": self.cache_build.to_dict() if self.cache_build else None,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TeacherReference:
        """Rebuild from :meth:`to_dict` output."""
        return cls(
            name=str(d["name"]),
            source=str(d.get("source", "")),
            result=TrialResult.from_dict(d["result"]),
            fine_tune=TrainSummary.from_dict(d["fine_tune"]) if d.get("fine_tune") else None,
            cache_build=TrainSummary.from_dict(d["cache_build"]) if d.get("cache_build") else None,
        )


@dataclass(frozen=True)
class TeacherRatios:
    """A model's numbers over its teacher's.

    Attributes:
        accuracy_ratio: Dev accuracy over the teacher's dev accuracy (``0.97`` keeps 97% of it);
            ``None`` when either is unknown.
        energy_ratio: J/sample over the teacher's J/sample (``0.18`` spends 18% of its joules); ``None``
            unless both were measured by the same meter (and, where known, on the same hardware with
            the same batch size and sequence length).
        note: Why a ratio is missing (e.g. ``different meters: codecarbon vs nvml-counter``); empty
            when both are there.
    """

    accuracy_ratio: float | None
    energy_ratio: float | None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The ratios as the JSON fields every output uses."""
        return {"accuracy_ratio_to_teacher": self.accuracy_ratio, "energy_ratio_to_teacher": self.energy_ratio,
                "teacher_ratio_note": self.note}


def _ratio(value: float | None, base: float | None) -> float | None:
    value, base = _finite(value), _finite(base)
    if value is None or base is None or base <= 0:
        return None
    return value / base


def _energy_problem(energy: float | None, meter: str | None, ref: TeacherReference, hardware: str | None,
                    batch_size: int | None, seq_len: int | None) -> str | None:
    """Why the J/sample of a model and of its teacher cannot be compared; ``None`` when they can."""
    inf = ref.result.inference
    if _finite(energy) is None:
        return "no J/sample for this model"
    if inf is None or _finite(ref.energy_per_sample_j) is None or (ref.energy_per_sample_j or 0.0) <= 0:
        return "the teacher's J/sample was not measured"
    if meter != ref.meter:
        return f"different meters: {meter or 'none'} vs {ref.meter}"
    if hardware is not None and ref.hardware_fingerprint is not None and hardware != ref.hardware_fingerprint:
        return f"different hardware: {hardware} vs {ref.hardware_fingerprint}"
    if (batch_size is not None and batch_size != inf.batch_size) or (seq_len is not None and seq_len != inf.seq_len):
        return (f"different protocol: batch {batch_size} x seq {seq_len} vs the teacher's batch {inf.batch_size} "
                f"x seq {inf.seq_len}")
    return None


def ratios_to_teacher(accuracy: float | None, energy_per_sample_j: float | None, meter: str | None,
                      ref: TeacherReference, *, hardware: str | None = None, batch_size: int | None = None,
                      seq_len: int | None = None) -> TeacherRatios:
    """A model's accuracy ratio and J/sample ratio to its teacher (the one place both are made).

    Args:
        accuracy: The model's dev accuracy.
        energy_per_sample_j: The model's gross inference J/sample.
        meter: The meter behind ``energy_per_sample_j``.
        ref: The teacher.
        hardware: The model's hardware fingerprint; when given and the teacher's is known, they must match.
        batch_size: The batch size of the model's measurement; when given, it must be the teacher's.
        seq_len: The sequence length of the model's measurement; when given, it must be the teacher's.

    Returns:
        The ratios; a ratio that cannot be made is ``None`` and ``note`` says why.
    """
    notes = []
    acc = _ratio(accuracy, ref.accuracy)
    if acc is None:
        notes.append("no dev accuracy for this model" if _finite(accuracy) is None
                     else "the teacher's dev accuracy is unknown")
    problem = _energy_problem(energy_per_sample_j, meter, ref, hardware, batch_size, seq_len)
    energy = None if problem is not None else _ratio(energy_per_sample_j, ref.energy_per_sample_j)
    if problem is not None:
        notes.append(problem)
    return TeacherRatios(accuracy_ratio=acc, energy_ratio=energy, note="; ".join(notes))


def ratio_text(value: float | None) -> str:
    """A ratio as displays print it: ``0.97x``, ``0.034x`` below 0.1, or ``-`` when there is none."""
    if value is None:
        return "-"
    return f"{value:.2f}x" if value >= 0.1 else f"{value:.2g}x"
