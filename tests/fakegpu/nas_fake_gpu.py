"""Fake GPUs for tests on CPU machines: NVML mocked (autospec) to show N boards, each with its own counter.

:func:`install` replaces the functions of the real ``pynvml`` module that energy-nas calls with
``mock.create_autospec`` copies (so a call with the wrong signature fails as it would against the real
library), backed by N fake boards:

* board ``i`` has UUID ``GPU-fake-<node>-<i>``, so two fake nodes of one test cluster have distinct boards;
* its total-energy counter (mJ) runs at a constant ``power_w(i) = 100 * (i + 1)`` W from the start of
  the epoch, so the average power of any window says which board's counter was read;
* a board listed in ``NAS_FAKE_GPU_LOST`` is "lost": its handle and UUID still resolve, but its readings
  raise ``NVMLError_GpuIsLost``, as after an Xid 79 "GPU has fallen off the bus"; with
  ``NAS_FAKE_GPU_LOST_AFTER=K`` it falls off after K counter reads in a process (e.g. 3: the meter's
  probe and one training segment succeed, so the trial trains and is lost when it measures).

:func:`patch_placement` makes :func:`evaluators.placement.compute_device` return ``cpu``: a trial placed
on fake GPU ``cuda:0`` trains and serves on the CPU while its meter reads the fake board.

``sitecustomize.py`` next to this file applies both in every Python process started with
``NAS_FAKE_GPUS=N`` and this folder on ``PYTHONPATH``: Ray's workers, and ``ray start`` nodes.
"""

from __future__ import annotations

import os
import time
from types import ModuleType, SimpleNamespace
from typing import Any
from unittest import mock

#: Seconds since this epoch drive every fake counter (keeps the mJ values moderate).
EPOCH = 1_700_000_000.0
NAME = "NVIDIA FAKE-GPU (energy-nas test harness)"


def power_w(index: int) -> float:
    """The constant power of fake board ``index``: 100, 200, 300... W."""
    return 100.0 * (index + 1)


def uuid_of(node: str, index: int) -> str:
    return f"GPU-fake-{node}-{index}"


def index_of_power(watts: float) -> int:
    """The board whose counter gives ``watts`` on average (the inverse of :func:`power_w`)."""
    return round(watts / 100.0) - 1


def _settings() -> tuple[int, str, set[int], int]:
    n = int(os.environ.get("NAS_FAKE_GPUS", "0") or 0)
    node = os.environ.get("NAS_FAKE_GPU_NODE", "node0")
    lost = {int(x) for x in os.environ.get("NAS_FAKE_GPU_LOST", "").split(",") if x.strip()}
    return n, node, lost, int(os.environ.get("NAS_FAKE_GPU_LOST_AFTER", "0") or 0)


def install(pynvml: ModuleType) -> ModuleType:
    """Replace ``pynvml``'s device functions with autospec fakes of the boards the environment names."""
    n, node, lost, lost_after = _settings()
    handles = [SimpleNamespace(index=i, uuid=uuid_of(node, i), reads=0) for i in range(n)]

    def err(code: int) -> Exception:
        return pynvml.NVMLError(code)  # type: ignore[no-any-return]

    def by_index(i: int) -> Any:
        if not 0 <= int(i) < n:
            raise err(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return handles[int(i)]

    def by_uuid(u: Any) -> Any:
        want = u.decode() if isinstance(u, bytes) else str(u)
        for h in handles:
            if h.uuid == want:
                return h
        raise err(pynvml.NVML_ERROR_NOT_FOUND)

    def alive(h: Any) -> Any:
        if h.index in lost and h.reads >= lost_after:
            raise err(pynvml.NVML_ERROR_GPU_IS_LOST)
        return h

    def counter_mj(h: Any) -> int:
        alive(h)
        h.reads += 1
        return int((time.time() - EPOCH) * power_w(h.index) * 1000.0)

    impl: dict[str, Any] = {
        "nvmlInit": lambda: None,
        "nvmlShutdown": lambda: None,
        "nvmlDeviceGetCount": lambda: n,
        "nvmlDeviceGetHandleByIndex": by_index,
        "nvmlDeviceGetHandleByUUID": by_uuid,
        "nvmlDeviceGetUUID": lambda h: h.uuid,
        "nvmlDeviceGetIndex": lambda h: h.index,
        "nvmlDeviceGetName": lambda h: NAME,
        "nvmlSystemGetDriverVersion": lambda: "999.99 (fake)",
        "nvmlDeviceGetTotalEnergyConsumption": counter_mj,
        "nvmlDeviceGetPowerUsage": lambda h: int(power_w(alive(h).index) * 1000),
        "nvmlDeviceGetEnforcedPowerLimit": lambda h: int(alive(h) and 700_000),
        "nvmlDeviceGetTemperature": lambda h, _sensor: alive(h) and 40,
        "nvmlDeviceGetClockInfo": lambda h, _clock: alive(h) and 1980,
        "nvmlDeviceGetProcessUtilization": lambda h, _since: alive(h) and [],
        "nvmlDeviceGetComputeRunningProcesses": lambda h: alive(h) and [],
    }

    def unsupported(*_a: Any, **_k: Any) -> Any:
        raise err(pynvml.NVML_ERROR_NOT_SUPPORTED)

    for name, fn in impl.items():
        setattr(pynvml, name, mock.create_autospec(getattr(pynvml, name), side_effect=fn))
    pynvml.nvmlDeviceGetFieldValues = mock.create_autospec(  # type: ignore[attr-defined]
        pynvml.nvmlDeviceGetFieldValues, side_effect=unsupported)
    pynvml.__fake_gpus__ = n  # type: ignore[attr-defined]
    return pynvml


def patch_placement(placement: ModuleType) -> None:
    """Trials placed on a fake GPU compute on the CPU (their meter still reads the fake board)."""
    placement.compute_device = lambda device, ray_gpu_ids=(): "cpu"  # type: ignore[attr-defined]
