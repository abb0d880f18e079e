"""NVML meters: the total-energy counter, and integrated power for GPUs without it.

``pynvml`` (the ``nvidia-ml-py`` package) is imported only when a meter is built, never at module import.

Facts this follows (see ``ENERGY.md``): ``nvmlDeviceGetTotalEnergyConsumption`` is a monotonic mJ counter
on Volta and newer that steps about every 100 ms; one read costs about 3 ms, so it is read twice per
window and never per batch. ``nvmlDeviceGetPowerUsage`` is a trailing 1 s average on Ampere and newer,
so the power meter prefers the instant-power field ``NVML_FI_DEV_POWER_INSTANT`` (186). Energy is per
board, not per process.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from dataclasses import dataclass
from types import ModuleType
from typing import Any, ClassVar

from evaluators.meters.base import EnergyMeter, synchronize
from nas.errors import MeterUnavailableError
from nas.records import EnergyReading

__all__ = [
    "NvmlCounterMeter",
    "NvmlPowerMeter",
    "CounterNotSupportedError",
    "NVML_FI_DEV_POWER_INSTANT",
    "resolve_nvml_device",
    "visible_index",
    "load_pynvml",
    "init_nvml",
    "shutdown_nvml",
]

logger = logging.getLogger(__name__)

#: ``nvmlDeviceGetFieldValues`` field id of instantaneous board power (mW).
NVML_FI_DEV_POWER_INSTANT = 186

_FALLBACK_FIX = "use --meter auto, codecarbon or estimate"

# c_nvmlValue_t member for each NVML_VALUE_TYPE_* code.
_VALUE_MEMBERS = {0: "dVal", 1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal", 5: "siVal", 6: "usVal"}


class CounterNotSupportedError(MeterUnavailableError):
    """NVML works but this GPU has no total-energy counter (pre-Volta, some vGPU setups)."""


def load_pynvml(flag: str) -> ModuleType:
    """Import ``pynvml`` (nvidia-ml-py) on first use, so that importing the meters stays light.

    Args:
        flag: The ``--meter`` value (or user) named in the error message.

    Returns:
        The ``pynvml`` module.

    Raises:
        MeterUnavailableError: nvidia-ml-py is not installed.
    """
    try:
        import pynvml
    except ImportError as e:
        raise MeterUnavailableError(
            f"--meter {flag}: the nvidia-ml-py package is not installed ({e})",
            fix=f"pip install 'energy-nas[gpu]', or {_FALLBACK_FIX}",
        ) from e
    return pynvml  # type: ignore[no-any-return]


def _err_name(e: BaseException) -> str:
    return type(e).__name__


def _as_str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def visible_index(device: str, *, flag: str = "nvml") -> int:
    """The CUDA-visible ordinal of ``device`` (``"cuda"`` is 0, ``"cuda:N"`` is N).

    Raises:
        MeterUnavailableError: If ``device`` is not a CUDA device.
    """
    if device == "cuda":
        return 0
    if device.startswith("cuda:") and device[5:].isdigit():
        return int(device[5:])
    raise MeterUnavailableError(
        f"--meter {flag}: NVML meters measure a GPU, but the device is {device!r}",
        fix=f"run on a CUDA device (--device cuda), or {_FALLBACK_FIX}",
    )


def _torch_uuid(index: int) -> str | None:
    """The UUID CUDA itself gives device ``index``, when torch has CUDA initialised.

    This is the most robust source: it honours both CUDA_VISIBLE_DEVICES and CUDA_DEVICE_ORDER.
    """
    torch = sys.modules.get("torch")
    cuda = getattr(torch, "cuda", None) if torch is not None else None
    if cuda is None or not cuda.is_initialized():
        return None
    try:
        uuid = str(cuda.get_device_properties(index).uuid)
    except Exception:  # noqa: BLE001 - older torch without .uuid: fall back to the environment
        return None
    return uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}"


@dataclass(frozen=True)
class NvmlDevice:
    """A resolved NVML device: its handle, UUID and physical NVML index (when known)."""

    handle: Any
    uuid: str | None
    physical_index: int | None


def resolve_nvml_device(pynvml: ModuleType, device: str, *, flag: str = "nvml") -> NvmlDevice:
    """Map a CUDA device string to its NVML handle, honouring ``CUDA_VISIBLE_DEVICES``.

    NVML numbers every GPU on the machine (PCI bus order); CUDA numbers only the visible ones. Order of
    preference: the UUID torch reports for the device (if CUDA is initialised); else the entry of
    ``CUDA_VISIBLE_DEVICES`` at the visible index (an integer is a physical index, ``GPU-...`` a UUID
    or UUID prefix); else the visible index itself. Integer entries assume ``CUDA_DEVICE_ORDER=PCI_BUS_ID``.

    Args:
        pynvml: The initialised pynvml module.
        device: ``"cuda"`` or ``"cuda:N"``.
        flag: The ``--meter`` value, for error messages.

    Raises:
        MeterUnavailableError: If the device cannot be found or is a MIG slice (no per-MIG counter).
    """
    index = visible_index(device, flag=flag)
    selector: tuple[str, Any]
    uuid = _torch_uuid(index)
    if uuid is not None:
        selector = ("uuid", uuid)
    else:
        env = os.environ.get("CUDA_VISIBLE_DEVICES")
        if env is None:
            selector = ("index", index)
        else:
            entries = [e.strip() for e in env.split(",") if e.strip()]
            if index >= len(entries):
                raise MeterUnavailableError(
                    f"--meter {flag}: {device} is not visible (CUDA_VISIBLE_DEVICES={env!r})",
                    fix="pick a device index below the number of visible GPUs",
                )
            entry = entries[index]
            selector = ("index", int(entry)) if entry.isdigit() else ("uuid", entry)
    kind, value = selector
    if kind == "uuid" and str(value).startswith("MIG-"):
        raise MeterUnavailableError(
            f"--meter {flag}: {device} is a MIG slice ({value}); NVML has no per-MIG energy counter",
            fix=f"measure on a whole GPU, or {_FALLBACK_FIX}",
        )
    try:
        if kind == "index":
            handle = pynvml.nvmlDeviceGetHandleByIndex(int(value))
            physical: int | None = int(value)
        else:
            handle, physical = _handle_by_uuid(pynvml, str(value))
            if physical is None:
                try:
                    physical = int(pynvml.nvmlDeviceGetIndex(handle))
                except (pynvml.NVMLError, TypeError, ValueError):
                    physical = None
        dev_uuid = _as_str(pynvml.nvmlDeviceGetUUID(handle))
    except pynvml.NVMLError as e:
        raise MeterUnavailableError(
            f"--meter {flag}: NVML cannot open {device} ({kind} {value!r}): {_err_name(e)}",
            fix=f"check CUDA_VISIBLE_DEVICES and nvidia-smi, or {_FALLBACK_FIX}",
        ) from e
    logger.debug("NVML: %s -> %s %r (uuid %s)", device, kind, value, dev_uuid)
    return NvmlDevice(handle=handle, uuid=dev_uuid, physical_index=physical)


def _handle_by_uuid(pynvml: ModuleType, uuid: str) -> tuple[Any, int | None]:
    want = uuid if uuid.startswith("GPU-") else f"GPU-{uuid}"
    try:
        return pynvml.nvmlDeviceGetHandleByUUID(want), None
    except pynvml.NVMLError:
        pass
    # CUDA accepts unique UUID prefixes; NVML wants the full UUID, so scan.
    for i in range(int(pynvml.nvmlDeviceGetCount())):
        h = pynvml.nvmlDeviceGetHandleByIndex(i)
        if _as_str(pynvml.nvmlDeviceGetUUID(h)).startswith(want):
            return h, i
    raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)


def init_nvml(pynvml: ModuleType, flag: str) -> None:
    """Initialise NVML; pair every successful call with :func:`shutdown_nvml`.

    Args:
        pynvml: The module from :func:`load_pynvml`.
        flag: The ``--meter`` value (or user) named in the error message.

    Raises:
        MeterUnavailableError: No NVIDIA driver, or NVML failed to initialise (the message says which).
    """
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:
        name = _err_name(e)
        if "LibraryNotFound" in name or "DriverNotLoaded" in name:
            reason = f"no NVIDIA driver found ({name})"
        else:
            reason = f"NVML failed to initialise ({name})"
        raise MeterUnavailableError(f"--meter {flag}: {reason}", fix=_FALLBACK_FIX) from e


def shutdown_nvml(pynvml: ModuleType) -> None:
    """Shut NVML down, logging (never raising) a failure so that it cannot mask the real error.

    Args:
        pynvml: The module from :func:`load_pynvml`.
    """
    try:
        pynvml.nvmlShutdown()
    except Exception as e:  # noqa: BLE001 - shutting down must never mask the real error
        logger.debug("nvmlShutdown failed: %s", e)


class _NvmlMeter(EnergyMeter):
    """Shared NVML set-up: init, device resolution, shutdown on close."""

    def __init__(self, device: str, flag: str) -> None:
        visible_index(device, flag=flag)  # fail before touching NVML when the device is not CUDA
        super().__init__(device)
        self._pynvml = load_pynvml(flag)
        init_nvml(self._pynvml, flag)
        try:
            self._dev = resolve_nvml_device(self._pynvml, device, flag=flag)
        except BaseException:
            shutdown_nvml(self._pynvml)
            raise
        self.device_uuid = self._dev.uuid
        self._nvml_open = True

    @property
    def physical_index(self) -> int | None:
        """The NVML (physical) index of the measured GPU, when known."""
        return self._dev.physical_index

    @classmethod
    def available(cls, device: str = "cpu") -> bool:
        try:
            meter = cls(device)  # type: ignore[call-arg]
        except MeterUnavailableError as e:
            logger.debug("%s unavailable for %s: %s", cls.name, device, e)
            return False
        meter.close()
        return True

    def close(self) -> None:
        super().close()
        if getattr(self, "_nvml_open", False):
            shutdown_nvml(self._pynvml)
            self._nvml_open = False


class NvmlCounterMeter(_NvmlMeter):
    """GPU board energy from ``nvmlDeviceGetTotalEnergyConsumption`` (mJ), read twice per window.

    The counter is probed once at construction. Every read is preceded by a CUDA synchronisation so
    that queued kernels are inside the window. A delta of 0 means the window was shorter than the
    counter's ~100 ms update period; it is returned as 0 with a warning (the protocol then lengthens the
    window).

    Args:
        device: ``"cuda"`` or ``"cuda:N"`` (CUDA-visible numbering).
        flag: The ``--meter`` value that asked for it, used in error messages.

    Raises:
        MeterUnavailableError: No driver, unknown device, or (as :class:`CounterNotSupportedError`)
            no counter on this GPU.
    """

    name: ClassVar[str] = "nvml-counter"
    is_estimate: ClassVar[bool] = False

    def __init__(self, device: str = "cuda:0", *, flag: str = "nvml-counter") -> None:
        super().__init__(device, flag)
        try:
            self._read_mj()
        except self._pynvml.NVMLError as e:
            self.close()
            if getattr(e, "value", None) != self._pynvml.NVML_ERROR_NOT_SUPPORTED:  # the GPU failed, not absent
                raise MeterUnavailableError(
                    f"--meter {flag}: NVML cannot read the energy counter of {device} ({self.device_uuid}): "
                    f"{_err_name(e)}", fix="check the GPU with nvidia-smi and the kernel log (Xid errors)") from e
            raise CounterNotSupportedError(
                f"--meter {flag}: this GPU has no total-energy counter ({_err_name(e)}; it needs Volta "
                "or newer)",
                fix="use --meter nvml-power (integrated power), auto, codecarbon or estimate",
            ) from e

    def _read_mj(self) -> int:
        return int(self._pynvml.nvmlDeviceGetTotalEnergyConsumption(self._dev.handle))

    def _open(self, key: str) -> tuple[float, int]:
        synchronize(self.device)
        return time.perf_counter(), self._read_mj()

    def _close(self, key: str, state: Any) -> EnergyReading:
        synchronize(self.device)
        mj = self._read_mj()
        t = time.perf_counter()
        t0, mj0 = state
        delta_mj = mj - mj0
        duration_s = t - t0
        notes = "GPU board energy from the NVML counter; CPU and RAM not included"
        if delta_mj == 0:
            logger.warning(
                "energy window %r read 0 mJ over %.3f s: shorter than the NVML counter's ~100 ms update "
                "period; lengthen the window (>= 1 s recommended)",
                key,
                duration_s,
            )
            notes += "; counter delta 0: window shorter than the ~100 ms update period"
        elif delta_mj < 0:
            logger.warning("energy window %r: NVML counter went backwards (%d mJ); driver reloaded?", key, delta_mj)
            return EnergyReading(
                meter=self.name, is_estimate=False, energy_j=None, duration_s=duration_s,
                device_uuid=self.device_uuid, notes=notes + "; counter went backwards: no value",
            )
        energy_j = delta_mj / 1000.0
        return EnergyReading(
            meter=self.name,
            is_estimate=False,
            energy_j=energy_j,
            duration_s=duration_s,
            gpu_energy_j=energy_j,
            device_uuid=self.device_uuid,
            notes=notes,
        )


class NvmlPowerMeter(_NvmlMeter):
    """GPU board energy by integrating polled power (trapezoid rule) for GPUs without the counter.

    A daemon thread polls power every ``poll_s`` while at least one window is open; ``begin``/``end``
    each take one extra sample (after a CUDA synchronisation) so windows start and stop exactly.
    Power comes from ``nvmlDeviceGetFieldValues(NVML_FI_DEV_POWER_INSTANT)`` where supported, else from
    ``nvmlDeviceGetPowerUsage``, which on Ampere and newer is a trailing 1 s average: windows must then
    be several seconds long, and the reading's notes say so.

    Args:
        device: ``"cuda"`` or ``"cuda:N"``.
        poll_s: Seconds between polls (default 0.02 s; a field read costs about 7 µs).
        flag: The ``--meter`` value that asked for it, used in error messages.

    Raises:
        MeterUnavailableError: No driver, unknown device, or no power reading at all.
    """

    name: ClassVar[str] = "nvml-power-integrated"
    is_estimate: ClassVar[bool] = False

    def __init__(self, device: str = "cuda:0", *, poll_s: float = 0.02, flag: str = "nvml-power") -> None:
        if not poll_s > 0:
            raise ValueError(f"poll_s must be > 0 seconds (got {poll_s!r})")
        super().__init__(device, flag)
        self.poll_s = float(poll_s)
        self._source = self._probe_source(flag)
        self._lock = threading.Lock()
        self._energy_j = 0.0  # integral since the thread (re)started
        self._last: tuple[float, float] | None = None  # (time_s, power_w)
        self._n_samples = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def power_source(self) -> str:
        """``"instant-field-186"`` or ``"power-usage"`` (the trailing-average API)."""
        return self._source

    def _probe_source(self, flag: str) -> str:
        p = self._pynvml
        try:
            if self._read_field_w() is not None:
                return "instant-field-186"
        except (p.NVMLError, AttributeError, TypeError, IndexError) as e:
            logger.debug("NVML_FI_DEV_POWER_INSTANT unsupported: %s", e)
        try:
            p.nvmlDeviceGetPowerUsage(self._dev.handle)
        except p.NVMLError as e:
            self.close()
            raise MeterUnavailableError(
                f"--meter {flag}: this GPU reports no power ({_err_name(e)})", fix=_FALLBACK_FIX
            ) from e
        logger.debug("NVML power meter: instant field unsupported, using nvmlDeviceGetPowerUsage (1 s average)")
        return "power-usage"

    def _read_field_w(self) -> float | None:
        p = self._pynvml
        values = p.nvmlDeviceGetFieldValues(self._dev.handle, [NVML_FI_DEV_POWER_INSTANT])
        v = values[0]
        if int(v.nvmlReturn) != int(getattr(p, "NVML_SUCCESS", 0)):
            return None
        member = _VALUE_MEMBERS.get(int(v.valueType), "uiVal")
        mw = float(getattr(v.value, member))
        return mw / 1000.0 if mw > 0 else None

    def _read_power_w(self) -> float:
        if self._source == "instant-field-186":
            w = self._read_field_w()
            if w is not None:
                return w
        return float(self._pynvml.nvmlDeviceGetPowerUsage(self._dev.handle)) / 1000.0

    def _sample(self) -> tuple[float, float]:
        """Read power now and extend the integral. Returns (time_s, cumulative energy_j)."""
        with self._lock:
            power_w = self._read_power_w()
            t = time.perf_counter()
            if self._last is not None:
                t_prev, w_prev = self._last
                self._energy_j += 0.5 * (power_w + w_prev) * (t - t_prev)
            self._last = (t, power_w)
            self._n_samples += 1
            return t, self._energy_j

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self._sample()
            except Exception as e:  # noqa: BLE001 - a failed poll is skipped; begin/end still sample
                logger.debug("NVML power poll failed: %s", e)

    def _ensure_thread(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        with self._lock:
            self._last = None
        self._stop.clear()
        self._thread = threading.Thread(target=self._poll, name="nvml-power-poll", daemon=True)
        self._thread.start()

    def _stop_thread(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(1.0, 5 * self.poll_s))
        self._thread = None

    def _open(self, key: str) -> tuple[float, float, int]:
        synchronize(self.device)
        self._ensure_thread()
        t, e = self._sample()
        return t, e, self._n_samples

    def _close(self, key: str, state: Any) -> EnergyReading:
        synchronize(self.device)
        t, e = self._sample()
        n = self._n_samples
        if not self._windows:
            self._stop_thread()
        t0, e0, n0 = state
        duration_s = t - t0
        notes = f"GPU board energy integrated from {n - n0 + 1} power samples ({self._source}); CPU and RAM not included"
        if self._source == "power-usage":
            notes += "; nvmlDeviceGetPowerUsage is a trailing 1 s average on Ampere+: short windows are biased"
            if duration_s < 5.0:
                logger.warning(
                    "energy window %r lasted %.2f s with nvmlDeviceGetPowerUsage (a 1 s trailing average); "
                    "use windows of 5 s or more", key, duration_s,
                )
        return EnergyReading(
            meter=self.name,
            is_estimate=False,
            energy_j=e - e0,
            duration_s=duration_s,
            gpu_energy_j=e - e0,
            device_uuid=self.device_uuid,
            notes=notes,
        )

    def close(self) -> None:
        """Stop the power-sampling thread, then release NVML."""
        if hasattr(self, "_stop"):
            self._stop_thread()
        super().close()
