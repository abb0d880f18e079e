"""Placing a trial on its device: Ray's assignment -> torch device, physical GPU, lane and record."""

from __future__ import annotations

import types

import pynvml
import pytest

import evaluators.placement as placement_mod
from evaluators.placement import place
from nas.config import Candidate
from nas.errors import ConfigError, MeterUnavailableError
from nas.placement import Placement
from nas.records import TrialResult
from tests.fakegpu.nas_fake_gpu import NAME, install, uuid_of


@pytest.fixture
def fake_nvml(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """A copy of pynvml with 4 fake boards (the real module is left alone), as placement's NVML."""
    monkeypatch.setenv("NAS_FAKE_GPUS", "4")
    monkeypatch.setenv("NAS_FAKE_GPU_NODE", "n1")
    monkeypatch.delenv("NAS_FAKE_GPU_LOST", raising=False)
    fake = types.ModuleType("pynvml")
    fake.__dict__.update(pynvml.__dict__)
    install(fake)
    monkeypatch.setattr(placement_mod, "load_pynvml", lambda flag: fake)
    return fake


@pytest.fixture
def cuda_here(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch reports CUDA (the GPU is never touched: placement only asks whether it exists)."""
    monkeypatch.setattr(placement_mod, "_cuda_available", lambda: True)


def test_a_ray_trial_without_a_gpu_stays_on_the_cpu_even_where_cuda_exists(cuda_here, monkeypatch) -> None:
    # Ray no longer hides GPUs from a trial that asked for none: taking cuda would pile every trial on GPU 0
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    p = place("auto", ray_gpu_ids=[])
    assert (p.device, p.compute, p.lane_key, p.uuid) == ("cpu", "cpu", "cpu", None)
    assert place("auto").device == "cuda:0"  # outside Ray, auto takes the GPU


def test_a_ray_trial_is_placed_on_the_gpu_ray_assigned(fake_nvml, cuda_here, monkeypatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2")  # what Ray sets for GPU id 2
    p = place("auto", ray_gpu_ids=[2])
    assert (p.device, p.compute) == ("cuda:0", "cuda:0")
    assert (p.uuid, p.physical_index, p.name) == (uuid_of("n1", 2), 2, NAME)
    assert p.lane_key == f"gpu-{uuid_of('n1', 2)}" and p.ray_gpu_ids == ("2",)
    assert p.describe() == f"cuda:0 ({uuid_of('n1', 2)}, physical GPU 2, Ray GPU 2, host {p.host})"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1")
    assert place("cuda:1", ray_gpu_ids=[3, 1]).uuid == uuid_of("n1", 1)


def test_a_device_beyond_what_ray_assigned_is_a_clear_error(fake_nvml, cuda_here) -> None:
    with pytest.raises(ConfigError, match=r"train.device: train.device is cuda:1 but Ray gave this trial 1 GPU") as e:
        place("cuda:1", ray_gpu_ids=["0"])
    assert "device: auto" in str(e.value)
    with pytest.raises(ConfigError, match="unknown device 'tpu'"):
        place("tpu")


def test_a_gpu_where_torch_has_no_cuda_names_the_fix(monkeypatch) -> None:
    monkeypatch.setattr(placement_mod, "_cuda_available", lambda: False)
    with pytest.raises(ConfigError, match="Ray placed this trial on GPU 2, but torch .* has no CUDA") as e:
        place("auto", ray_gpu_ids=["2"])
    assert "install a CUDA build of torch" in str(e.value) and "gpus_per_trial: 0" in str(e.value)


def test_without_nvml_the_device_is_named_from_cuda_visible_devices(cuda_here, monkeypatch) -> None:
    def no_nvml(flag: str) -> types.ModuleType:
        raise MeterUnavailableError("no nvidia-ml-py")

    monkeypatch.setattr(placement_mod, "load_pynvml", no_nvml)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-abc,5")
    assert place("cuda:0", ray_gpu_ids=["GPU-abc", "5"]).lane_key == "gpu-GPU-abc"
    p = place("cuda:1", ray_gpu_ids=["GPU-abc", "5"])
    assert (p.uuid, p.physical_index, p.lane_key) == (None, 5, "gpu-5")


def test_the_placement_travels_with_the_trial_result() -> None:
    p = Placement(device="cuda:0", compute="cuda:0", uuid="GPU-1", physical_index=3, name="H100",
                  ray_gpu_ids=("3",), visible_devices="3", host="node-a")
    assert Placement.from_dict(p.to_dict()) == p
    r = TrialResult(candidate=Candidate(), task="builtin:sentiment", status="FAIL", error="x", placement=p)
    assert TrialResult.from_dict(r.to_dict()).placement == p
    assert TrialResult.from_dict({**r.to_dict(), "placement": None}).placement is None  # results stored before


def test_weights_saved_on_a_node_the_driver_cannot_see_do_not_stop_the_search(tmp_path, caplog) -> None:
    """A cluster node without the shared artefacts folder: the trial is stored without weights, with a fix."""
    from types import SimpleNamespace

    from nas.runner.writer import StoreWriter

    r = TrialResult(candidate=Candidate(), task="builtin:sentiment", status="COMPLETE",
                    weights_path=str(tmp_path / "arts" / ".staging" / "trial_00003-abcd"))
    kept = StoreWriter._place_weights(SimpleNamespace(artefacts_dir=str(tmp_path / "arts")), 3, r)
    assert kept.weights_path is None
    assert "storage.artefacts_dir to a folder every node mounts" in caplog.text


def test_a_failure_names_the_device_and_a_device_fault_is_not_the_candidates() -> None:
    import torch

    from evaluators.pipeline import _failure
    from nas.records import FailKind

    p = Placement(device="cuda:0", compute="cuda:0", uuid="GPU-7", physical_index=3, ray_gpu_ids=("3",))
    partial = TrialResult(candidate=Candidate(), task="t", status="FAIL", placement=p)
    oom = _failure(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), partial)
    assert str(oom.partial.error).startswith("OOM on cuda:0 (GPU-7, physical GPU 3, Ray GPU 3): CUDA out of memory")
    assert oom.kind is None and "lower batch_size" in str(oom)  # the candidate's own fault: spends budget
    lost = _failure(pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST), partial)
    assert lost.kind is FailKind.DEVICE and "NVMLError_GpuIsLost on cuda:0 (GPU-7" in str(lost.partial.error)
