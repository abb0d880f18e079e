"""Energy travels as measured joules and sample counts; J/sample is derived in one place.

``nas.records.joules_per_sample`` is the only function that turns joules into J/sample. An inference
record keeps what the meter read per window (joules, samples, seconds), and every J/sample figure in it
can be rebuilt exactly from those. A record's measurement cost is the protocol's reading, or the
windows' joules where an older record lacks it, never a rebuild from J/sample when joules exist.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable

import pytest
import torch
from torch import nn

from evaluators.measure import measure_inference, trimmed_mean
from nas.config import MeasureConfig
from nas.records import InferenceEnergy, TrialResult, joules_per_sample
from storage import TrialCost

VOCAB = 64
FAST = MeasureConfig(meter="estimate", window_s=0.1, n_windows=3, idle_s=0.1, warmup_iters=1,
                     batch_size=4, seq_len=16)


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 16)
        self.lin = nn.Linear(16, 2)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.lin(self.emb(input_ids).mean(1))


def test_joules_per_sample_gross_and_net() -> None:
    assert joules_per_sample(2.0, 4) == pytest.approx(0.5)
    assert joules_per_sample(2.0, 4, idle_w=1.0, duration_s=1.0) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="at least one sample"):
        joules_per_sample(1.0, 0)


def test_inference_record_carries_joules_and_samples_that_rebuild_every_figure() -> None:
    inf = measure_inference(_Tiny(), FAST, vocab_size=VOCAB)
    n = inf.n_windows
    assert len(inf.windows_energy_j) == len(inf.windows_samples) == len(inf.windows_duration_s) == n
    assert all(j > 0 for j in inf.windows_energy_j) and all(s > 0 for s in inf.windows_samples)
    per_window = [joules_per_sample(j, s) for j, s in zip(inf.windows_energy_j, inf.windows_samples, strict=True)]
    assert list(inf.windows_j_per_sample) == pytest.approx(per_window, rel=1e-12)
    assert inf.energy_per_sample_j == pytest.approx(trimmed_mean(per_window, FAST.trim_fraction), rel=1e-12)
    assert inf.idle_w is not None and inf.energy_per_sample_net_j is not None
    net = [joules_per_sample(j, s, idle_w=inf.idle_w, duration_s=d) for j, s, d in
           zip(inf.windows_energy_j, inf.windows_samples, inf.windows_duration_s, strict=True)]
    assert inf.energy_per_sample_net_j == pytest.approx(trimmed_mean(net, FAST.trim_fraction), rel=1e-12)
    assert inf.windows_total_energy_j == pytest.approx(sum(inf.windows_energy_j))
    # the JSON round trip keeps them (they are what the database stores)
    again = InferenceEnergy.from_dict(json.loads(json.dumps(inf.to_dict())))
    assert again == inf


def test_older_records_without_window_joules_still_load(make_result: Callable[..., TrialResult]) -> None:
    inf = make_result().inference
    assert inf is not None
    d = inf.to_dict()
    for key in ("windows_energy_j", "windows_samples", "windows_duration_s"):
        d.pop(key)
    old = InferenceEnergy.from_dict(d)
    assert old.windows_energy_j == () and old.windows_total_energy_j is None


def test_measurement_cost_prefers_measured_joules(make_result: Callable[..., TrialResult]) -> None:
    """Regression: without a protocol reading the cost was rebuilt as J/sample x (throughput x time)."""
    result = make_result()
    inf = result.inference
    assert inf is not None and inf.protocol_energy_j is None
    windows = dataclasses.replace(inf, windows_energy_j=(0.3, 0.2, 0.1), windows_samples=(100, 100, 100),
                                  windows_duration_s=(1.0, 1.0, 1.0))
    cost = TrialCost.from_result(dataclasses.replace(result, inference=windows))
    assert cost.measure_energy_j == pytest.approx(0.6)
    metered = dataclasses.replace(windows, protocol_energy_j=1.5)
    assert TrialCost.from_result(dataclasses.replace(result, inference=metered)).measure_energy_j == 1.5
