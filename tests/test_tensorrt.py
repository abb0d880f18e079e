"""``nas export --format tensorrt`` (#15 item 5): an engine where TensorRT and a CUDA GPU are, one line elsewhere.

Without TensorRT (this machine) the export exits 2 with one line saying what to install, before any
work. The engine itself is built only on a GPU machine with TensorRT (marker ``gpu``).
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Callable
from pathlib import Path

import pytest

from nas.records import TrialResult
from nas.spec import FidelitySpec, StudySpec
from tests.test_search import nas_cli

STUDY = "trt"
HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


def _stored_trial(db: Path, result: TrialResult) -> None:
    """A study with one COMPLETE trial (``result``) and no weights: enough for the checks before any work."""
    from storage import Store, TrialCost

    store = Store.open(str(db))
    store.create_study(STUDY, StudySpec(name=STUDY).model_dump_json(),
                       [("accuracy", "maximize"), ("energy_per_sample_j", "minimize")])
    store.start_trial(STUDY, 0, result.candidate)
    store.finish_trial(STUDY, 0, result, cost=TrialCost.from_result(result, wall_s=1.0))
    store.close()


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here: the export would build an engine")
def test_without_tensorrt_the_export_exits_2_with_one_line(tmp_path: Path,
                                                           make_result: Callable[..., TrialResult]) -> None:
    db = tmp_path / "nas.db"
    _stored_trial(db, make_result())
    out = tmp_path / "engine"
    res = nas_cli("export", STUDY, "0", "--format", "tensorrt", "--out", str(out), "--db", str(db), timeout=120)
    assert res.returncode == 2, (res.stdout, res.stderr)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error:") and "cannot be exported as tensorrt" in lines[0], lines[0]
    assert "TensorRT is not installed" in lines[0] and "NVIDIA GPU" in lines[0], lines[0]
    assert "pip install 'energy-nas[tensorrt]'" in lines[0] and "pip install tensorrt" in lines[0], lines[0]
    assert "Traceback" not in res.stderr and not res.stdout.strip()
    assert not out.exists() and not list(tmp_path.glob(".engine.partial-*"))  # nothing written


def test_all_leaves_tensorrt_out_and_names_it_a_format() -> None:
    from nas.export import EXPORTERS, FORMATS
    from nas.export.formats import all_formats

    assert "tensorrt" in EXPORTERS and "tensorrt" in FORMATS
    assert all_formats() == tuple(n for n in EXPORTERS if n != "tensorrt")
    assert EXPORTERS["tensorrt"].extra == "tensorrt" and not EXPORTERS["tensorrt"].in_all


def test_a_machine_without_a_cuda_gpu_is_told_so(monkeypatch: pytest.MonkeyPatch) -> None:
    """With TensorRT installed but no CUDA GPU visible, the reason names the GPU (TensorRT faked present)."""
    import torch

    import nas.export.tensorrt as trt_export
    from nas.config import Candidate

    monkeypatch.setattr(trt_export, "missing_packages", lambda *names: [])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    reason = trt_export.TensorRtExporter().unsupported_reason(Candidate())
    assert reason == "TensorRT builds engines for NVIDIA GPUs, and torch sees no CUDA GPU here"


@pytest.mark.gpu
@pytest.mark.slow
def test_engine_agrees_with_pytorch_on_the_held_out_split(tmp_path: Path) -> None:
    pytest.importorskip("tensorrt")
    from evaluators.pipeline import run_trial
    from nas.config import Candidate, MeasureConfig, TrainConfig
    from nas.export import export_trial
    from nas.export.tensorrt import engine_runner
    from storage import Store, TrialCost

    train = TrainConfig(steps=30, batch_size=32, lr=3e-3, device="cuda", eval_batch_size=256, seed=0)
    measure = MeasureConfig(window_s=0.1, n_windows=2, idle_s=0.1, warmup_iters=2, meter="estimate",
                            batch_size=8, seq_len=32)
    cand = Candidate(n_layers=1, d_model=32, n_heads=2, d_ffn=64, max_len=64, dropout=0.0)
    weights = tmp_path / "weights"
    result = run_trial(cand, "builtin:sentiment", train_cfg=train, measure_cfg=measure, weights_out=weights)
    db = tmp_path / "nas.db"
    store = Store.open(str(db))
    spec = StudySpec(name=STUDY, task="builtin:sentiment", train=train, measure=measure,
                     fidelity=FidelitySpec(rungs=[30]))
    store.create_study(STUDY, spec.model_dump_json(), [("accuracy", "maximize"), ("energy_per_sample_j", "minimize")])
    stored = dataclasses.replace(result, weights_path=None)  # recorded as an artefact, as the driver does
    store.start_trial(STUDY, 0, cand)
    store.finish_trial(STUDY, 0, stored, cost=TrialCost.from_result(stored, wall_s=1.0))
    store.add_artefact(STUDY, 0, "weights", weights / "model.safetensors")
    store.close()

    report = export_trial(STUDY, 0, tmp_path / "out", fmt="tensorrt", db=str(db))
    [parity] = report.parity
    assert parity.format == "tensorrt" and parity.passed and parity.n_examples > 0, parity
    engine = tmp_path / "out" / "tensorrt" / "model.engine"
    assert engine.stat().st_size > 0 and not (tmp_path / "out" / "tensorrt" / "model.onnx").exists()
    import numpy as np

    run, described = engine_runner(engine)  # the file alone, loaded again
    ids = np.ones((3, 20), dtype=np.int64)
    assert run(ids, np.ones_like(ids)).shape == (3, 2) and "TensorRT" in described
