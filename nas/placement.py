"""Where a trial ran: the device it was placed on, as a frozen record that crosses the Ray seam.

:func:`evaluators.placement.place` builds it in the worker from the trial's ``train.device`` and what Ray
assigned (``ray.get_gpu_ids()``, which Ray also writes to ``CUDA_VISIBLE_DEVICES``). The trial's meter,
its measurement lane and its stored record all key on the same :attr:`Placement.uuid`, so on a
multi-GPU node each trial reads its own board's counter and waits only for work on its own board.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = ["Placement"]


@dataclass(frozen=True)
class Placement:
    """The device one trial ran on.

    Attributes:
        device: The device as this process sees it: ``"cpu"``, or ``"cuda:N"`` with N a CUDA-visible
            index (``cuda:0`` is the first GPU Ray gave the trial).
        compute: Where torch runs the model: the same as ``device``, except under the fake-GPU test
            harness (``tests/fakegpu``), which keeps the model on the CPU while NVML is mocked.
        uuid: The physical GPU's UUID (``GPU-...``), None on CPU or when no source could tell it.
        physical_index: NVML's (machine-wide, PCI bus order) index of the GPU, when known.
        name: The device model (``NVIDIA H100 80GB HBM3``), when known.
        ray_gpu_ids: The GPU ids Ray assigned to the trial (empty outside Ray, or with no GPU).
        visible_devices: ``CUDA_VISIBLE_DEVICES`` in the trial's process (None: not set).
        host: The machine's host name (trials of a cluster run on several).
    """

    device: str
    compute: str
    uuid: str | None = None
    physical_index: int | None = None
    name: str | None = None
    ray_gpu_ids: tuple[str, ...] = ()
    visible_devices: str | None = None
    host: str | None = None

    @property
    def is_gpu(self) -> bool:
        """Whether the trial was placed on a GPU."""
        return self.device.startswith("cuda")

    @property
    def lane_key(self) -> str:
        """The measurement lane's key: one lane per physical device (see :mod:`evaluators.lane`)."""
        if not self.is_gpu:
            return "cpu"
        if self.uuid:
            return f"gpu-{self.uuid}"
        return f"gpu-{self.physical_index if self.physical_index is not None else self.device}"

    def describe(self) -> str:
        """One line naming the device, for messages: ``cuda:0 (GPU-8f3..., physical GPU 2, Ray GPU 2)``."""
        if not self.is_gpu:
            return f"{self.device} on {self.host}" if self.host else self.device
        parts = [p for p in (
            self.uuid,
            f"physical GPU {self.physical_index}" if self.physical_index is not None else None,
            f"Ray GPU {','.join(self.ray_gpu_ids)}" if self.ray_gpu_ids else None,
            f"host {self.host}" if self.host else None,
        ) if p]
        return f"{self.device} ({', '.join(parts)})" if parts else self.device

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict."""
        d = dataclasses.asdict(self)
        d["ray_gpu_ids"] = list(self.ray_gpu_ids)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Placement:
        """Rebuild from :meth:`to_dict` output."""
        return cls(**{**d, "ray_gpu_ids": tuple(str(i) for i in d.get("ray_gpu_ids", ()))})
