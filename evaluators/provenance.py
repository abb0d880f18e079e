"""Provenance of an energy reading: hardware, software, shape of the run, where and when.

Every :class:`~nas.records.Provenance` field is either filled or ``None`` with ``absent[field]`` saying
why. GPU facts come from NVML (imported lazily); on CPU the GPU-only fields are ``None`` with
``absent[field] = "CPU device: no NVML"``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import logging
import platform
import socket
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from evaluators.meters.nvml import init_nvml, load_pynvml, resolve_nvml_device, shutdown_nvml
from nas.errors import MeterUnavailableError
from nas.records import Provenance
from nas.version import VERSION

__all__ = ["device_snapshot", "collect_provenance", "host_id", "package_versions", "cpu_model_name",
           "RunShape", "TrainShape"]


class RunShape(Protocol):
    """The shape of a metered run.

    That is :class:`nas.config.MeasureConfig` for inference, :class:`TrainShape` for training.
    """

    @property
    def batch_size(self) -> int:
        """Samples per batch."""
        ...

    @property
    def seq_len(self) -> int:
        """Tokens per sample."""
        ...

    @property
    def primary(self) -> str:
        """How the model ran: its serving form (``eager``, ``onnxruntime``...), or ``train`` for training."""
        ...

    @property
    def dtype(self) -> str:
        """The compute dtype, e.g. ``float32``."""
        ...

    @property
    def n_windows(self) -> int:
        """Number of metered windows (segments, for training)."""
        ...

    @property
    def window_s(self) -> float:
        """Target seconds per window (0 for training, whose segments end at rungs)."""
        ...


@dataclasses.dataclass(frozen=True)
class TrainShape:
    """The shape of a training run, for its provenance: windows are the metered segments."""

    batch_size: int
    seq_len: int
    dtype: str = "float32"
    n_windows: int = 1
    window_s: float = 0.0
    primary: str = "train"

logger = logging.getLogger(__name__)

#: Keys of :func:`device_snapshot` besides ``absent``.
SNAPSHOT_FIELDS: tuple[str, ...] = (
    "device_name", "device_uuid", "driver_version", "power_limit_w", "temperature_c", "sm_clock_mhz",
)
_GPU_ONLY = ("device_uuid", "driver_version", "power_limit_w", "temperature_c", "sm_clock_mhz")
_CPU_REASON = "CPU device: no NVML"
# Distributions whose versions are recorded, read from their metadata without importing them.
_DISTS = ("torch", "energy-nas", "codecarbon", "nvidia-ml-py", "numpy", "onnxruntime")


def cpu_model_name() -> str | None:
    """The CPU's "model name" from ``/proc/cpuinfo`` (Linux), else :func:`platform.processor`, else None."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lower().startswith("model name") and ":" in line:
                return line.split(":", 1)[1].strip() or None
    except OSError:
        pass
    return platform.processor() or None


def _as_str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def device_snapshot(device: str) -> dict[str, Any]:
    """Read the device's identity and state now (taken before and after the windows).

    Args:
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    Returns:
        ``device_name``, ``device_uuid``, ``driver_version``, ``power_limit_w`` (W), ``temperature_c``
        (C), ``sm_clock_mhz`` (MHz) and ``absent`` (field -> why it is None).
    """
    snap: dict[str, Any] = dict.fromkeys(SNAPSHOT_FIELDS)
    absent: dict[str, str] = {}
    snap["absent"] = absent
    if not device.startswith("cuda"):
        snap["device_name"] = cpu_model_name()
        if snap["device_name"] is None:
            absent["device_name"] = "no 'model name' in /proc/cpuinfo"
        for f in _GPU_ONLY:
            absent[f] = _CPU_REASON
        return snap
    _gpu_snapshot(device, snap, absent)
    return snap


def _gpu_snapshot(device: str, snap: dict[str, Any], absent: dict[str, str]) -> None:
    try:
        p = load_pynvml("provenance")
        init_nvml(p, "provenance")
    except MeterUnavailableError as e:
        for f in SNAPSHOT_FIELDS:
            absent[f] = f"NVML unavailable: {e}"
        _torch_name(device, snap, absent)
        return
    try:
        try:
            dev = resolve_nvml_device(p, device, flag="provenance")
        except MeterUnavailableError as e:
            for f in SNAPSHOT_FIELDS:
                absent[f] = f"NVML cannot open {device}: {e}"
            _torch_name(device, snap, absent)
            return
        h = dev.handle
        reads: dict[str, Callable[[], Any]] = {
            "device_name": lambda: _as_str(p.nvmlDeviceGetName(h)),
            "device_uuid": lambda: dev.uuid,
            "driver_version": lambda: _as_str(p.nvmlSystemGetDriverVersion()),
            "power_limit_w": lambda: float(p.nvmlDeviceGetEnforcedPowerLimit(h)) / 1000.0,
            "temperature_c": lambda: float(p.nvmlDeviceGetTemperature(h, p.NVML_TEMPERATURE_GPU)),
            "sm_clock_mhz": lambda: float(p.nvmlDeviceGetClockInfo(h, p.NVML_CLOCK_SM)),
        }
        for f, read in reads.items():
            try:
                snap[f] = read()
            except p.NVMLError as e:
                absent[f] = f"NVML: {type(e).__name__}"
            if snap[f] is None and f not in absent:
                absent[f] = "NVML returned nothing"
    finally:
        shutdown_nvml(p)


def _torch_name(device: str, snap: dict[str, Any], absent: dict[str, str]) -> None:
    torch = sys.modules.get("torch")
    try:
        if torch is not None and torch.cuda.is_available():
            snap["device_name"] = str(torch.cuda.get_device_name(device))
            absent.pop("device_name", None)
    except Exception as e:  # noqa: BLE001 - the name is best effort
        logger.debug("torch.cuda.get_device_name failed: %s", e)


def host_id() -> str:
    """A stable, non-reversible id of this host: sha256 of hostname + ``/etc/machine-id``, 16 hex."""
    machine_id = ""
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            machine_id = Path(path).read_text(encoding="utf-8").strip()
            break
        except OSError:
            continue
    return hashlib.sha256(f"{socket.gethostname()}|{machine_id}".encode()).hexdigest()[:16]


def package_versions() -> tuple[dict[str, str], dict[str, str]]:
    """Versions of Python, CUDA (as torch was built) and the relevant distributions.

    Read through :mod:`importlib.metadata`, never by importing the packages.

    Returns:
        ``(versions, absent)``: ``absent`` says why an expected entry (``cuda``, ``energy-nas``...) is missing.
    """
    versions: dict[str, str] = {"python": platform.python_version()}
    absent: dict[str, str] = {}
    for dist in _DISTS:
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            if dist == "energy-nas":
                versions[dist] = f"{VERSION} (source tree)"
            elif dist in ("torch", "codecarbon", "nvidia-ml-py"):
                absent[f"versions.{dist}"] = "not installed"
    torch = sys.modules.get("torch")
    cuda = getattr(getattr(torch, "version", None), "cuda", None) if torch is not None else None
    if cuda:
        versions["cuda"] = str(cuda)
    else:
        absent["versions.cuda"] = "torch not imported" if torch is None else "CPU-only torch build"
    return versions, absent


def collect_provenance(
    meter_name: str,
    kernels: str,
    device: str,
    cfg: RunShape,
    before: dict[str, Any],
    after: dict[str, Any],
    *,
    n_windows: int | None = None,
    window_s: float | None = None,
    cpu_mode: str | None = None,
    dtype: str | None = None,
    device_use: dict[str, Any] | None = None,
) -> Provenance:
    """Assemble the provenance of one measurement.

    Args:
        meter_name: The meter's reading name (``"nvml-counter"``, ``"estimate"``...).
        kernels: Which kernels ran (e.g. ``"int8 weight-only, torchao"``).
        device: ``"cpu"`` or ``"cuda:N"``.
        cfg: The shape of the run (batch, sequence length, serving form, dtype): the
            :class:`~nas.config.MeasureConfig` of an inference measurement or a :class:`TrainShape`.
        before: :func:`device_snapshot` taken before the idle baseline and windows.
        after: :func:`device_snapshot` taken after the windows.
        n_windows: Windows kept; defaults to ``cfg.n_windows``.
        window_s: Mean window length in seconds; defaults to ``cfg.window_s`` (the requested minimum).
        cpu_mode: How the meter derived CPU energy (None for GPU-only meters).
        dtype: The dtype that actually ran; defaults to ``cfg.dtype``.
        device_use: What was observed of other work on the device during the run.

    Returns:
        A :class:`Provenance` whose every ``None`` field has a reason in ``absent``.
    """
    absent = _snapshot_absent(before, after)
    versions, v_absent = package_versions()
    absent.update(v_absent)

    def pick(field: str) -> Any:
        return after.get(field) if after.get(field) is not None else before.get(field)

    temp_reason = absent.pop("temperature_c", None)
    prov = Provenance(
        meter=meter_name,
        kernels=kernels,
        device=device,
        device_name=pick("device_name"),
        device_uuid=pick("device_uuid"),
        driver_version=pick("driver_version"),
        power_limit_w=pick("power_limit_w"),
        temperature_before_c=before.get("temperature_c"),
        temperature_after_c=after.get("temperature_c"),
        # After the windows the clocks still reflect the load, which is what the energy depended on.
        sm_clock_mhz=pick("sm_clock_mhz"),
        dtype=dtype or cfg.dtype,
        batch_size=cfg.batch_size,
        seq_len=cfg.seq_len,
        n_windows=n_windows if n_windows is not None else cfg.n_windows,
        window_s=window_s if window_s is not None else cfg.window_s,
        serving_form=cfg.primary,
        cpu_mode=cpu_mode,
        versions=versions,
        host_id=host_id(),
        time_utc=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        absent={},
        device_use=dict(device_use or {}),
    )
    return dataclasses.replace(prov, absent=_absent_reasons(prov, absent, temp_reason))


def _snapshot_absent(before: dict[str, Any], after: dict[str, Any]) -> dict[str, str]:
    """Why snapshot fields are missing, merged from both snapshots (the first reason given wins).

    Args:
        before: The snapshot taken before the windows.
        after: The snapshot taken after them.

    Returns:
        Field -> reason.
    """
    absent: dict[str, str] = {}
    for snap in (before, after):
        for k, v in (snap.get("absent") or {}).items():
            absent.setdefault(k, v)
    return absent


def _absent_reasons(prov: Provenance, absent: dict[str, str], temp_reason: str | None) -> dict[str, str]:
    """Complete ``absent`` so that every ``None`` field of ``prov`` has a reason, and no set field has one.

    Args:
        prov: The assembled provenance.
        absent: Reasons gathered so far (from the snapshots and the package versions); updated in place.
        temp_reason: Why the snapshots had no temperature, applied to both temperature fields.

    Returns:
        ``absent``, completed.
    """
    if temp_reason is not None:
        absent.setdefault("temperature_before_c", temp_reason)
        absent.setdefault("temperature_after_c", temp_reason)
    if prov.cpu_mode is None:
        absent.setdefault(
            "cpu_mode",
            "no CPU energy: the meter reads the GPU board only" if prov.meter.startswith("nvml")
            else f"meter {prov.meter!r} reports no CPU energy",
        )
    for f in dataclasses.fields(Provenance):
        if f.name in ("absent", "device_use"):
            continue
        if getattr(prov, f.name) is None:
            absent.setdefault(f.name, "not reported by the device or meter")
        else:
            absent.pop(f.name, None)
    return absent
