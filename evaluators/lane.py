"""The exclusive measurement lane (ARCHITECTURE decision 5): a fair, cross-process readers-writer lock
per physical device.

Energy meters read the whole device (an NVML board, or the CPU package for CodeCarbon's load-based
model), not one process. Trials may share a device while they *train* (readers: a shared lock held for
each training step), but while one trial *measures* (writer: an exclusive lock), nothing else runs
there.

Fairness: a writer first takes the *turnstile* exclusively, then the lane. Readers pass through the
turnstile before each step, so once a measurement is waiting, no new training step starts; the writer
waits at most one step of each running trainer, and never starves. Readers queue behind the writer and
resume when it leaves. ``flock(2)`` locks are released by the kernel if a process dies, so a killed
trial can never wedge the lane.

The lock files live in ``$NAS_LANE_DIR`` (default: the system temp dir), one pair per device key
(``cpu`` or a GPU UUID).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["MeasurementLane", "lane_dir"]


def lane_dir() -> Path:
    d = Path(os.environ.get("NAS_LANE_DIR") or Path(tempfile.gettempdir()) / "energy-nas-lanes")
    d.mkdir(parents=True, exist_ok=True)
    return d


class MeasurementLane:
    """One device's lane. Not thread-safe; one instance per process and device."""

    def __init__(self, device_key: str = "cpu", directory: str | Path | None = None) -> None:
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", device_key) or "device"
        base = Path(directory) if directory else lane_dir()
        base.mkdir(parents=True, exist_ok=True)
        self.device_key = device_key
        self._lane = os.open(base / f"{safe}.lane", os.O_RDWR | os.O_CREAT, 0o666)
        self._turnstile = os.open(base / f"{safe}.turnstile", os.O_RDWR | os.O_CREAT, 0o666)
        self._shared = False
        self.closed = False
        self.wait_s = 0.0  # total seconds spent waiting for the lane (either side)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(OSError):
            fcntl.flock(self._lane, fcntl.LOCK_UN)
            fcntl.flock(self._turnstile, fcntl.LOCK_UN)
        os.close(self._lane)
        os.close(self._turnstile)

    # -- readers: training steps ------------------------------------------------------------------
    def enter_shared(self) -> None:
        """Before a training step: wait behind any pending measurement, then hold the lane shared."""
        if self._shared:
            return
        t0 = time.perf_counter()
        fcntl.flock(self._turnstile, fcntl.LOCK_EX)
        fcntl.flock(self._turnstile, fcntl.LOCK_UN)
        fcntl.flock(self._lane, fcntl.LOCK_SH)
        self.wait_s += time.perf_counter() - t0
        self._shared = True

    def leave_shared(self) -> None:
        if self._shared:
            fcntl.flock(self._lane, fcntl.LOCK_UN)
            self._shared = False

    def step_boundary(self) -> None:
        """Between two training steps: let a waiting measurement in, then continue."""
        self.leave_shared()
        self.enter_shared()

    # -- writer: a measurement --------------------------------------------------------------------
    @contextlib.contextmanager
    def exclusive(self) -> Iterator[float]:
        """Hold the device alone; yields the seconds waited. Training elsewhere pauses meanwhile."""
        self.leave_shared()
        t0 = time.perf_counter()
        fcntl.flock(self._turnstile, fcntl.LOCK_EX)
        try:
            fcntl.flock(self._lane, fcntl.LOCK_EX)
            waited = time.perf_counter() - t0
            self.wait_s += waited
            try:
                yield waited
            finally:
                fcntl.flock(self._lane, fcntl.LOCK_UN)
        finally:
            fcntl.flock(self._turnstile, fcntl.LOCK_UN)
