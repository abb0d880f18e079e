"""Energy meters without a GPU: NVML is patched with autospec; CodeCarbon runs for real, offline."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any
from unittest.mock import MagicMock, patch

import pynvml
import pytest

from evaluators.meters import (
    ESTIMATE_NOTE,
    CodeCarbonMeter,
    EstimateMeter,
    NoneMeter,
    NvmlCounterMeter,
    NvmlPowerMeter,
    make_meter,
    synchronize,
)
from evaluators.meters.codecarbon import codecarbon_is_estimate
from evaluators.meters.nvml import CounterNotSupportedError
from nas.config import MeasureConfig
from nas.errors import MeterUnavailableError

CFG = MeasureConfig()
_NVML_FUNCS = (
    "nvmlInit", "nvmlShutdown", "nvmlDeviceGetCount", "nvmlDeviceGetHandleByIndex",
    "nvmlDeviceGetHandleByUUID", "nvmlDeviceGetUUID", "nvmlDeviceGetIndex",
    "nvmlDeviceGetTotalEnergyConsumption", "nvmlDeviceGetFieldValues", "nvmlDeviceGetPowerUsage",
)


def _busy(seconds: float) -> None:
    t = time.perf_counter()
    x = 0
    while time.perf_counter() - t < seconds:
        x += 1


def _field(power_mw: int, ret: int = 0) -> list[Any]:
    return [SimpleNamespace(nvmlReturn=ret, valueType=pynvml.NVML_VALUE_TYPE_UNSIGNED_INT,
                            value=SimpleNamespace(uiVal=power_mw))]


@pytest.fixture
def nvml(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, MagicMock]]:
    """Every pynvml call the meters make, autospec-patched, describing one healthy H100-like GPU."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with contextlib.ExitStack() as stack:
        mocks = {name: stack.enter_context(patch(f"pynvml.{name}", autospec=True)) for name in _NVML_FUNCS}
        mocks["nvmlDeviceGetCount"].return_value = 4
        mocks["nvmlDeviceGetHandleByIndex"].side_effect = lambda i: f"handle-{i}"
        mocks["nvmlDeviceGetHandleByUUID"].side_effect = lambda u: f"handle-{u}"
        mocks["nvmlDeviceGetUUID"].side_effect = lambda h: f"GPU-uuid-of-{h}"
        mocks["nvmlDeviceGetIndex"].return_value = 7
        mocks["nvmlDeviceGetTotalEnergyConsumption"].side_effect = iter(range(10_000, 10**9, 2_500))
        mocks["nvmlDeviceGetFieldValues"].return_value = _field(250_000)
        mocks["nvmlDeviceGetPowerUsage"].return_value = 100_000
        yield mocks


# --- (a) the counter path ---------------------------------------------------------------------------
def test_counter_meter_joules_and_synchronisation(nvml: dict[str, MagicMock]) -> None:
    with patch("evaluators.meters.nvml.synchronize", autospec=True) as sync:
        meter = make_meter("nvml-counter", CFG, device="cuda:0")
        assert isinstance(meter, NvmlCounterMeter)
        meter.begin("w")
        reading = meter.end("w")
        meter.close()
    # probe read, then exactly two reads per window
    assert nvml["nvmlDeviceGetTotalEnergyConsumption"].call_count == 3
    assert reading.energy_j == pytest.approx(2.5)  # 2500 mJ
    assert reading.gpu_energy_j == pytest.approx(2.5)
    assert reading.meter == "nvml-counter" and reading.is_estimate is False
    assert reading.device_uuid == "GPU-uuid-of-handle-0"
    assert sync.call_count == 2
    sync.assert_called_with("cuda:0")
    nvml["nvmlShutdown"].assert_called_once()


def test_overlapping_counter_windows(nvml: dict[str, MagicMock]) -> None:
    meter = NvmlCounterMeter("cuda:0")
    meter.begin("train")
    meter.begin("inner")
    inner = meter.end("inner")
    outer = meter.end("train")
    assert inner.energy_j == pytest.approx(2.5)
    assert outer.energy_j == pytest.approx(7.5)
    meter.close()


def test_counter_zero_delta_warns(nvml: dict[str, MagicMock], caplog: pytest.LogCaptureFixture) -> None:
    nvml["nvmlDeviceGetTotalEnergyConsumption"].side_effect = None
    nvml["nvmlDeviceGetTotalEnergyConsumption"].return_value = 42
    meter = NvmlCounterMeter("cuda:0")
    meter.begin("w")
    with caplog.at_level(logging.WARNING):
        reading = meter.end("w")
    assert reading.energy_j == 0.0
    assert "100 ms" in caplog.text


@pytest.mark.parametrize(
    ("visible", "device", "by", "arg"),
    [
        (None, "cuda:2", "nvmlDeviceGetHandleByIndex", 2),
        ("3,1", "cuda:1", "nvmlDeviceGetHandleByIndex", 1),
        ("3,1", "cuda:0", "nvmlDeviceGetHandleByIndex", 3),
        ("GPU-aaa,GPU-bbb", "cuda:1", "nvmlDeviceGetHandleByUUID", "GPU-bbb"),
    ],
)
def test_cuda_visible_devices_mapping(
    nvml: dict[str, MagicMock], monkeypatch: pytest.MonkeyPatch, visible: str | None, device: str, by: str, arg: Any
) -> None:
    if visible is not None:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    meter = NvmlCounterMeter(device)
    nvml[by].assert_called_with(arg)
    if by == "nvmlDeviceGetHandleByIndex":
        assert meter.physical_index == arg
    else:
        assert meter.physical_index == 7  # from nvmlDeviceGetIndex
    meter.close()


def test_cuda_visible_devices_errors(nvml: dict[str, MagicMock], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    with pytest.raises(MeterUnavailableError, match="not visible"):
        NvmlCounterMeter("cuda:1")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "MIG-abc")
    with pytest.raises(MeterUnavailableError, match="no per-MIG"):
        NvmlCounterMeter("cuda:0")
    with pytest.raises(MeterUnavailableError, match="--meter nvml: .*device is 'cpu'"):
        make_meter("nvml", CFG, device="cpu")


def test_synchronize_calls_torch_only_when_cuda_initialised() -> None:
    import torch

    with patch("torch.cuda.synchronize", autospec=True) as sync, \
            patch("torch.cuda.is_initialized", autospec=True, return_value=False):
        synchronize("cuda:0")
        sync.assert_not_called()
    with patch("torch.cuda.synchronize", autospec=True) as sync, \
            patch("torch.cuda.is_initialized", autospec=True, return_value=True):
        synchronize("cuda:1")
        synchronize("cpu")
        sync.assert_called_once_with("cuda:1")
    assert torch.cuda.is_initialized() is False


# --- (b) no counter: power integration -------------------------------------------------------------
def test_no_counter_falls_to_power_integration(nvml: dict[str, MagicMock]) -> None:
    nvml["nvmlDeviceGetTotalEnergyConsumption"].side_effect = pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
    with pytest.raises(CounterNotSupportedError, match="nvml-power"):
        make_meter("nvml-counter", CFG, device="cuda:0")
    for name in ("nvml", "auto", "nvml-power"):
        meter = make_meter(name, CFG, device="cuda:0")
        assert isinstance(meter, NvmlPowerMeter), name
        meter.close()


def test_a_lost_gpu_is_not_reported_as_a_gpu_without_a_counter(nvml: dict[str, MagicMock]) -> None:
    """NVMLError_GpuIsLost at the probe names the device and the check; it is no reason to integrate power."""
    nvml["nvmlDeviceGetTotalEnergyConsumption"].side_effect = pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
    with pytest.raises(MeterUnavailableError, match="GpuIsLost") as info:
        make_meter("nvml", CFG, device="cuda:0")
    assert not isinstance(info.value, CounterNotSupportedError)
    assert "GPU-uuid-of-handle-0" in str(info.value) and "Xid" in str(info.value)


def test_power_integration_energy(nvml: dict[str, MagicMock]) -> None:
    nvml["nvmlDeviceGetTotalEnergyConsumption"].side_effect = pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
    with patch("evaluators.meters.nvml.synchronize", autospec=True) as sync:
        meter = make_meter("nvml", CFG, device="cuda:0")
        assert meter.name == "nvml-power-integrated"
        assert meter.power_source == "instant-field-186"
        meter.begin("w")
        time.sleep(0.3)
        reading = meter.end("w")
    assert sync.call_count == 2
    assert reading.energy_j == pytest.approx(250.0 * reading.duration_s, rel=1e-6)
    assert reading.is_estimate is False
    assert nvml["nvmlDeviceGetFieldValues"].call_count > 5  # the thread polled
    assert meter._thread is None  # polling stops when no window is open
    meter.close()


def test_power_usage_fallback_when_no_instant_field(nvml: dict[str, MagicMock]) -> None:
    nvml["nvmlDeviceGetFieldValues"].return_value = _field(0, ret=pynvml.NVML_ERROR_NOT_SUPPORTED)
    meter = NvmlPowerMeter("cuda:0", poll_s=0.01)
    assert meter.power_source == "power-usage"
    meter.begin("w")
    time.sleep(0.1)
    reading = meter.end("w")
    assert reading.energy_j == pytest.approx(100.0 * reading.duration_s, rel=1e-6)
    assert "trailing 1 s average" in reading.notes
    meter.close()


# --- (c) no driver ------------------------------------------------------------------------------------
def test_missing_driver(nvml: dict[str, MagicMock], caplog: pytest.LogCaptureFixture) -> None:
    nvml["nvmlInit"].side_effect = pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
    for name in ("nvml", "nvml-counter", "nvml-power"):
        with pytest.raises(MeterUnavailableError) as info:
            make_meter(name, CFG, device="cuda:0")
        msg = str(info.value)
        assert f"--meter {name}: no NVIDIA driver found (NVMLError_LibraryNotFound)" in msg
        assert "use --meter auto, codecarbon or estimate" in msg
    with caplog.at_level(logging.INFO), patch.object(CodeCarbonMeter, "available", return_value=False):
        meter = make_meter("auto", CFG, device="cuda:0")
    assert isinstance(meter, EstimateMeter)
    assert not [r for r in caplog.records if r.levelno >= logging.INFO and r.name.startswith("evaluators")]


@pytest.mark.slow
def test_missing_driver_auto_prefers_codecarbon(
    nvml: dict[str, MagicMock], tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    nvml["nvmlInit"].side_effect = pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
    meter = make_meter("auto", CFG, device="cuda:0")
    assert isinstance(meter, CodeCarbonMeter)
    meter.close()


# --- CodeCarbon, for real -----------------------------------------------------------------------------
def test_codecarbon_offline_real(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    meter = make_meter("codecarbon", MeasureConfig(country_iso_code="FRA"), device="cpu")
    try:
        assert meter.name == "codecarbon" and meter.is_estimate
        assert meter.cpu_mode in ("cpu_load", "constant", "rapl", "unknown")
        meter.begin("outer")
        meter.begin("inner")
        _busy(0.25)
        inner = meter.end("inner")
        _busy(0.05)
        outer = meter.end("outer")
    finally:
        meter.close()
    for r in (inner, outer):
        assert r.meter == "codecarbon"
        assert r.is_estimate is True  # no RAPL here; RAM is always modelled
        assert r.energy_j is not None and r.energy_j > 0
        assert r.co2eq_g is not None and r.co2eq_g > 0
        assert r.cpu_mode == meter.cpu_mode
        assert r.gpu_energy_j is None  # no GPU tracked: not a measured 0
        assert "estimate" in r.notes
    assert outer.energy_j > inner.energy_j  # type: ignore[operator]
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".csv")]


def test_codecarbon_is_estimate_rule() -> None:
    assert codecarbon_is_estimate("cpu_load", includes_ram=False)
    assert codecarbon_is_estimate("rapl", includes_ram=True)
    assert not codecarbon_is_estimate("rapl", includes_ram=False)


# --- estimate and none ---------------------------------------------------------------------------------
def test_estimate_is_never_a_measurement() -> None:
    meter = make_meter("estimate", MeasureConfig(cpu_tdp_w=100.0))
    assert meter.name == "estimate" and meter.is_estimate
    meter.begin("w")
    _busy(0.2)
    r = meter.end("w")
    assert r.is_estimate is True and r.meter == "estimate"
    assert ESTIMATE_NOTE in r.notes
    assert r.energy_j is not None and 0 < r.energy_j <= 100.0 * r.duration_s
    assert r.cpu_energy_j == r.energy_j


def test_estimate_idle_share() -> None:
    meter = EstimateMeter(tdp_w=50.0, idle_fraction=0.2, n_cpus=1)
    meter.begin("idle")
    time.sleep(0.1)
    r = meter.end("idle")
    assert r.energy_j == pytest.approx(10.0 * r.duration_s, rel=0.3, abs=0.5)
    with pytest.raises(ValueError, match="idle_fraction"):
        EstimateMeter(idle_fraction=2.0)


def test_none_meter_and_window_keys() -> None:
    meter = make_meter("none", CFG)
    assert isinstance(meter, NoneMeter)
    meter.begin("a")
    with pytest.raises(ValueError, match="already open"):
        meter.begin("a")
    r = meter.end("a")
    assert r.energy_j is None and r.meter == "none"
    with pytest.raises(ValueError, match="not open"):
        meter.end("a")
    meter.close()
    with pytest.raises(ValueError, match="closed"):
        meter.begin("b")


def test_unknown_meter_name() -> None:
    from nas.errors import ConfigError

    with pytest.raises(ConfigError, match="meter"):
        make_meter("rapl", CFG)


def test_import_is_light() -> None:
    code = ("import sys, evaluators.meters; "
            "print(','.join(m for m in ('torch', 'codecarbon', 'pynvml') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.stdout.strip() == ""


# --- who else used the GPU during a measurement ------------------------------------------------------
def _gpu_watch(nvml: dict[str, MagicMock]) -> Any:
    from evaluators.meters.gpu_use import GpuUseWatch

    return GpuUseWatch("cuda:0", pynvml=pynvml, own_pids=(100,))


def _sample(pid: int, sm: int, ts: int) -> Any:
    return SimpleNamespace(pid=pid, smUtil=sm, memUtil=0, encUtil=0, decUtil=0, timeStamp=ts)


def test_gpu_watch_sees_other_busy_processes(nvml: dict[str, MagicMock]) -> None:
    with patch("pynvml.nvmlDeviceGetProcessUtilization", autospec=True) as util:
        watch = _gpu_watch(nvml)
        watch.start()
        since = watch._since_us
        util.return_value = [_sample(100, 90, since + 5), _sample(200, 35, since + 9), _sample(300, 0, since + 9),
                             _sample(400, 80, since - 10)]  # before the window: not ours to judge
        use = watch.stop()
        util.assert_called_once_with("handle-0", since)
    assert use["shared"] is True and use["other_pids"] == [200] and use["max_sm_util_pct"] == 35
    assert "per-process" in use["observed_by"]


def test_gpu_watch_no_samples_means_nobody_else(nvml: dict[str, MagicMock]) -> None:
    with patch("pynvml.nvmlDeviceGetProcessUtilization", autospec=True) as util:
        util.side_effect = pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)
        watch = _gpu_watch(nvml)
        watch.start()
        use = watch.stop()
    assert use["shared"] is False and use["other_pids"] == []


def test_gpu_watch_falls_back_to_the_process_list(nvml: dict[str, MagicMock]) -> None:
    with patch("pynvml.nvmlDeviceGetProcessUtilization", autospec=True) as util, \
            patch("pynvml.nvmlDeviceGetComputeRunningProcesses", autospec=True) as procs:
        util.side_effect = pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        procs.return_value = [SimpleNamespace(pid=100), SimpleNamespace(pid=555)]
        watch = _gpu_watch(nvml)
        watch.start()
        use = watch.stop()
        watch.close()
    assert use["other_pids"] == [555] and use["shared"] is False
    assert "presence, not proof of use" in use["observed_by"]
    nvml["nvmlShutdown"].assert_called()
