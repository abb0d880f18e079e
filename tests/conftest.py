"""Shared fixtures. Keep this file small; fixtures used by one test module belong in that module."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from nas.config import Candidate
from nas.records import EvalMetrics, InferenceEnergy, Provenance, TrainSummary, TrialResult
from nas.reference import TeacherReference

#: The host the dashboard's test clients call (the app checks the Host header).
DASHBOARD_BASE_URL = "http://127.0.0.1:8000"


@contextmanager
def dashboard_client(db: str, artefacts: Path) -> Iterator[Any]:
    """A FastAPI test client of the dashboard over ``db`` (skips the test without the dashboard extra)."""
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from dashboards.server import create_app

    with TestClient(create_app(db, artefacts=artefacts), base_url=DASHBOARD_BASE_URL) as c:
        yield c


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``nas ARGV`` in this process: its exit code, stdout and stderr."""
    from nas.cli import main

    try:
        main(argv)
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    got = capsys.readouterr()
    return code, got.out, got.err


def fake_trial_result(
    *,
    candidate: Candidate | None = None,
    accuracy: float | None = 0.8,
    energy_per_sample_j: float | None = 1e-3,
    latency_p50_ms: float = 2.0,
    params: int | None = 10_000,
    hardware: str | None = "NVIDIA H100 80GB HBM3",
    meter: str = "nvml-counter",
    is_estimate: bool = False,
    exclusive: bool = True,
    status: str = "COMPLETE",
    error: str | None = None,
    train_energy_j: float | None = 5.0,
    weights_path: str | None = None,
) -> TrialResult:
    """A plausible :class:`TrialResult` built without torch (no training, no measurement).

    ``hardware=None`` gives a result with no inference measurement at all.
    """
    cand = candidate or Candidate()
    inference = None
    if hardware is not None:
        prov = Provenance(
            meter=meter, kernels="fp32 eager", device="cuda:0" if meter.startswith("nvml") else "cpu",
            device_name=hardware, device_uuid="GPU-0000", dtype="float32", batch_size=32, seq_len=64,
            n_windows=3, window_s=1.0, serving_form="eager", versions={"torch": "2.4.0"}, host_id="host-1",
        )
        inference = InferenceEnergy(
            meter=meter, is_estimate=is_estimate, energy_per_sample_j=energy_per_sample_j,
            energy_per_sample_net_j=None if energy_per_sample_j is None else energy_per_sample_j * 0.8,
            idle_w=40.0, cv=0.02, latency_p50_ms=latency_p50_ms, latency_p95_ms=latency_p50_ms * 1.3,
            throughput_samples_s=1000.0 / latency_p50_ms, batch_size=32, seq_len=64, n_windows=3,
            window_s=1.0, serving_form="eager", dtype="float32", kernels="fp32 eager", exclusive=exclusive,
            windows_j_per_sample=(1e-3, 1.1e-3, 0.9e-3), provenance=prov,
        )
    train = TrainSummary(steps=10, wall_s=3.0, final_loss=0.5, energy_j=train_energy_j, meter=meter,
                         is_estimate=is_estimate, rung_accuracies=((5, 0.6), (10, 0.7)))
    metrics = EvalMetrics(accuracy=accuracy, macro_f1=accuracy, n_examples=100) if accuracy is not None else None
    return TrialResult(
        candidate=cand, task="builtin:parity", status=status,  # type: ignore[arg-type]
        metrics=metrics, train=train, inference=inference, params=params, size_bytes=None if params is None
        else params * 4, flops_per_sample=1e6, kernels="fp32 eager", error=error, weights_path=weights_path,
    )


def fake_teacher_reference(
    *,
    accuracy: float = 0.9,
    test_accuracy: float | None = 0.88,
    energy_per_sample_j: float | None = 1e-2,
    meter: str = "nvml-counter",
    is_estimate: bool = False,
    hardware: str | None = "NVIDIA H100 80GB HBM3",
    protocol_energy_j: float | None = 30.0,
    fine_tune_j: float | None = 400.0,
    cache_build_j: float | None = 50.0,
    name: str = "/models/bert-tiny",
) -> TeacherReference:
    """A plausible :class:`TeacherReference` built without torch (the teacher as a fake trial result).

    ``fine_tune_j=None`` or ``cache_build_j=None`` leave that part out (this study did not cause it).
    """
    base = fake_trial_result(accuracy=accuracy, energy_per_sample_j=energy_per_sample_j, hardware=hardware,
                             meter=meter, is_estimate=is_estimate, params=4_000_000)
    metrics = dataclasses.replace(base.metrics, test_accuracy=test_accuracy) if base.metrics else None
    inference = dataclasses.replace(base.inference, protocol_energy_j=protocol_energy_j,
                                    protocol_co2eq_g=None if protocol_energy_j is None else protocol_energy_j * 1e-4) \
        if base.inference else None
    result = dataclasses.replace(base, metrics=metrics, inference=inference, train=None)

    def summary(joules: float | None) -> TrainSummary | None:
        return None if joules is None else TrainSummary(
            steps=100, wall_s=60.0, final_loss=0.3, energy_j=joules, meter=meter, is_estimate=is_estimate,
            co2eq_g=joules * 1e-4)

    return TeacherReference(name=name, source="hf folder, fine-tuned on builtin:parity", result=result,
                            fine_tune=summary(fine_tune_j), cache_build=summary(cache_build_j))


@pytest.fixture
def make_teacher() -> Callable[..., TeacherReference]:
    """Factory of fake :class:`TeacherReference` records (see :func:`fake_teacher_reference`)."""
    return fake_teacher_reference


@pytest.fixture
def make_result() -> Callable[..., TrialResult]:
    """Factory of fake :class:`TrialResult` records (see :func:`fake_trial_result` for the keywords)."""
    return fake_trial_result


@pytest.fixture
def make_candidate() -> Callable[..., Candidate]:
    """Factory of distinct valid candidates: ``make_candidate(i)`` differs for every ``i`` < 30000."""

    def make(i: int = 0, **overrides: Any) -> Candidate:
        fields: dict[str, Any] = {"n_layers": 1 + i % 4, "d_ffn": 8 + i}
        fields.update(overrides)
        return Candidate(**fields)

    return make


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``gpu`` tests skip cleanly, with the reason, where no CUDA device is visible."""
    if not any(item.get_closest_marker("gpu") for item in items):
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False here)")
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip)
