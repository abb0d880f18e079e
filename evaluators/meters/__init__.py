"""Energy meters: one small interface, several backends, and :func:`make_meter` to pick one.

===========================  =================================================================  ===========
meter name (reading)         what it reads                                                      estimate?
===========================  =================================================================  ===========
``nvml-counter``             GPU board energy counter (mJ), Volta and newer                     no
``nvml-power-integrated``    GPU board power polled and integrated (trapezoid)                  no
``codecarbon``               CPU + GPU + RAM (CodeCarbon, offline) plus CO2eq                   yes, partly
``estimate``                 CPU TDP x process utilisation                                      yes
``none``                     nothing (``energy_j`` is None)                                     --
===========================  =================================================================  ===========

Importing this package imports neither torch, pynvml nor codecarbon; each backend imports its library
when it is built.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from evaluators.meters.base import EnergyMeter, NoneMeter, synchronize
from evaluators.meters.codecarbon import CodeCarbonMeter
from evaluators.meters.estimate import ESTIMATE_NOTE, EstimateMeter
from evaluators.meters.nvml import CounterNotSupportedError, NvmlCounterMeter, NvmlPowerMeter
from nas.errors import ConfigError, MeterUnavailableError

if TYPE_CHECKING:
    from nas.config import MeasureConfig

__all__ = [
    "EnergyMeter",
    "NvmlCounterMeter",
    "NvmlPowerMeter",
    "CodeCarbonMeter",
    "EstimateMeter",
    "NoneMeter",
    "make_meter",
    "METER_CHOICES",
    "ESTIMATE_NOTE",
    "synchronize",
]

logger = logging.getLogger(__name__)

#: Names :func:`make_meter` accepts (``MeasureConfig.meter`` and ``--meter``).
METER_CHOICES: tuple[str, ...] = ("auto", "nvml", "nvml-counter", "nvml-power", "codecarbon", "estimate", "none")


def make_meter(name: str, cfg: MeasureConfig, *, device: str = "cpu") -> EnergyMeter:
    """Build the meter called ``name`` for ``device``.

    ``auto`` picks, quietly (debug log only): ``nvml-counter`` if ``device`` is CUDA and the counter
    works; else ``nvml-power`` if NVML power works; else ``codecarbon`` if it is importable and starts;
    else ``estimate``. A meter asked for by name that cannot run raises instead of falling back.
    ``nvml`` means "whichever NVML meter this GPU supports" (counter, else integrated power).

    Args:
        name: One of :data:`METER_CHOICES`.
        cfg: Measurement settings (``country_iso_code`` for CodeCarbon, ``cpu_tdp_w`` for the estimate).
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    Returns:
        A ready meter; the caller closes it (:meth:`EnergyMeter.close`).

    Raises:
        MeterUnavailableError: A meter named explicitly cannot run here; the message says why and which
            ``--meter`` to use instead.
        ConfigError: ``name`` is not a known meter.
    """
    key = name.strip().lower()
    if key == "auto":
        return _auto(cfg, device)
    if key == "none":
        return NoneMeter(device)
    if key == "estimate":
        return EstimateMeter(device, tdp_w=cfg.cpu_tdp_w)
    if key == "nvml-counter":
        return NvmlCounterMeter(device, flag=key)
    if key == "nvml-power":
        return NvmlPowerMeter(device, flag=key)
    if key == "nvml":
        try:
            return NvmlCounterMeter(device, flag=key)
        except CounterNotSupportedError as e:
            logger.info("--meter nvml: %s; integrating power instead", e)
            return NvmlPowerMeter(device, flag=key)
    if key == "codecarbon":
        return CodeCarbonMeter(device, country_iso_code=cfg.country_iso_code, flag=key)
    raise ConfigError(
        "unknown energy meter",
        field="meter",
        value=name,
        fix=f"use one of {', '.join(METER_CHOICES)}",
    )


def _auto(cfg: MeasureConfig, device: str) -> EnergyMeter:
    if device.startswith("cuda"):
        try:
            return NvmlCounterMeter(device, flag="auto")
        except MeterUnavailableError as e:
            logger.debug("meter auto: nvml-counter unavailable: %s", e)
            if isinstance(e, CounterNotSupportedError):
                try:
                    return NvmlPowerMeter(device, flag="auto")
                except MeterUnavailableError as e2:
                    logger.debug("meter auto: nvml-power unavailable: %s", e2)
    if CodeCarbonMeter.available(device):
        try:
            return CodeCarbonMeter(device, country_iso_code=cfg.country_iso_code, flag="auto")
        except MeterUnavailableError as e:
            logger.debug("meter auto: codecarbon unavailable: %s", e)
    else:
        logger.debug("meter auto: codecarbon is not installed")
    logger.debug("meter auto: using the TDP x utilisation estimate")
    return EstimateMeter(device, tdp_w=cfg.cpu_tdp_w)
