"""The exclusive measurement lane (ARCHITECTURE decision 5).

It is a fair, cross-process readers-writer lock per physical device.

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

Exclusivity is observed, not only asserted. Every lane registers its process in ``<key>.members/``;
:meth:`MeasurementLane.exclusive` yields a :class:`Hold` that, on CPU, reads the CPU time every other
registered process used while the lane was held (``/proc/<pid>/stat``). Work that bypassed the lane
(or a phase a trial forgot to put in it) shows up there, and the measurement records it and is
repeated. On a GPU the pipeline asks NVML for the other processes on the board instead
(:func:`evaluators.meters.nvml.gpu_processes_busy`).
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import re
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["MeasurementLane", "lane_dir", "Hold", "process_cpu_s", "SHARED_CPU_FRACTION"]

#: Other lane members may use at most this fraction of one core while a measurement holds the lane
#: (idle workers wake for heartbeats); more means something ran on the device during the windows.
SHARED_CPU_FRACTION = 0.05
_instances = itertools.count()


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` (all its threads), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # fields[0] is the state (field 3); utime and stime are fields 14 and 15
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Hold:
    """One exclusive hold of the lane: how long it waited, and what other members did meanwhile.

    Attributes:
        waited_s: Seconds waited for the lane.
        held_s: Seconds the lane was held (set on exit).
        others_cpu_s: CPU seconds used by other registered processes while held (None: not observable).
        other_pids: Those of them that used any CPU.
    """

    waited_s: float
    held_s: float = 0.0
    others_cpu_s: float | None = None
    other_pids: tuple[int, ...] = ()
    _start: dict[int, float] = field(default_factory=dict)

    @property
    def shared(self) -> bool:
        """Whether other members used more than :data:`SHARED_CPU_FRACTION` of a core while held."""
        if self.others_cpu_s is None or self.held_s <= 0:
            return False
        return self.others_cpu_s > SHARED_CPU_FRACTION * self.held_s

    def device_use(self) -> dict[str, Any]:
        """The record stored in the reading's provenance."""
        return {"observed_by": "measurement lane (CPU time of the other lane members)"
                if self.others_cpu_s is not None else "nothing: /proc is not readable here",
                "held_s": round(self.held_s, 4),
                "others_cpu_s": None if self.others_cpu_s is None else round(self.others_cpu_s, 4),
                "other_pids": list(self.other_pids), "shared": self.shared}


def lane_dir() -> Path:
    """The folder of lock files: ``$NAS_LANE_DIR`` or the system temp dir, created if missing."""
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
        self._members = base / f"{safe}.members"
        self._members.mkdir(exist_ok=True)
        self._member_file = self._members / f"{os.getpid()}.{next(_instances)}"
        self._member_file.touch()

    def close(self) -> None:
        """Release any lock held and unregister this process from the lane. Idempotent."""
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(OSError):
            fcntl.flock(self._lane, fcntl.LOCK_UN)
            fcntl.flock(self._turnstile, fcntl.LOCK_UN)
        os.close(self._lane)
        os.close(self._turnstile)
        self._member_file.unlink(missing_ok=True)

    def __enter__(self) -> MeasurementLane:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def other_members(self) -> list[int]:
        """PIDs of the other live processes registered on this lane (stale entries are removed)."""
        me, pids = os.getpid(), set()
        for f in self._members.iterdir():
            try:
                pid = int(f.name.split(".", 1)[0])
            except ValueError:
                continue
            if pid == me:
                continue
            if process_cpu_s(pid) is None:
                f.unlink(missing_ok=True)  # a killed process left its entry
                continue
            pids.add(pid)
        return sorted(pids)

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
        """After a training step: release the shared hold, if held."""
        if self._shared:
            fcntl.flock(self._lane, fcntl.LOCK_UN)
            self._shared = False

    def step_boundary(self) -> None:
        """Between two training steps: let a waiting measurement in, then continue."""
        self.leave_shared()
        self.enter_shared()

    # -- writer: a measurement --------------------------------------------------------------------
    @contextlib.contextmanager
    def exclusive(self) -> Iterator[Hold]:
        """Hold the device alone.

        Yields a :class:`Hold` that says, once the block ends, how much CPU the other lane members used
        meanwhile. Training elsewhere pauses; a shared hold of this lane is given up for the block and
        taken again after it.
        """
        was_shared = self._shared
        self.leave_shared()
        t0 = time.perf_counter()
        fcntl.flock(self._turnstile, fcntl.LOCK_EX)
        try:
            fcntl.flock(self._lane, fcntl.LOCK_EX)
            hold = Hold(waited_s=time.perf_counter() - t0)
            self.wait_s += hold.waited_s
            hold._start = {pid: cpu for pid in self.other_members() if (cpu := process_cpu_s(pid)) is not None}
            t_held = time.perf_counter()
            try:
                yield hold
            finally:
                hold.held_s = time.perf_counter() - t_held
                self._observe(hold)
                fcntl.flock(self._lane, fcntl.LOCK_UN)
        finally:
            fcntl.flock(self._turnstile, fcntl.LOCK_UN)
        if was_shared:
            self.enter_shared()

    def _observe(self, hold: Hold) -> None:
        if not os.path.exists(f"/proc/{os.getpid()}/stat"):
            return
        used: dict[int, float] = {}
        for pid in set(hold._start) | set(self.other_members()):
            end = process_cpu_s(pid)
            if end is not None:
                used[pid] = max(0.0, end - hold._start.get(pid, end))
        hold.others_cpu_s = sum(used.values())
        hold.other_pids = tuple(sorted(p for p, u in used.items() if u > 0))
