"""Who else used a GPU while a measurement held it: NVML's per-process utilization samples.

NVML energy is per board, not per process (``shared/ENERGY.md``), so a measurement is only the
candidate's energy when nothing else ran there. The measurement lane keeps other trials off the board;
this watch checks the board itself, which also sees processes outside the lane.

``nvmlDeviceGetProcessUtilization(handle, since_us)`` returns the driver's samples of SM utilization per
process since a CPU timestamp (microseconds). Where the GPU cannot sample per process, the list of
processes holding a compute context is recorded instead (presence, not proof of use).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from evaluators.meters.nvml import load_pynvml, resolve_nvml_device
from nas.errors import MeterUnavailableError

__all__ = ["GpuUseWatch"]

logger = logging.getLogger(__name__)


class GpuUseWatch:
    """Watches ``device`` between :meth:`start` and :meth:`stop`.

    Args:
        device: ``"cuda"`` or ``"cuda:N"``.
        pynvml: The pynvml module (tests pass an autospec mock).
        own_pids: Processes whose use is the measurement itself (default: this process).
    """

    def __init__(self, device: str, pynvml: Any | None = None, own_pids: tuple[int, ...] | None = None) -> None:
        if pynvml is None:
            pynvml = load_pynvml("gpu-use")
        self._nvml = pynvml
        self._own = set(own_pids or (os.getpid(),))
        self._since_us = 0
        try:
            pynvml.nvmlInit()
            self._handle = resolve_nvml_device(pynvml, device).handle
        except (pynvml.NVMLError, MeterUnavailableError) as e:
            raise MeterUnavailableError(f"cannot watch {device} through NVML: {e}",
                                        fix="use a meter that does not need NVML") from e

    def start(self) -> None:
        """Start watching: only utilization samples from now on count."""
        self._since_us = time.time_ns() // 1000

    def stop(self) -> dict[str, Any]:
        """What other processes did since :meth:`start`: ``{"observed_by", "other_pids", "shared", ...}``."""
        nvml = self._nvml
        try:
            samples = nvml.nvmlDeviceGetProcessUtilization(self._handle, self._since_us)
        except nvml.NVMLError as e:
            if getattr(nvml, "NVML_ERROR_NOT_FOUND", object()) == getattr(e, "value", None):
                samples = []  # no process was sampled busy since the timestamp
            else:
                return self._presence(f"per-process utilization unavailable ({type(e).__name__})")
        busy: dict[int, int] = {}
        for s in samples:
            pid, sm = int(s.pid), int(s.smUtil)
            if pid not in self._own and sm > 0 and int(s.timeStamp) >= self._since_us:
                busy[pid] = max(busy.get(pid, 0), sm)
        return {"observed_by": "NVML per-process SM utilization samples", "other_pids": sorted(busy),
                "max_sm_util_pct": max(busy.values(), default=0), "shared": bool(busy)}

    def _presence(self, why: str) -> dict[str, Any]:
        nvml = self._nvml
        try:
            procs = nvml.nvmlDeviceGetComputeRunningProcesses(self._handle)
            pids = sorted({int(p.pid) for p in procs} - self._own)
        except nvml.NVMLError as e:
            logger.debug("NVML process list failed: %s", e)
            return {"observed_by": f"nothing: {why}; process list unavailable", "other_pids": [], "shared": False}
        return {"observed_by": f"NVML compute process list ({why}): presence, not proof of use",
                "other_pids": pids, "shared": False}

    def close(self) -> None:
        """Shut NVML down (a failure is logged, never raised)."""
        try:
            self._nvml.nvmlShutdown()
        except Exception as e:  # noqa: BLE001 - never mask the measurement's outcome
            logger.debug("nvmlShutdown failed: %s", e)
