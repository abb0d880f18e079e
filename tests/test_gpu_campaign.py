"""benchmarks/gpu_campaign.py and gpu_report.py: the CPU dry run, failure handling and the report (#17)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from evaluators.forms import CudaGraphForm, OrtForm
from evaluators.onnx_graph import onnx_runner
from nas.config import Candidate
from nas.errors import ConfigError, ExportError
from nas.models import build

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_campaign  # noqa: E402
import gpu_report  # noqa: E402

FOUR = ["meter_truth", "served_forms", "kernels", "attribution"]


def _campaign(out: Path, *parts: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "benchmarks/gpu_campaign.py", "--dry-run", "--out", str(out), "--parts",
                           *parts], capture_output=True, text=True, cwd=ROOT, timeout=300)


def _energy_rows(part: dict[str, Any]) -> list[dict[str, Any]]:
    rows = list(part.get("rows", [])) + list(part.get("repeats", []))
    return rows + [part[k] for k in ("alone", "packed") if k in part]


def test_dry_run_runs_every_part_but_packing_in_under_a_minute_with_labelled_estimates(tmp_path: Path) -> None:
    t0 = time.monotonic()
    res = _campaign(tmp_path, *FOUR)
    wall = time.monotonic() - t0
    assert res.returncode == 0, res.stderr[-3000:]
    assert wall < 60, f"the dry run took {wall:.0f} s"
    parts = gpu_report.load(tmp_path)
    assert sorted(parts) == sorted(FOUR)
    for name, p in parts.items():
        assert p["status"] == "ok", (name, p.get("why"), p.get("traceback"))
        assert p["dry_run"] is True and p["primary_meter"] == "estimate"
        for row in _energy_rows(p):
            assert row["meter"] == "estimate" and row["is_estimate"] is True and row["j_per_sample"] > 0
    skipped = {s["what"]: s["why"] for p in parts.values() for s in p.get("skipped", [])}
    assert "CUDA device" in skipped["cuda_graph (0.5M, batch 8)"]
    assert "NVML" in skipped["estimate against nvml-power"]
    forms = {r["form"] for r in parts["served_forms"]["rows"]}
    assert {"eager", "onnxruntime"} <= forms
    kernels = {r["variant"]: r for r in parts["kernels"]["rows"]}
    assert kernels["bf16 dense"]["accuracy_drift"] == 0 and "mask on dense kernels" in kernels["2:4 sparse"]["kernels"]
    assert parts["attribution"]["packed"]["j_per_sample"] > 0 and parts["attribution"]["gap"] is not None
    # the table printed last names every acceptance figure
    assert "repeat CV of J/sample" in res.stdout and "two trials training" in res.stdout
    md = gpu_report.render(parts)
    assert md.startswith("# GPU campaign") and "DRY RUN on the CPU" in md and "estimate (ESTIMATE)" in md
    assert "| Packing throughput | (part not run)" in md
    for title in ("Meter truth", "Served forms", "Kernels", "Attribution under packing"):
        assert f"## {title}" in md


@pytest.mark.slow
def test_dry_run_packing_runs_two_real_searches(tmp_path: Path) -> None:
    res = _campaign(tmp_path, "packing")
    assert res.returncode == 0, res.stderr[-3000:]
    p = json.loads((tmp_path / "packing.json").read_text())
    assert p["status"] == "ok", p.get("traceback")
    assert [a["max_concurrent"] for a in p["arms"]] == [1, 2]
    assert all(a["complete"] == 2 and a["trials_per_min"] > 0 and a["energy_is_estimate"] for a in p["arms"])
    assert p["gain"] == pytest.approx(p["arms"][1]["trials_per_min"] / p["arms"][0]["trials_per_min"])


def _camp(tmp_path: Path, *, dry: bool, left_s: float) -> gpu_campaign.Campaign:
    a = gpu_campaign._args(["--out", str(tmp_path), *(["--dry-run"] if dry else []), "--budget-s", str(left_s)])
    return gpu_campaign.make_campaign(a)


def test_a_failing_part_is_recorded_and_the_campaign_goes_on(tmp_path: Path) -> None:
    c = _camp(tmp_path, dry=True, left_s=100)

    def boom(_c: Any) -> dict[str, Any]:
        raise RuntimeError("CUDA error: out of memory")

    r = gpu_campaign.run_part(c, "kernels", boom, {"dry_run": True})
    assert r["status"] == "failed" and "out of memory" in r["why"]
    on_disk = json.loads((tmp_path / "kernels.json").read_text())
    assert on_disk["status"] == "failed" and "RuntimeError" in on_disk["traceback"]
    assert "| Kernels | (part failed) |" in gpu_report.render({"kernels": on_disk})


def test_a_part_that_no_longer_fits_the_time_left_is_skipped_not_started(tmp_path: Path) -> None:
    c = _camp(tmp_path, dry=False, left_s=10)
    called = []
    r = gpu_campaign.run_part(c, "packing", lambda _c: called.append(1) or {}, {"dry_run": False})
    assert not called and r["status"] == "skipped" and "out of time" in r["why"]


def _gpu_like_results() -> dict[str, dict[str, Any]]:
    head = {"device": "cuda:0", "device_name": "NVIDIA H200", "driver_version": "570.1", "power_limit_w": 700.0,
            "torch": "2.11", "cuda": "13.0", "dry_run": False, "primary_meter": "nvml-counter", "started": "t",
            "status": "ok", "wall_s": 30.0}
    row = {"meter": "nvml-counter", "is_estimate": False, "j_per_sample": 0.01, "cv": 0.01, "latency_p50_ms": 1.0}
    t_ok = gpu_campaign.target("repeat CV of J/sample (12.7M params)", 0.012, "<= 2%", lambda v: v <= 0.02, "x")
    t_bad = gpu_campaign.target("J/sample with two trials training vs alone (gap)", 0.08, "<= 5%",
                                lambda v: v <= 0.05, "the lane did not keep the other trials' work out")
    return {
        "meter_truth": {**head, "part": "meter_truth", "n_params": 12.7e6, "meter": "nvml-counter", "repeat_cv": 0.012,
                        "repeats": [row] * 5, "targets": [t_ok], "skipped": [],
                        "comparisons": {"nvml-power": {"meter": "nvml-power", "is_estimate": False, "windows": [{}] * 5,
                                                       "mean_ratio": 1.02, "gap": 0.02}}},
        "attribution": {**head, "part": "attribution", "alone": row, "packed": {**row, "j_per_sample": 0.0108},
                        "gap": 0.08, "trainer_steps_during_measurement": 12, "packed_device_use": {"shared": False},
                        "targets": [t_bad]},
    }


def test_report_of_gpu_results_names_device_meters_and_each_unmet_target_with_why() -> None:
    md = gpu_report.render(_gpu_like_results())
    assert "DRY RUN" not in md and "ESTIMATE" not in md
    assert "| cuda:0 | NVIDIA H200 | 570.1 | 700 |" in md
    assert "| Meter truth | repeat CV of J/sample (12.7M params) | 0.012 | <= 2% | yes |  |" in md
    assert "| **no** | the lane did not keep the other trials' work out |" in md
    assert "| nvml-power | 5 | 1.02 | 2.00% | nvml-power |" in md
    assert "| Served forms | (part not run) |" in md


def test_report_refuses_an_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="run gpu_campaign.py first"):
        gpu_report.main([str(tmp_path)])


# ------------------------------------------------------------------------------------- served forms
def _tiny() -> Any:
    torch.manual_seed(0)
    return build(Candidate(n_layers=1, d_model=32, n_heads=2, d_ffn=64, max_len=16), vocab_size=100, num_labels=3).eval()


def test_ort_form_matches_eager_and_leaves_the_model_where_it_was(tmp_path: Path) -> None:
    model = _tiny()
    ids = torch.randint(1, 100, (4, 16))
    mask = torch.ones_like(ids)
    form = OrtForm(model, ids, mask, tmp_path)
    assert form.path.exists() and "CPUExecutionProvider" in form.kernels
    with torch.inference_mode():
        want = model(ids, mask).logits.numpy()
        got = form(ids, mask).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert next(model.parameters()).dtype == torch.float32


def test_cuda_graph_form_refuses_a_cpu_batch_with_a_fix() -> None:
    ids = torch.ones(2, 8, dtype=torch.long)
    with pytest.raises(ConfigError, match="needs a CUDA device") as e:
        CudaGraphForm(_tiny(), ids, ids)
    assert "eager or compiled" in str(e.value)


def test_onnx_runner_names_the_available_providers_for_a_missing_one(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="CPUExecutionProvider") as e:
        onnx_runner(tmp_path / "model.onnx", "NoSuchExecutionProvider")
    assert "onnxruntime-gpu" in str(e.value)
