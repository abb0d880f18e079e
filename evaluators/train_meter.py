"""The energy book of one trial's training: every joule metered, whatever way the trial ends.

Training is metered in segments of one ``train`` window: :meth:`TrainingMeter.split` closes the running
segment and opens the next (at each accuracy rung), so the joules spent so far are known when the
scheduler stops the trial at that rung, or when its worker dies later. :meth:`TrainingMeter.stop` closes
the last segment, also on the way out of a failing trial, so a trained-then-failed trial keeps its cost.

A sum over segments is ``None`` as soon as one segment has no number: unknown stays unknown, never 0.
The summary carries the same provenance as an inference reading (device, host, versions, shape), so a
trial's training and inference readings share one hardware fingerprint.
"""

from __future__ import annotations

import statistics
from typing import Any

from evaluators.meters import EnergyMeter
from evaluators.provenance import TrainShape, collect_provenance, device_snapshot
from nas.records import EnergyReading, RungReport, TrainSummary, sum_known

__all__ = ["TrainingMeter", "TRAIN_KERNELS"]

#: What runs while training (for the reading's provenance).
TRAIN_KERNELS = "training: torch eager (fp32, or bf16 autocast on CUDA)"


class TrainingMeter:
    """Segments of one ``train`` window on ``meter``.

    Args:
        meter: The trial's meter (not closed here).
        device: ``"cpu"`` or ``"cuda:N"``.
        batch_size: Training batch size (provenance).
        seq_len: Sequence length of the task's rows (provenance).
        key: The meter window name.
    """

    def __init__(self, meter: EnergyMeter, device: str, *, batch_size: int, seq_len: int,
                 key: str = "train") -> None:
        self.meter = meter
        self.device = device
        self.key = key
        self._shape = TrainShape(batch_size=batch_size, seq_len=seq_len)
        self._segments: list[EnergyReading] = []
        self._before: dict[str, Any] | None = None
        self._open = False

    # --- the window ------------------------------------------------------------------------------
    def start(self) -> None:
        """Open the first segment (and take the device snapshot the provenance starts from)."""
        if self._before is None:
            self._before = device_snapshot(self.device)
        if not self._open:
            self.meter.begin(self.key)
            self._open = True

    def split(self) -> None:
        """Close the running segment and open the next one (at a rung)."""
        if self._open:
            self._segments.append(self.meter.end(self.key))
            self.meter.begin(self.key)

    def stop(self) -> None:
        """Close the running segment; safe to call twice, and on the way out of a failure."""
        if self._open:
            self._open = False
            self._segments.append(self.meter.end(self.key))

    # --- what it cost so far ---------------------------------------------------------------------
    @property
    def energy_j(self) -> float | None:
        """Joules of the closed segments; None before the first one closes or when any is unknown."""
        return sum_known([r.energy_j for r in self._segments])

    @property
    def co2eq_g(self) -> float | None:
        """CO2eq of the closed segments; None before the first one closes or when any is unknown."""
        return sum_known([r.co2eq_g for r in self._segments])

    @property
    def wall_s(self) -> float:
        """Seconds covered by the closed segments."""
        return float(sum(r.duration_s for r in self._segments))

    @property
    def is_estimate(self) -> bool:
        """Whether the meter or any closed segment gives an estimate, not a measurement."""
        return bool(self.meter.is_estimate or any(r.is_estimate for r in self._segments))

    def rung(self, step: int, accuracy: float, teacher_training: TrainSummary | None = None,
             teacher_cache: TrainSummary | None = None) -> RungReport:
        """Split the window and report the rung with the cost so far.

        A teacher trained here (``teacher_training``) and teacher outputs computed here
        (``teacher_cache``) are included.
        """
        self.split()
        energy, co2 = self.energy_j, self.co2eq_g
        for extra in (teacher_training, teacher_cache):
            if extra is not None:
                energy = sum_known([energy, extra.total_energy_j])
                co2 = sum_known([co2, extra.total_co2eq_g])
        return RungReport(step=step, accuracy=accuracy, train_energy_j=energy, co2eq_g=co2,
                          wall_s=self.wall_s, meter=self.meter.name, is_estimate=self.is_estimate)

    def summary(self, *, steps: int, final_loss: float, teacher: str | None = None,
                rung_accuracies: tuple[tuple[int, float], ...] = (),
                teacher_training: TrainSummary | None = None, dtype: str | None = None,
                teacher_cache: TrainSummary | None = None) -> TrainSummary:
        """The stored record of this training (call after :meth:`stop`)."""
        self.stop()
        before = self._before or device_snapshot(self.device)
        durations = [r.duration_s for r in self._segments]
        prov = collect_provenance(
            self.meter.name, TRAIN_KERNELS, self.device, self._shape, before, device_snapshot(self.device),
            n_windows=len(self._segments), window_s=statistics.fmean(durations) if durations else 0.0,
            cpu_mode=self.meter.cpu_mode, dtype=dtype,
        )
        return TrainSummary(
            steps=steps, wall_s=self.wall_s, final_loss=final_loss, energy_j=self.energy_j,
            meter=self.meter.name, is_estimate=self.is_estimate, co2eq_g=self.co2eq_g, device=self.device,
            teacher=teacher, rung_accuracies=rung_accuracies, provenance=prov,
            teacher_training=teacher_training, teacher_cache=teacher_cache,
        )
