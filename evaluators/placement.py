"""Place a trial on its device: what Ray assigned, mapped to a torch device and a physical GPU.

Ray gives a trial with ``resources.gpus_per_trial > 0`` one or more GPU ids and sets
``CUDA_VISIBLE_DEVICES`` to them, so in the trial's process ``cuda:0`` *is* its first assigned GPU.
:func:`place` turns that into a :class:`~nas.placement.Placement` with the GPU's UUID, which the trial's
meter reads, its measurement lane is keyed by, and its stored record names.

Rules for ``train.device``:

* ``auto``: in a Ray trial, a GPU only when Ray assigned one (Ray no longer hides GPUs from a trial
  that asked for none, so ``cuda`` being available is not enough: taking it would put every CPU trial
  on GPU 0); outside Ray, ``cuda`` when torch has it, else ``cpu``.
* ``cuda:N`` in a Ray trial: N must be below the number of GPUs Ray assigned.
* A GPU device where torch has no CUDA is an error that names the fix, never a quiet CPU run.

The identity comes from CUDA itself when torch has initialised it (honours ``CUDA_VISIBLE_DEVICES`` and
``CUDA_DEVICE_ORDER``), else from NVML through ``CUDA_VISIBLE_DEVICES``
(:func:`evaluators.meters.nvml.resolve_nvml_device`), else from the ``CUDA_VISIBLE_DEVICES`` entry alone.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Sequence
from typing import Any

import torch

from evaluators.meters.nvml import init_nvml, load_pynvml, resolve_nvml_device, shutdown_nvml, visible_index
from nas.errors import ConfigError, MeterUnavailableError
from nas.placement import Placement

__all__ = ["place", "compute_device"]

log = logging.getLogger(__name__)


def place(setting: str = "auto", *, ray_gpu_ids: Sequence[Any] | None = None) -> Placement:
    """The device a trial runs on.

    Args:
        setting: ``train.device``: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        ray_gpu_ids: ``ray.get_gpu_ids()`` in a Ray trial (empty: Ray gave it no GPU); None outside Ray.

    Raises:
        ConfigError: An unknown device, a GPU index beyond what Ray assigned, or a GPU where torch has
            no CUDA; the message says which and what to change.
    """
    ids = tuple(str(i) for i in ray_gpu_ids) if ray_gpu_ids is not None else ()
    common: dict[str, Any] = {"ray_gpu_ids": ids, "visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                              "host": socket.gethostname()}
    device = _device_for(setting.strip().lower(), ray_gpu_ids is not None, ids)
    if device == "cpu":
        return Placement(device="cpu", compute="cpu", **common)
    compute = compute_device(device, ids)
    uuid, physical, name = _identity(device)
    return Placement(device=device, compute=compute, uuid=uuid, physical_index=physical, name=name, **common)


def _device_for(setting: str, in_ray: bool, ids: tuple[str, ...]) -> str:
    if setting == "auto":
        if in_ray:
            return "cuda:0" if ids else "cpu"
        return "cuda:0" if _cuda_available() else "cpu"
    if setting == "cpu":
        return "cpu"
    if setting == "cuda" or (setting.startswith("cuda:") and setting[5:].isdigit()):
        index = visible_index(setting, flag="train.device")
        if in_ray and index >= len(ids):
            have = f"{len(ids)} GPU(s) (cuda:0..cuda:{len(ids) - 1})" if ids else "no GPU"
            raise ConfigError(f"train.device is {setting} but Ray gave this trial {have}",
                              field="train.device", value=setting,
                              fix="use device: auto (the GPU Ray assigned), or raise resources.gpus_per_trial")
        return f"cuda:{index}"
    raise ConfigError(f"unknown device {setting!r}", field="train.device", value=setting,
                      fix="use auto, cpu, cuda or cuda:N")


def _cuda_available() -> bool:
    return bool(torch.cuda.is_available())


def compute_device(device: str, ray_gpu_ids: tuple[str, ...] = ()) -> str:
    """Where torch runs a trial placed on GPU ``device``: the device itself, when torch has CUDA.

    The fake-GPU test harness (``tests/fakegpu``) replaces this one function to run the model on the CPU.

    Raises:
        ConfigError: torch here has no CUDA.
    """
    if _cuda_available():
        return device
    given = f"Ray placed this trial on GPU {','.join(ray_gpu_ids)}" if ray_gpu_ids else f"train.device is {device}"
    raise ConfigError(f"{given}, but torch {torch.__version__} on {socket.gethostname()} has no CUDA",
                      field="train.device", value=device,
                      fix="install a CUDA build of torch on every node that runs trials, or set "
                      "resources.gpus_per_trial: 0 and train.device: cpu")


def _identity(device: str) -> tuple[str | None, int | None, str | None]:
    """``(uuid, physical_index, name)`` of GPU ``device``, each None when no source can tell it."""
    try:
        pynvml = load_pynvml("placement")
        init_nvml(pynvml, "placement")
    except MeterUnavailableError as e:
        log.debug("placement: NVML unavailable (%s); naming %s from CUDA_VISIBLE_DEVICES", e, device)
        return _from_visible(device)
    try:
        dev = resolve_nvml_device(pynvml, device, flag="placement")
        try:
            raw = pynvml.nvmlDeviceGetName(dev.handle)
            name: str | None = raw.decode() if isinstance(raw, bytes) else str(raw)
        except pynvml.NVMLError:
            name = None
        return dev.uuid, dev.physical_index, name
    except MeterUnavailableError as e:
        log.warning("placement: %s", e)
        return _from_visible(device)
    finally:
        shutdown_nvml(pynvml)


def _from_visible(device: str) -> tuple[str | None, int | None, str | None]:
    entries = [e.strip() for e in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if e.strip()]
    index = visible_index(device)
    if index >= len(entries):
        return None, index if not entries else None, None
    entry = entries[index]
    return (None, int(entry), None) if entry.isdigit() else (entry, None, None)
