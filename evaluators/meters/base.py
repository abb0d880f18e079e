"""The :class:`EnergyMeter` extension point and the two trivial meters.

A meter measures energy over named windows (Zeus style): ``begin(key)`` opens a window, ``end(key)``
closes it and returns an :class:`~nas.records.EnergyReading`. Windows are independent and may overlap,
so a trainer can keep ``"train"`` open while the protocol opens ``"w0"``, ``"w1"``... inside it.

This module imports neither torch, pynvml nor codecarbon: ``import evaluators.meters`` stays light.
"""

from __future__ import annotations

import abc
import logging
import sys
import time
from types import TracebackType
from typing import Any, ClassVar

from nas.records import EnergyReading

__all__ = ["EnergyMeter", "NoneMeter", "synchronize"]

logger = logging.getLogger(__name__)

def synchronize(device: str) -> None:
    """Wait for queued CUDA work on ``device`` before a counter read.

    Does nothing on CPU, and nothing when torch is not imported or CUDA is not initialised: then no
    kernel can be in flight, and importing torch here would make every meter import heavy.

    Args:
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    """
    if not device.startswith("cuda"):
        return
    torch = sys.modules.get("torch")
    if torch is None:
        return
    cuda = getattr(torch, "cuda", None)
    if cuda is None or not cuda.is_initialized():
        return
    cuda.synchronize(device)


class EnergyMeter(abc.ABC):
    """Base of every meter: named, possibly overlapping energy windows.

    Subclasses implement :meth:`_open` (take a start sample for a window) and :meth:`_close` (take
    the end sample and build the reading). The base class keeps the book of open windows and checks
    keys.

    Attributes:
        name: The meter name stored with every reading (one of :data:`nas.records.METERS`).
        is_estimate: True when this meter's energy numbers are (partly) estimated, never measured.
        device: The device the meter watches (``"cpu"`` or ``"cuda:N"``).
    """

    name: ClassVar[str] = "base"
    is_estimate: ClassVar[bool] = False

    def __init__(self, device: str = "cpu") -> None:
        self.device = device
        self._windows: dict[str, Any] = {}
        self._closed = False

    # --- capability --------------------------------------------------------------------------
    @classmethod
    def available(cls, device: str = "cpu") -> bool:
        """Whether this meter can run here for ``device`` (probes the hardware; cheap, no window)."""
        return True

    @property
    def cpu_mode(self) -> str | None:
        """How the CPU part of the energy was derived, or None when the meter has no CPU part."""
        return None

    # --- windows -------------------------------------------------------------------------------
    def begin(self, key: str) -> None:
        """Open the window ``key``.

        Args:
            key: Window name; must not be open already.

        Raises:
            ValueError: If ``key`` is already open or the meter was closed.
        """
        if self._closed:
            raise ValueError(f"meter {self.name!r} is closed; create a new one with make_meter()")
        if key in self._windows:
            raise ValueError(f"energy window {key!r} is already open; end it first or use another key")
        self._windows[key] = self._open(key)

    def end(self, key: str) -> EnergyReading:
        """Close the window ``key`` and return what was consumed during it.

        Args:
            key: A window opened with :meth:`begin`.

        Returns:
            The reading; ``energy_j`` is None where the meter could not produce a number.

        Raises:
            ValueError: If ``key`` is not open.
        """
        if key not in self._windows:
            open_keys = sorted(self._windows) or "none"
            raise ValueError(f"energy window {key!r} is not open (open windows: {open_keys})")
        state = self._windows.pop(key)
        return self._close(key, state)

    @property
    def open_windows(self) -> tuple[str, ...]:
        """Keys of the windows currently open."""
        return tuple(self._windows)

    def close(self) -> None:
        """Release the meter's resources (NVML handle, polling thread, tracker). Idempotent."""
        self._windows.clear()
        self._closed = True

    def __enter__(self) -> EnergyMeter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(device={self.device!r})"

    # --- to implement --------------------------------------------------------------------------
    @abc.abstractmethod
    def _open(self, key: str) -> Any:
        """Take the start sample of window ``key``; return any state :meth:`_close` needs."""

    @abc.abstractmethod
    def _close(self, key: str, state: Any) -> EnergyReading:
        """Take the end sample of window ``key`` and build its reading."""


class NoneMeter(EnergyMeter):
    """No energy at all: every reading has ``energy_j=None``. Latency and throughput still work."""

    name: ClassVar[str] = "none"
    is_estimate: ClassVar[bool] = False

    def _open(self, key: str) -> float:
        return time.perf_counter()

    def _close(self, key: str, state: Any) -> EnergyReading:
        return EnergyReading(
            meter=self.name,
            is_estimate=False,
            energy_j=None,
            duration_s=time.perf_counter() - float(state),
            notes="no meter: energy not measured",
        )
