"""CodeCarbon as a meter: CPU, GPU and RAM energy plus CO2eq, offline, one long-lived tracker.

``codecarbon`` is imported only when the meter is built (``CODECARBON_LOG_LEVEL`` is set to ``error``
first, unless the user set it). One :class:`codecarbon.OfflineEmissionsTracker` lives as long as the
meter; windows are CodeCarbon *tasks* (``start_task`` / ``stop_task``). No CSV is written.

What CodeCarbon 3.3.2 returns (read from its source, ``emissions_tracker.py`` and
``output_methods/emissions_data.py``): ``stop_task()`` returns an ``EmissionsData`` delta whose
``cpu_energy``, ``gpu_energy``, ``ram_energy`` and ``energy_consumed`` are kWh and ``emissions`` is kg
CO2eq, or ``None`` when the task is unknown; ``start_task`` may return early (logging only) when the
tracker failed to initialise. Its GPU energy is the NVML counter delta; its CPU energy is RAPL where
readable, else ``cpu_load`` (TDP x load) or a constant; its RAM energy is always a model (about 5 W per
estimated DIMM). So on these machines every CodeCarbon total is partly an estimate.

CodeCarbon allows only one active task at a time. To honour overlapping windows, the meter runs
*segments*: every ``begin``/``end`` closes the running task, adds its energy to every open window, and
starts a new task if any window is still open.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

from evaluators.meters.base import EnergyMeter, synchronize
from evaluators.meters.nvml import init_nvml, load_pynvml, resolve_nvml_device, shutdown_nvml
from nas.errors import MeterUnavailableError
from nas.records import EnergyReading

__all__ = ["CodeCarbonMeter", "codecarbon_is_estimate", "MEASURED_CPU_MODES"]

logger = logging.getLogger(__name__)

_J_PER_KWH = 3.6e6
_G_PER_KG = 1000.0

#: CodeCarbon CPU modes that read a hardware energy counter (everything else is a model).
MEASURED_CPU_MODES: frozenset[str] = frozenset({"rapl", "windows_emi", "power_gadget", "powermetrics"})

_MODE_NAMES = {
    "intel_rapl": "rapl",
    "windows_emi": "windows_emi",
    "intel_power_gadget": "power_gadget",
    "apple_powermetrics": "powermetrics",
    "cpu_load": "cpu_load",
    "constant": "constant",
}


def codecarbon_is_estimate(cpu_mode: str | None, *, includes_ram: bool) -> bool:
    """Whether a CodeCarbon total contains an estimated part.

    The total is measured only if the CPU part came from a hardware counter (RAPL and the like) *and*
    no modelled RAM energy is included. CodeCarbon always models RAM, so in practice this is True.

    Args:
        cpu_mode: The normalised CPU mode (``"rapl"``, ``"cpu_load"``, ``"constant"``, ``"unknown"``...).
        includes_ram: Whether the total includes CodeCarbon's RAM model.
    """
    return includes_ram or cpu_mode not in MEASURED_CPU_MODES


def _kwh(value: Any) -> float | None:
    """A CodeCarbon number, or None when it is missing or not finite (never turned into 0)."""
    if value is None:
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


@dataclass
class _Acc:
    """Energy gathered for one open window across segments; a part becomes None once it is unknown."""

    t0_s: float
    parts: dict[str, float | None] = field(
        default_factory=lambda: {"cpu": 0.0, "gpu": 0.0, "ram": 0.0, "total": 0.0, "co2_kg": 0.0}
    )
    n_segments: int = 0

    def add(self, seg: dict[str, float | None]) -> None:
        self.n_segments += 1
        for k, v in seg.items():
            cur = self.parts[k]
            self.parts[k] = None if cur is None or v is None else cur + v


class CodeCarbonMeter(EnergyMeter):
    """CPU + GPU + RAM energy and CO2eq from CodeCarbon, offline.

    ``energy_j`` is CodeCarbon's total (CPU + GPU + RAM, PUE 1). Readings are ``is_estimate=True``
    whenever any part is modelled (see :func:`codecarbon_is_estimate`; always, on machines without
    RAPL). ``gpu_energy_j`` is None when CodeCarbon tracks no GPU (it reports 0.0 then, which would read
    as "measured zero"). ``cpu_mode`` names how the CPU number was made.

    Args:
        device: ``"cpu"`` or ``"cuda:N"``; on CUDA only that GPU is tracked.
        country_iso_code: Three-letter country code for the carbon intensity (offline).
        measure_power_secs: CodeCarbon's periodic interval; tasks pause that scheduler, so it only
            matters for its own monitor. Kept small so short trials are not starved.
        flag: The ``--meter`` value, for error messages.

    Raises:
        MeterUnavailableError: If codecarbon is not installed or its tracker fails to initialise.
    """

    name: ClassVar[str] = "codecarbon"
    is_estimate: ClassVar[bool] = True

    def __init__(
        self,
        device: str = "cpu",
        *,
        country_iso_code: str = "USA",
        measure_power_secs: float = 1.0,
        flag: str = "codecarbon",
    ) -> None:
        super().__init__(device)
        os.environ.setdefault("CODECARBON_LOG_LEVEL", "error")
        try:
            from codecarbon import OfflineEmissionsTracker
        except ImportError as e:
            raise MeterUnavailableError(
                f"--meter {flag}: codecarbon is not installed ({e})",
                fix="pip install 'energy-nas[codecarbon]', or use --meter auto or estimate",
            ) from e
        kwargs: dict[str, Any] = {
            "country_iso_code": country_iso_code,
            "log_level": "error",
            "measure_power_secs": measure_power_secs,
            "allow_multiple_runs": True,
            "project_name": "energy-nas",
        }
        gpu_ids = self._gpu_ids(device)
        if gpu_ids is not None:
            kwargs["gpu_ids"] = gpu_ids
        try:
            # output_methods=[] is 3.x's way to write nothing; older versions only know save_to_file.
            tracker = OfflineEmissionsTracker(output_methods=[], **kwargs)
        except TypeError:
            tracker = OfflineEmissionsTracker(save_to_file=False, **kwargs)
        # Its __init__ swallows exceptions: check it really initialised.
        if not hasattr(tracker, "_hardware") or getattr(tracker, "_another_instance_already_running", False):
            raise MeterUnavailableError(
                f"--meter {flag}: the CodeCarbon tracker failed to initialise (see its log)",
                fix="use --meter auto or estimate",
            )
        self._tracker: Any = tracker
        self._warm_up_hardware()
        self._cpu_mode = self._detect_cpu_mode()
        self._has_gpu = self._detect_gpu()
        self._has_ram = self._detect_ram()
        self._segment_open = False

    # --- capability -------------------------------------------------------------------------
    @classmethod
    def available(cls, device: str = "cpu") -> bool:
        """True when codecarbon is importable (its tracker is not built, which takes seconds)."""
        return importlib.util.find_spec("codecarbon") is not None

    @property
    def cpu_mode(self) -> str | None:
        """How CodeCarbon derives CPU energy here (e.g. ``rapl``; ``unknown`` when undetected)."""
        return self._cpu_mode

    @staticmethod
    def _gpu_ids(device: str) -> list[int] | None:
        if not device.startswith("cuda"):
            return None
        try:
            p = load_pynvml("codecarbon")
            init_nvml(p, "codecarbon")
            try:
                dev = resolve_nvml_device(p, device, flag="codecarbon")
            finally:
                shutdown_nvml(p)
            return [dev.physical_index] if dev.physical_index is not None else None
        except MeterUnavailableError as e:
            logger.debug("codecarbon: could not resolve %s to an NVML index (%s); tracking all GPUs", device, e)
            return None

    def _warm_up_hardware(self) -> None:
        # Hardware detection (cpuinfo, TDP tables, NVML) takes seconds on the first task; do it now so
        # the first window does not pay for it. Private API: best effort.
        ready = getattr(self._tracker, "_ensure_hardware_ready", None)
        if callable(ready):
            try:
                ready()
            except Exception as e:  # noqa: BLE001
                logger.debug("codecarbon hardware warm-up failed: %s", e)

    def _hardware(self) -> list[Any]:
        return list(getattr(self._tracker, "_hardware", None) or [])

    def _detect_cpu_mode(self) -> str:
        for hw in self._hardware():
            if type(hw).__name__ in ("CPU", "AppleSiliconChip", "Raspberry"):
                mode = getattr(hw, "_mode", None)
                if mode is None and type(hw).__name__ == "AppleSiliconChip":
                    return "powermetrics"
                if mode is None and type(hw).__name__ == "Raspberry":
                    return "raspberry-pmic"
                return _MODE_NAMES.get(str(mode), str(mode)) if mode is not None else "unknown"
        return "unknown"

    def _detect_gpu(self) -> bool:
        return any(type(hw).__name__ == "GPU" for hw in self._hardware())

    def _detect_ram(self) -> bool:
        names = [type(hw).__name__ for hw in self._hardware()]
        return "RAM" in names or not names

    # --- segments -----------------------------------------------------------------------------
    def _start_segment(self) -> None:
        synchronize(self.device)
        try:
            self._tracker.start_task(f"energy-nas-{time.monotonic_ns()}")
            self._segment_open = getattr(self._tracker, "_active_task", True) is not None
        except Exception as e:  # noqa: BLE001 - codecarbon failures become None readings
            logger.warning("codecarbon start_task failed: %s", e)
            self._segment_open = False
            for acc in self._windows.values():
                acc.add(dict.fromkeys(acc.parts))

    def _close_segment(self) -> None:
        if not self._segment_open:
            return
        synchronize(self.device)
        try:
            data = self._tracker.stop_task()
        except Exception as e:  # noqa: BLE001
            logger.warning("codecarbon stop_task failed: %s", e)
            data = None
        self._segment_open = False
        if data is None:
            seg: dict[str, float | None] = {"cpu": None, "gpu": None, "ram": None, "total": None, "co2_kg": None}
        else:
            seg = {
                "cpu": _kwh(getattr(data, "cpu_energy", None)),
                "gpu": _kwh(getattr(data, "gpu_energy", None)),
                "ram": _kwh(getattr(data, "ram_energy", None)),
                "total": _kwh(getattr(data, "energy_consumed", None)),
                "co2_kg": _kwh(getattr(data, "emissions", None)),
            }
        for acc in self._windows.values():
            acc.add(seg)

    def _open(self, key: str) -> _Acc:
        self._close_segment()
        acc = _Acc(t0_s=time.perf_counter())
        # The base class registers the window after _open returns; start the segment then (see begin).
        return acc

    def begin(self, key: str) -> None:
        """Open the window ``key`` and start a tracker segment for it."""
        super().begin(key)
        self._start_segment()

    def _close(self, key: str, state: Any) -> EnergyReading:
        # The window was already popped by the base class: close the running segment for it first.
        self._windows[key] = state
        self._close_segment()
        del self._windows[key]
        if self._windows:
            self._start_segment()
        duration_s = time.perf_counter() - state.t0_s
        p = state.parts
        total_kwh = p["total"]
        gpu_j = p["gpu"] * _J_PER_KWH if p["gpu"] is not None and self._has_gpu else None
        is_est = codecarbon_is_estimate(self._cpu_mode, includes_ram=self._has_ram)
        parts = [f"cpu: {self._cpu_mode}{' (estimate)' if self._cpu_mode not in MEASURED_CPU_MODES else ''}"]
        parts.append("ram: model (estimate)" if self._has_ram else "ram: not tracked")
        parts.append("gpu: NVML counter" if self._has_gpu else "gpu: none tracked")
        notes = "codecarbon " + "; ".join(parts)
        if is_est:
            notes = "estimate (partly modelled, not a measurement): " + notes
        if total_kwh is None:
            notes += "; codecarbon returned no value"
        return EnergyReading(
            meter=self.name,
            is_estimate=is_est,
            energy_j=total_kwh * _J_PER_KWH if total_kwh is not None else None,
            duration_s=duration_s,
            gpu_energy_j=gpu_j,
            cpu_energy_j=p["cpu"] * _J_PER_KWH if p["cpu"] is not None else None,
            ram_energy_j=p["ram"] * _J_PER_KWH if p["ram"] is not None else None,
            co2eq_g=p["co2_kg"] * _G_PER_KG if p["co2_kg"] is not None else None,
            cpu_mode=self._cpu_mode,
            notes=notes,
        )

    def close(self) -> None:
        """Close the running segment and stop CodeCarbon's schedulers. Idempotent."""
        if getattr(self, "_tracker", None) is not None:
            self._close_segment()
            try:
                stop = getattr(self._tracker, "_scheduler_monitor_power", None)
                if stop is not None:
                    stop.stop()
                sched = getattr(self._tracker, "_scheduler", None)
                if sched is not None:
                    sched.stop()
            except Exception as e:  # noqa: BLE001
                logger.debug("codecarbon scheduler stop failed: %s", e)
            self._tracker = None
        super().close()
