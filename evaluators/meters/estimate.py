"""The estimate meter: CPU energy as TDP x process utilisation. An estimate, never a measurement.

Used where no energy counter can be read. The machines this project is developed and tested on have no
RAPL (no ``/sys/class/powercap``), so on them every CPU energy number is an estimate and says so.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Any, ClassVar

from evaluators.meters.base import EnergyMeter
from nas.records import EnergyReading

__all__ = ["EstimateMeter", "ESTIMATE_NOTE"]

#: The phrase every estimate reading carries in ``notes``.
ESTIMATE_NOTE = "estimate: TDP x utilisation, not a measurement"


@dataclass(frozen=True)
class _CpuStamp:
    wall_s: float
    cpu_s: float


class EstimateMeter(EnergyMeter):
    """CPU energy estimated as TDP x process CPU utilisation (+ an optional idle share). Never measured.

    ``utilisation = clip(process CPU seconds / (wall seconds x n_cpus), 0, 1)`` where the process CPU
    seconds come from :func:`time.process_time` (all threads of this process, user + system) and
    ``n_cpus`` is :func:`os.cpu_count` (the TDP is the whole package's). Then
    ``energy_j = (tdp_w x utilisation + idle_fraction x tdp_w) x wall_s``.

    It covers this process's CPU only: no RAM, no GPU, no other process. Use it where no counter can be
    read (these development machines have no RAPL); its readings are always ``is_estimate=True``.

    Args:
        device: Recorded only.
        tdp_w: CPU package TDP in watts (``MeasureConfig.cpu_tdp_w``).
        idle_fraction: Share of TDP drawn regardless of load, in [0, 1]. 0 (the default) attributes
            only load-proportional power to the work, so an idle window reads about 0 J.
        n_cpus: Logical CPUs the TDP covers; defaults to :func:`os.cpu_count`.
    """

    name: ClassVar[str] = "estimate"
    is_estimate: ClassVar[bool] = True

    def __init__(
        self,
        device: str = "cpu",
        *,
        tdp_w: float = 65.0,
        idle_fraction: float = 0.0,
        n_cpus: int | None = None,
    ) -> None:
        super().__init__(device)
        if not (tdp_w > 0 and math.isfinite(tdp_w)):
            raise ValueError(f"tdp_w must be a positive number of watts (got {tdp_w!r})")
        if not 0.0 <= idle_fraction <= 1.0:
            raise ValueError(f"idle_fraction must be in [0, 1] (got {idle_fraction!r})")
        cpus = n_cpus if n_cpus is not None else (os.cpu_count() or 1)
        if cpus < 1:
            raise ValueError(f"n_cpus must be >= 1 (got {cpus!r})")
        self.tdp_w = float(tdp_w)
        self.idle_fraction = float(idle_fraction)
        self.n_cpus = int(cpus)

    @property
    def cpu_mode(self) -> str | None:
        """Always ``tdp-x-process-utilisation``: TDP scaled by this process's CPU use."""
        return "tdp-x-process-utilisation"

    def _open(self, key: str) -> _CpuStamp:
        return _CpuStamp(wall_s=time.perf_counter(), cpu_s=time.process_time())

    def _close(self, key: str, state: Any) -> EnergyReading:
        wall_s = time.perf_counter() - state.wall_s
        cpu_s = time.process_time() - state.cpu_s
        utilisation = min(max(cpu_s / (wall_s * self.n_cpus), 0.0), 1.0) if wall_s > 0 else 0.0
        power_w = self.tdp_w * utilisation + self.idle_fraction * self.tdp_w
        energy_j = power_w * max(wall_s, 0.0)
        return EnergyReading(
            meter=self.name,
            is_estimate=True,
            energy_j=energy_j,
            duration_s=wall_s,
            cpu_energy_j=energy_j,
            cpu_mode=self.cpu_mode,
            notes=(
                f"{ESTIMATE_NOTE} (tdp_w={self.tdp_w:g}, utilisation={utilisation:.3f} of "
                f"{self.n_cpus} CPUs, idle_fraction={self.idle_fraction:g}; this process's CPU only)"
            ),
        )
