"""Energy meters: one small interface, several backends, and :func:`make_meter` to pick one.

The meter names (``--meter``) and the names a reading carries are listed once, with what each reads, in
:data:`nas.vocab.METER` and :data:`nas.vocab.METER_READING` (tables: ``docs/vocabularies.md``); each name
has one factory in :data:`METER_FACTORIES`.

Importing this package imports neither torch, pynvml nor codecarbon; each backend imports its library
when it is built.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from evaluators.meters.base import EnergyMeter, NoneMeter, synchronize
from evaluators.meters.codecarbon import CodeCarbonMeter
from evaluators.meters.estimate import ESTIMATE_NOTE, EstimateMeter
from evaluators.meters.nvml import CounterNotSupportedError, NvmlCounterMeter, NvmlPowerMeter
from nas.errors import MeterUnavailableError
from nas.vocab import METER, Registry

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
    "METER_FACTORIES",
    "ESTIMATE_NOTE",
    "synchronize",
]

logger = logging.getLogger(__name__)

#: Names :func:`make_meter` accepts (``MeasureConfig.meter`` and ``--meter``): :data:`nas.vocab.METER`.
METER_CHOICES: tuple[str, ...] = METER.names

#: How each meter name is built: ``(cfg, device) -> meter``.
MeterFactory = Callable[["MeasureConfig", str], EnergyMeter]
#: One factory per name of :data:`nas.vocab.METER`.
METER_FACTORIES: Registry[MeterFactory] = Registry(METER, "meter factory")


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
    if key not in METER_FACTORIES:
        raise METER.unknown(name)
    return METER_FACTORIES[key](cfg, device)


@METER_FACTORIES.register("none")
def _none(cfg: MeasureConfig, device: str) -> EnergyMeter:
    return NoneMeter(device)


@METER_FACTORIES.register("estimate")
def _estimate(cfg: MeasureConfig, device: str) -> EnergyMeter:
    return EstimateMeter(device, tdp_w=cfg.cpu_tdp_w)


@METER_FACTORIES.register("nvml-counter")
def _nvml_counter(cfg: MeasureConfig, device: str) -> EnergyMeter:
    return NvmlCounterMeter(device, flag="nvml-counter")


@METER_FACTORIES.register("nvml-power")
def _nvml_power(cfg: MeasureConfig, device: str) -> EnergyMeter:
    return NvmlPowerMeter(device, flag="nvml-power")


@METER_FACTORIES.register("nvml")
def _nvml(cfg: MeasureConfig, device: str) -> EnergyMeter:
    try:
        return NvmlCounterMeter(device, flag="nvml")
    except CounterNotSupportedError as e:
        logger.info("--meter nvml: %s; integrating power instead", e)
        return NvmlPowerMeter(device, flag="nvml")


@METER_FACTORIES.register("codecarbon")
def _codecarbon(cfg: MeasureConfig, device: str) -> EnergyMeter:
    return CodeCarbonMeter(device, country_iso_code=cfg.country_iso_code, flag="codecarbon")


@METER_FACTORIES.register("auto")
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


METER_FACTORIES.require_complete()
