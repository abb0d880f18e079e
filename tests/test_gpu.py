"""On a CUDA GPU: a trial measures with the NVML counter (a measurement, not an estimate), watches the
board for other processes, and gives its training reading the same GPU provenance (marker ``gpu``;
skipped without CUDA)."""

from __future__ import annotations

import pytest

from nas.config import Candidate, MeasureConfig, QuantConfig, TrainConfig

pytestmark = pytest.mark.gpu


def test_a_trial_on_the_gpu_is_measured_by_nvml() -> None:
    from evaluators.pipeline import run_trial

    cand = Candidate(n_layers=2, d_model=64, n_heads=4, d_ffn=128, max_len=32, quant=QuantConfig(ffn_bits=4))
    result = run_trial(cand, "builtin:sentiment",
                       train_cfg=TrainConfig(steps=20, batch_size=32, device="cuda"),
                       measure_cfg=MeasureConfig(meter="auto", window_s=1.0, n_windows=3, batch_size=32, seq_len=32))
    inf, train = result.inference, result.train
    assert inf is not None and train is not None and train.provenance is not None
    assert inf.meter in ("nvml-counter", "nvml-power-integrated") and not inf.is_estimate
    assert inf.energy_per_sample_j is not None and inf.energy_per_sample_j > 0 and inf.exclusive
    assert inf.provenance.device_uuid and inf.provenance.device_uuid == train.provenance.device_uuid
    assert "NVML" in inf.provenance.device_use["observed_by"]
    assert train.hardware_fingerprint == inf.provenance.hardware_fingerprint
    assert train.energy_j is not None and train.energy_j > 0
    assert result.flops_per_sample is not None and result.flops_per_sample > 0
