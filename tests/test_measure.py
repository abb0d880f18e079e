"""The inference-energy protocol, profile and provenance, on CPU with tiny models."""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, ClassVar

import pytest
import torch
from torch import nn

from evaluators.measure import coefficient_of_variation, measure_inference, percentile, trimmed_mean
from evaluators.meters import EnergyMeter, EstimateMeter
from evaluators.profile import count_nonzero_params, count_params, flops_per_sample, peak_memory
from evaluators.provenance import collect_provenance, device_snapshot, host_id
from nas.config import MeasureConfig
from nas.records import EnergyReading, InferenceEnergy, Provenance

VOCAB = 64
FAST = MeasureConfig(meter="estimate", window_s=0.2, n_windows=3, idle_s=0.1, warmup_iters=2,
                     batch_size=4, seq_len=16)


class TinyModel(nn.Module):
    """Fallback when nas.models is missing: embedding, one linear, mean pool."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 32)
        self.lin = nn.Linear(32, 2)
        self.calls = 0

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.lin(self.emb(input_ids).mean(1))  # (B, 2)


def tiny() -> nn.Module:
    try:
        from nas.config import Candidate
        from nas.models import build
    except ImportError:
        return TinyModel()
    return build(Candidate(n_layers=1, d_model=32, n_heads=2, d_ffn=64), vocab_size=VOCAB, num_labels=2)


def _assert_provenance_complete(prov: Provenance) -> None:
    for f in dataclasses.fields(Provenance):
        if f.name != "absent" and getattr(prov, f.name) is None:
            assert f.name in prov.absent, f"{f.name} is None without a reason"


def test_measure_inference_complete_record() -> None:
    result = measure_inference(tiny(), FAST, vocab_size=VOCAB)
    assert isinstance(result, InferenceEnergy)
    assert result.meter == "estimate" and result.is_estimate is True
    assert result.provenance.meter == "estimate"
    assert result.energy_per_sample_j is not None and result.energy_per_sample_j > 0
    assert result.energy_per_sample_net_j is not None
    assert result.idle_w is not None
    assert result.cv is not None and result.cv >= 0
    assert 0 < result.latency_p50_ms <= result.latency_p95_ms
    assert result.throughput_samples_s > 0
    assert result.n_windows == 3 and len(result.windows_j_per_sample) == 3
    assert result.window_s >= 0.2
    assert (result.batch_size, result.seq_len, result.dtype) == (4, 16, "float32")
    assert result.co2eq_g_per_sample is None  # the estimate has no carbon figure
    prov = result.provenance
    assert (prov.batch_size, prov.seq_len, prov.n_windows, prov.serving_form) == (4, 16, 3, "eager")
    assert prov.cpu_mode == "tdp-x-process-utilisation"
    assert prov.absent["power_limit_w"] == "CPU device: no NVML"
    assert prov.versions["torch"] == torch.__version__
    _assert_provenance_complete(prov)
    # survives the JSON round trip used by storage
    assert InferenceEnergy.from_dict(result.to_dict()) == result


class ScriptedMeter(EnergyMeter):
    """A fake meter whose readings come from a script: (duration_s, energy_j) per window, in order."""

    name: ClassVar[str] = "nvml-counter"
    is_estimate: ClassVar[bool] = False

    def __init__(self, script: list[tuple[float, float]], idle: tuple[float, float] = (1.0, 10.0)) -> None:
        super().__init__("cpu")
        self.script = list(script)
        self.idle = idle
        self.begins: list[str] = []

    def _open(self, key: str) -> str:
        self.begins.append(key)
        return key

    def _close(self, key: str, state: Any) -> EnergyReading:
        if key == "protocol":
            return EnergyReading(meter=self.name, is_estimate=False, energy_j=50.0, duration_s=10.0, co2eq_g=0.1)
        d, e = self.idle if key == "idle" else (self.script.pop(0) if self.script else (1.0, 5.0))
        return EnergyReading(meter=self.name, is_estimate=False, energy_j=e, duration_s=d, co2eq_g=0.01)


def test_short_window_warns_and_is_lengthened(caplog: pytest.LogCaptureFixture) -> None:
    model = TinyModel()
    meter = ScriptedMeter([(0.05, 1.0), (1.0, 0.0), (1.0, 4.0), (1.0, 4.0), (1.0, 4.0)])
    cfg = MeasureConfig(window_s=0.5, n_windows=3, idle_s=0.01, warmup_iters=1, batch_size=2, seq_len=4)
    with caplog.at_level(logging.WARNING):
        result = measure_inference(model, cfg, vocab_size=VOCAB, meter=meter)
    assert "window-0 lasted 0.050 s < window_s 0.5 s" in caplog.text
    assert "read 0 J" in caplog.text
    assert meter.begins == ["protocol", "idle", "window-0", "window-0", "window-0", "window-1", "window-2"]
    assert result.n_windows == 3
    # the whole protocol (warm-up, idle, discarded and kept windows, latency) is metered for the search cost
    assert result.protocol_energy_j == pytest.approx(50.0) and result.protocol_co2eq_g == pytest.approx(0.1)
    # idle 10 W; each kept window: 4 J over 1 s, net 4 - 10 < 0 (the scripted numbers are not physical)
    assert result.idle_w == pytest.approx(10.0)
    assert not result.is_estimate and result.meter == "nvml-counter"
    assert result.cv == pytest.approx(0.0)
    assert result.co2eq_g_per_sample is not None
    assert not meter._closed  # a meter passed in is not closed


def test_iterations_double_after_short_window() -> None:
    model = TinyModel()
    meter = ScriptedMeter([(0.01, 1.0), (1.0, 1.0)])
    cfg = MeasureConfig(window_s=0.3, n_windows=1, idle_s=0.0, warmup_iters=0, batch_size=1, seq_len=2)
    # count forward calls inside the windows only
    calls: list[int] = []
    orig_begin, orig_end = meter.begin, meter.end

    def begin(key: str) -> None:
        if key.startswith("window-"):
            calls.append(-model.calls)
        orig_begin(key)

    def end(key: str) -> EnergyReading:
        if key.startswith("window-"):
            calls[-1] += model.calls
        return orig_end(key)

    meter.begin, meter.end = begin, end  # type: ignore[method-assign]
    result = measure_inference(model, cfg, vocab_size=VOCAB, meter=meter)
    assert len(calls) == 2 and calls[1] == 2 * calls[0]
    assert result.idle_w is None and result.energy_per_sample_net_j is None  # no idle baseline asked
    assert result.windows_j_per_sample == (1.0 / calls[1],)


def test_none_meter_still_times() -> None:
    cfg = MeasureConfig(meter="none", window_s=0.1, n_windows=2, idle_s=0.05, batch_size=2, seq_len=4)
    result = measure_inference(TinyModel(), cfg, vocab_size=VOCAB)
    assert result.meter == "none"
    assert result.energy_per_sample_j is None and result.cv is None and result.idle_w is None
    assert result.latency_p50_ms <= result.latency_p95_ms


def test_estimate_path_labelled_everywhere() -> None:
    meter = EstimateMeter(tdp_w=FAST.cpu_tdp_w)
    result = measure_inference(TinyModel(), FAST, vocab_size=VOCAB, meter=meter, exclusive=False,
                               kernels="fake-quant fp32")
    assert result.meter == "estimate" and result.is_estimate
    assert result.provenance.meter == "estimate" and result.kernels == "fake-quant fp32"
    assert result.exclusive is False


@pytest.mark.slow
def test_measure_with_codecarbon(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = MeasureConfig(meter="codecarbon", window_s=0.2, n_windows=3, idle_s=0.2, batch_size=4, seq_len=16)
    result = measure_inference(tiny(), cfg, vocab_size=VOCAB)
    assert result.meter == "codecarbon" and result.is_estimate
    assert result.co2eq_g_per_sample is not None and result.co2eq_g_per_sample > 0
    assert result.provenance.cpu_mode in ("cpu_load", "constant", "unknown")
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".csv")]


def test_statistics_helpers() -> None:
    assert trimmed_mean([1.0, 2.0, 3.0, 100.0, 4.0], 0.2) == pytest.approx(3.0)
    assert trimmed_mean([1.0, 2.0, 3.0], 0.2) == pytest.approx(2.0)
    assert coefficient_of_variation([2.0, 2.0]) == 0.0
    assert coefficient_of_variation([1.0]) is None
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == pytest.approx(2.5)
    assert percentile([5.0], 95) == 5.0


def test_profile() -> None:
    model = tiny()
    flops = flops_per_sample(model, 16, VOCAB)
    assert flops > 0
    assert flops_per_sample(model, 32, VOCAB) > flops
    n = count_params(model)
    assert n == sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        next(iter(model.parameters())).zero_()
    assert count_nonzero_params(model) < n == count_params(model)
    pm = peak_memory(lambda: torch.ones(8_000_000).sum())
    assert pm.method in ("cpu-rss-sampled", "cpu-maxrss-delta")
    assert pm.peak_bytes >= 0 and float(pm.result) == 8_000_000


def test_provenance_cpu() -> None:
    snap = device_snapshot("cpu")
    assert snap["device_uuid"] is None and snap["absent"]["device_uuid"] == "CPU device: no NVML"
    prov = collect_provenance("estimate", "k", "cpu", FAST, snap, device_snapshot("cpu"))
    _assert_provenance_complete(prov)
    assert prov.host_id == host_id() and len(prov.host_id) == 16
    import socket

    assert socket.gethostname() not in prov.host_id
    assert prov.time_utc is not None and prov.time_utc.endswith("+00:00")
    assert prov.cpu_mode is None and "cpu_mode" in prov.absent
