"""The inference-energy protocol: joules per sample at a declared batch size and sequence length.

Steps (defaults in :class:`nas.config.MeasureConfig`; ARCHITECTURE.md, "Measurement protocol"):

1. Random token ids (seeded), ``batch_size x seq_len``, every token real (attention mask all ones).
2. ``model.eval()`` under :func:`torch.inference_mode`; ``warmup_iters`` iterations, timed to calibrate
   how many iterations fill a window.
3. Idle baseline: the meter reads ``idle_s`` of idling in the same state (model resident, same
   process) right before the windows; ``idle_w = energy / seconds``.
4. At least ``n_windows`` windows of at least ``window_s`` each. A window that came out shorter than
   asked, or read 0 J (counter not yet stepped), is discarded with a warning and retried with twice the
   iterations. Per window: gross J/sample = energy / samples; net J/sample = (energy - idle_w x
   duration) / samples. The record keeps the trimmed mean (``trim_fraction`` cut from each end) and the
   coefficient of variation of the gross values.
5. Latency p50/p95 per batch from a separate short pass that synchronises around every batch
   (window throughput is not slowed by that synchronisation).
6. Provenance from device snapshots before and after.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from evaluators.forms import CudaGraphForm, OrtForm
from evaluators.meters import EnergyMeter, make_meter, synchronize
from evaluators.provenance import collect_provenance, device_snapshot
from nas.config import MeasureConfig
from nas.errors import ConfigError, TrialFailedError
from nas.records import EnergyReading, InferenceEnergy, joules_per_sample

__all__ = ["measure_inference", "trimmed_mean", "coefficient_of_variation", "percentile", "make_inputs"]

logger = logging.getLogger(__name__)

#: A window may be lengthened (iterations doubled) this many times before it is accepted as it is.
MAX_LENGTHEN = 8
#: Seconds spent on the per-batch latency pass (at least ``MIN_LATENCY_BATCHES`` batches).
LATENCY_PASS_S = 0.5
MIN_LATENCY_BATCHES = 10
MAX_LATENCY_BATCHES = 500
#: Seconds of warm iterations timed to calibrate the iterations per window (at most a quarter window).
CALIBRATE_S = 0.25
#: Windows are planned this much longer than ``window_s`` so that timing noise rarely makes them short.
WINDOW_MARGIN = 1.1


def _calibrate(run: Callable[[int], None], device: str, budget_s: float) -> float:
    """Seconds per iteration, from doubling runs of warm iterations until one lasts ``budget_s``."""
    n = 1
    while True:
        synchronize(device)
        t0 = time.perf_counter()
        run(n)
        synchronize(device)
        elapsed = time.perf_counter() - t0
        if elapsed >= budget_s or n >= 1 << 20:
            return max(elapsed / n, 1e-7)
        n *= 2


def trimmed_mean(values: list[float] | tuple[float, ...], trim_fraction: float) -> float:
    """Mean after dropping ``floor(n x trim_fraction)`` values from each end of the sorted list.

    Raises:
        ValueError: If ``values`` is empty or ``trim_fraction`` is outside [0, 0.5).
    """
    if not values:
        raise ValueError("trimmed_mean needs at least one value")
    if not 0.0 <= trim_fraction < 0.5:
        raise ValueError(f"trim_fraction must be in [0, 0.5) (got {trim_fraction!r})")
    xs = sorted(values)
    k = int(math.floor(len(xs) * trim_fraction))
    kept = xs[k : len(xs) - k] if len(xs) - 2 * k > 0 else xs
    return float(sum(kept) / len(kept))


def coefficient_of_variation(values: list[float] | tuple[float, ...]) -> float | None:
    """Sample standard deviation / mean; None for fewer than 2 values or a zero mean."""
    if len(values) < 2:
        return None
    mean = statistics.fmean(values)
    if mean == 0:
        return None
    return float(statistics.stdev(values) / abs(mean))


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation between order statistics."""
    if not values:
        raise ValueError("percentile needs at least one value")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return float(xs[lo] + (xs[hi] - xs[lo]) * (pos - lo))


def make_inputs(
    batch_size: int, seq_len: int, vocab_size: int, *, seed: int = 0, device: str | torch.device = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded random token ids ``(batch_size, seq_len)`` and an all-ones attention mask.

    Ids avoid 0 (conventionally padding) when the vocabulary allows, so every token is real.
    """
    if vocab_size < 1:
        raise ConfigError("vocabulary size must be >= 1", field="vocab_size", value=vocab_size)
    gen = torch.Generator().manual_seed(seed)
    low = 1 if vocab_size > 1 else 0
    ids = torch.randint(low, vocab_size, (batch_size, seq_len), generator=gen, dtype=torch.long)
    mask = torch.ones(batch_size, seq_len, dtype=torch.long)
    return ids.to(device), mask.to(device)


def _dtype_context(dtype: str, device: str) -> tuple[Callable[[], contextlib.AbstractContextManager[Any]], str]:
    if dtype == "float32":
        return contextlib.nullcontext, "float32"
    torch_dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    device_type = "cuda" if device.startswith("cuda") else "cpu"
    return (lambda: torch.autocast(device_type=device_type, dtype=torch_dtype)), f"{dtype} (autocast)"


def _serving_callable(model: nn.Module, serving_form: str) -> nn.Module | Callable[..., Any]:
    if serving_form == "eager":
        return model
    if serving_form == "compiled":
        try:
            return torch.compile(model)
        except Exception as e:  # noqa: BLE001 - torch.compile raises many kinds
            raise ConfigError(
                f"torch.compile failed: {e}", field="serving_form", value=serving_form, fix="use serving_form: eager"
            ) from e
    if isinstance(model, (CudaGraphForm, OrtForm)):
        return model
    raise ConfigError(
        f"measure_inference measures a {serving_form} form it is given; it was given a plain model",
        field="serving_form",
        value=serving_form,
        fix="measure through evaluators.serving.measure_serving, which builds the form",
    )


@contextlib.contextmanager
def _owned(meter: EnergyMeter, owned: bool) -> Iterator[EnergyMeter]:
    try:
        yield meter
    finally:
        if owned:
            meter.close()


def measure_inference(
    model: nn.Module,
    cfg: MeasureConfig,
    *,
    vocab_size: int,
    device: str = "cpu",
    meter: EnergyMeter | None = None,
    kernels: str = "",
    exclusive: bool = True,
    seed: int = 0,
) -> InferenceEnergy:
    """Measure inference energy per sample, latency and throughput of ``model`` (see module docstring).

    Args:
        model: Called as ``model(input_ids, attention_mask)``; its output is ignored. Moved to ``device``
            and put in eval mode (both in place).
        cfg: Protocol settings.
        vocab_size: Token ids are drawn from ``[1, vocab_size)``.
        device: ``"cpu"`` or ``"cuda:N"``.
        meter: A meter to use (not closed here); by default ``make_meter(cfg.meter, cfg, device=device)``
            is built and closed.
        kernels: Which kernels ran, for provenance (e.g. ``"int8 weight-only, torchao"``); empty means
            plain torch at ``cfg.dtype``.
        exclusive: Whether nothing else ran on the device during the windows. A shared-device reading
            is recorded as such and must not be stored as the candidate's energy.
        seed: Seed of the random inputs.

    Returns:
        A complete :class:`InferenceEnergy`; energy fields are None when the meter gives no number.

    Raises:
        MeterUnavailableError: ``cfg.meter`` names a meter that cannot run here.
        ConfigError: Unsupported ``serving_form``.
        TrialFailedError: The model fails on the inputs.
    """
    owned = meter is None
    m = meter if meter is not None else make_meter(cfg.meter, cfg, device=device)
    with _owned(m, owned):
        return _measure(model, cfg, m, vocab_size=vocab_size, device=device, kernels=kernels,
                        exclusive=exclusive, seed=seed)


@dataclasses.dataclass(frozen=True)
class _WindowFigures:
    """Per-window figures of the kept energy windows.

    Attributes:
        durations_s: Length of each window, seconds.
        samples: Samples run in each window.
        joules: Joules the meter read in each window, or None when it gave no energy.
        gross: Gross J/sample of each window, or None when the meter gave no energy.
        net: Net J/sample (idle power removed) of each window, or None without energy or idle baseline.
        co2_per_sample: Grams CO2eq per sample over all windows, or None when a window has none.
        throughput_samples_s: Samples per second over all windows.
    """

    durations_s: list[float]
    samples: list[int]
    joules: list[float] | None
    gross: list[float] | None
    net: list[float] | None
    co2_per_sample: float | None
    throughput_samples_s: float


def _warm_up(run: Callable[[int], None], cfg: MeasureConfig, device: str) -> float:
    """Run the warm-up iterations, then calibrate on warm ones.

    The first iterations are slow (allocation, lazy init), so they are not timed.

    Args:
        run: ``run(n)`` runs ``n`` inference iterations.
        cfg: Gives ``warmup_iters``, ``window_s`` and the batch shape (for the error message).
        device: Where the model runs (synchronised around timings).

    Returns:
        Seconds per warm iteration.

    Raises:
        TrialFailedError: The model fails on the inputs.
    """
    try:
        run(cfg.warmup_iters)
        synchronize(device)
    except (RuntimeError, ValueError, TypeError, IndexError) as e:
        raise TrialFailedError(f"the model failed on a {cfg.batch_size}x{cfg.seq_len} batch: {e}") from e
    return _calibrate(run, device, min(CALIBRATE_S, 0.25 * cfg.window_s))


def _idle_watts(meter: EnergyMeter, cfg: MeasureConfig, device: str) -> float | None:
    """Idle baseline power: same process, model resident, right before the windows.

    Args:
        meter: The meter (reads an ``"idle"`` window).
        cfg: Gives ``idle_s`` (0 skips the baseline).
        device: Synchronised before idling.

    Returns:
        Watts while idle, or None when skipped or the meter gives no energy.
    """
    if cfg.idle_s <= 0:
        return None
    synchronize(device)
    meter.begin("idle")
    time.sleep(cfg.idle_s)
    idle = meter.end("idle")
    if idle.energy_j is not None and idle.duration_s > 0:
        return idle.energy_j / idle.duration_s
    return None


def _energy_windows(meter: EnergyMeter, run: Callable[[int], None], cfg: MeasureConfig, device: str,
                    iter_s: float, exclusive: bool) -> list[tuple[EnergyReading, int]]:
    """Read ``cfg.n_windows`` energy windows, lengthening any that came out short or read 0 J.

    Args:
        meter: The meter (reads ``"window-N"`` windows).
        run: ``run(n)`` runs ``n`` inference iterations.
        cfg: Gives ``n_windows`` and ``window_s``.
        device: Synchronised before each window.
        iter_s: Seconds per iteration, to plan each window's iterations.
        exclusive: Recorded on each reading.

    Returns:
        ``(reading, iterations)`` of each kept window.
    """
    iters = max(1, math.ceil(WINDOW_MARGIN * cfg.window_s / iter_s))
    readings: list[tuple[EnergyReading, int]] = []
    lengthened = 0
    while len(readings) < cfg.n_windows:
        key = f"window-{len(readings)}"
        synchronize(device)
        meter.begin(key)
        run(iters)
        reading = meter.end(key)
        too_short = reading.duration_s < cfg.window_s
        zero = reading.energy_j is not None and reading.energy_j <= 0.0
        if (too_short or zero) and lengthened < MAX_LENGTHEN:
            why = (f"lasted {reading.duration_s:.3f} s < window_s {cfg.window_s:g} s" if too_short
                   else "read 0 J (shorter than the meter's update period)")
            logger.warning("energy %s %s with %d iterations; discarding it and doubling to %d",
                           key, why, iters, iters * 2)
            iters *= 2
            lengthened += 1
            continue
        if too_short or zero:
            logger.warning("energy %s still short or zero after %d lengthenings; keeping it", key, lengthened)
        readings.append((dataclasses.replace(reading, exclusive=exclusive), iters))
    return readings


def _window_figures(readings: list[tuple[EnergyReading, int]], batch_size: int,
                    idle_w: float | None) -> _WindowFigures:
    """Joules per sample (gross and net), CO2 and throughput of the kept windows.

    Args:
        readings: ``(reading, iterations)`` of each window.
        batch_size: Samples per iteration.
        idle_w: Idle baseline power, or None (then no net figures).

    Returns:
        The per-window figures.
    """
    durations = [r.duration_s for r, _ in readings]
    samples = [n * batch_size for _, n in readings]
    energies = [r.energy_j for r, _ in readings]
    joules: list[float] | None = None
    gross: list[float] | None = None
    net: list[float] | None = None
    if all(e is not None for e in energies):
        joules = [float(e) for e in energies if e is not None]
        gross = [joules_per_sample(j, n) for j, n in zip(joules, samples, strict=True)]
        if idle_w is not None:
            net = [joules_per_sample(j, n, idle_w=idle_w, duration_s=d)
                   for j, n, d in zip(joules, samples, durations, strict=True)]
    co2 = [r.co2eq_g for r, _ in readings]
    co2_per_sample = (sum(c for c in co2 if c is not None) / sum(samples)
                      if co2 and all(c is not None for c in co2) else None)
    throughput = sum(samples) / sum(durations) if sum(durations) > 0 else 0.0
    return _WindowFigures(durations_s=durations, samples=samples, joules=joules, gross=gross, net=net,
                          co2_per_sample=co2_per_sample, throughput_samples_s=throughput)


def _latencies_ms(run_one: Callable[[], Any], dtype_ctx: Callable[[], contextlib.AbstractContextManager[Any]],
                  device: str, iter_s: float) -> list[float]:
    """Per-batch latencies from a short pass, one batch at a time, synchronised around each.

    Args:
        run_one: Runs one batch.
        dtype_ctx: Makes the dtype (autocast) context the batches run under.
        device: Synchronised around each batch.
        iter_s: Seconds per iteration, to size the pass to about ``LATENCY_PASS_S``.

    Returns:
        Milliseconds per batch.
    """
    n_lat = int(min(max(LATENCY_PASS_S / iter_s, MIN_LATENCY_BATCHES), MAX_LATENCY_BATCHES))
    lat_ms: list[float] = []
    with torch.inference_mode(), dtype_ctx():
        for _ in range(n_lat):
            synchronize(device)
            t = time.perf_counter()
            run_one()
            synchronize(device)
            lat_ms.append((time.perf_counter() - t) * 1000.0)
    return lat_ms


def _measure(
    model: nn.Module,
    cfg: MeasureConfig,
    meter: EnergyMeter,
    *,
    vocab_size: int,
    device: str,
    kernels: str,
    exclusive: bool,
    seed: int,
) -> InferenceEnergy:
    """Run the protocol of the module docstring with ``meter`` (see :func:`measure_inference`)."""
    model.to(device)
    model.eval()
    fn = _serving_callable(model, cfg.primary)
    ids, mask = make_inputs(cfg.batch_size, cfg.seq_len, vocab_size, seed=seed, device=device)
    dtype_ctx, dtype_label = _dtype_context(cfg.dtype, device)
    kernels = kernels or f"torch {cfg.primary} {dtype_label}"

    def run(n: int) -> None:
        with torch.inference_mode(), dtype_ctx():
            for _ in range(n):
                fn(ids, mask)

    measured = meter.device  # the board the meter reads (where ``device`` runs, outside the fake-GPU harness)
    before = device_snapshot(measured)
    meter.begin("protocol")  # the whole protocol's joules, for the search cost
    iter_s = _warm_up(run, cfg, device)
    idle_w = _idle_watts(meter, cfg, device)
    readings = _energy_windows(meter, run, cfg, device, iter_s, exclusive)
    figs = _window_figures(readings, cfg.batch_size, idle_w)
    lat_ms = _latencies_ms(lambda: fn(ids, mask), dtype_ctx, device, iter_s)
    protocol = meter.end("protocol")
    after = device_snapshot(measured)
    mean_window_s = statistics.fmean(figs.durations_s)
    prov = collect_provenance(
        meter.name, kernels, measured, cfg, before, after,
        n_windows=len(readings), window_s=mean_window_s, cpu_mode=meter.cpu_mode, dtype=dtype_label,
    )
    is_estimate = meter.is_estimate or any(r.is_estimate for r, _ in readings)
    gross, net = figs.gross, figs.net
    result = InferenceEnergy(
        meter=meter.name,
        is_estimate=is_estimate,
        energy_per_sample_j=trimmed_mean(gross, cfg.trim_fraction) if gross else None,
        energy_per_sample_net_j=trimmed_mean(net, cfg.trim_fraction) if net else None,
        idle_w=idle_w,
        cv=coefficient_of_variation(gross) if gross else None,
        latency_p50_ms=percentile(lat_ms, 50),
        latency_p95_ms=percentile(lat_ms, 95),
        throughput_samples_s=figs.throughput_samples_s,
        batch_size=cfg.batch_size,
        seq_len=cfg.seq_len,
        n_windows=len(readings),
        window_s=mean_window_s,
        serving_form=cfg.primary,
        dtype=dtype_label,
        kernels=kernels,
        exclusive=exclusive,
        windows_j_per_sample=tuple(gross) if gross else (),
        provenance=prov,
        co2eq_g_per_sample=figs.co2_per_sample,
        protocol_energy_j=protocol.energy_j,
        protocol_co2eq_g=protocol.co2eq_g,
        windows_energy_j=tuple(figs.joules) if figs.joules else (),
        windows_samples=tuple(figs.samples),
        windows_duration_s=tuple(figs.durations_s),
    )
    logger.info(
        "inference energy (%s%s): %s J/sample gross, %s net, idle %s W, cv %s, p50 %.2f ms, %d windows of %.2f s",
        meter.name, ", ESTIMATE" if is_estimate else "", result.energy_per_sample_j,
        result.energy_per_sample_net_j, idle_w, result.cv, result.latency_p50_ms, len(readings), mean_window_s,
    )
    return result
