"""Binary and ternary weights (#14 item 1) and packed low-bit storage in the hf export (#14 item 3)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from safetensors import safe_open

from evaluators.tokenize import train_wordpiece
from nas.compress import apply_candidate_compression, materialize_, model_size_bytes
from nas.compress.pack import pack_codes, pack_plan, unpack_codes
from nas.compress.quant import TERNARY_THRESHOLD, FakeQuantize
from nas.config import Candidate, QuantConfig, validate
from nas.errors import ConfigError, ExportError
from nas.export import LoadedModel, load
from nas.export.base import ExportInputs
from nas.export.onnx import OnnxExporter
from nas.models import build
from search_spaces import load_space, suggest


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
@pytest.mark.parametrize("n", [1, 7, 64, 1001])
def test_codes_pack_to_bits_per_weight_and_back(bits: int, n: int) -> None:
    codes = torch.randint(0, 2**bits, (n,))
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(n * bits / 8)
    assert torch.equal(unpack_codes(packed, bits, n), codes)


def test_binary_is_sign_times_the_mean_magnitude_per_channel() -> None:
    w = torch.tensor([[0.5, -1.5, 1.0, -3.0], [0.1, 0.2, -0.3, 0.0]])
    out = FakeQuantize(1)(w)
    assert torch.equal(out, torch.tensor([[1.5, -1.5, 1.5, -1.5], [0.15, 0.15, -0.15, 0.15]]))
    per_tensor = FakeQuantize(1, granularity="per_tensor")(w)
    assert torch.allclose(per_tensor.abs(), torch.full_like(w, w.abs().mean().item()))


def test_ternary_keeps_weights_above_0_7_of_the_mean_magnitude_at_their_mean() -> None:
    w = torch.tensor([[0.1, -2.0, 1.0, 0.9]])  # mean|w| 1.0: threshold 0.7 keeps -2.0, 1.0 and 0.9
    assert TERNARY_THRESHOLD == 0.7
    out = FakeQuantize("ternary")(w)
    a = (2.0 + 1.0 + 0.9) / 3
    assert torch.allclose(out, torch.tensor([[0.0, -a, a, a]]))
    assert FakeQuantize("ternary").grid(w).storage_bits == 2


@pytest.mark.parametrize("bits", [1, "ternary"])
def test_binary_and_ternary_pass_gradients_straight_through(bits: int | str) -> None:
    w = torch.randn(3, 5, requires_grad=True)
    (FakeQuantize(bits)(w) * torch.arange(15.0).reshape(3, 5)).sum().backward()
    assert w.grad is not None and torch.equal(w.grad, torch.arange(15.0).reshape(3, 5))


def test_candidate_takes_binary_and_ternary_and_labels_them() -> None:
    c = Candidate(quant=QuantConfig(attention_bits="ternary", ffn_bits=8))
    assert c.weight_bits == 2 and c.quant.bits_label == "ternary" and c.flat()["attention_bits"] == "ternary"
    b = Candidate(quant=QuantConfig(ffn_bits=1))
    assert b.weight_bits == 1 and b.quant.bits_label == "binary"
    assert Candidate.from_json(c.to_json()) == c
    with pytest.raises(ConfigError, match="ternary"):  # the message lists what is allowed
        validate(Candidate, {"quant": {"ffn_bits": 3}})


def test_the_kernels_label_says_fake_quant_for_binary_and_ternary() -> None:
    model = build(Candidate(n_layers=1, d_model=16, n_heads=2, d_ffn=32,
                            quant=QuantConfig(attention_bits=1, ffn_bits="ternary")), vocab_size=50, num_labels=2)
    rep = apply_candidate_compression(model)
    assert "attention binary" in rep.kernels and "ffn ternary" in rep.kernels and "fake-quant" in rep.kernels
    assert rep.simulated


def test_presets_name_binary_and_ternary_and_a_draw_gives_them_to_the_candidate() -> None:
    space = load_space("tiny")
    assert {1, "ternary"} <= set(space.attention_bits) and {1, "ternary"} <= set(space.ffn_bits)
    assert {1, "ternary"} <= set(load_space("base").ffn_bits)

    class Fixed:
        """Draws the first choice, except ternary and binary for the two groups."""

        def suggest_categorical(self, name: str, choices: list) -> object:
            return {"attention_bits": "ternary", "ffn_bits": 1}.get(name, choices[0])

        def suggest_int(self, name: str, low: int, high: int, **kw: object) -> int:
            return low

        def suggest_float(self, name: str, low: float, high: float, **kw: object) -> float:
            return low

    cand = suggest(Fixed(), space)
    assert cand.quant.attention_bits == "ternary" and cand.quant.ffn_bits == 1


# ---------------------------------------------------------------------------------------- packed export
def _loaded(quant: QuantConfig, *, packed: bool = True) -> LoadedModel:
    torch.manual_seed(0)
    cand = Candidate(n_layers=2, d_model=128, n_heads=4, d_ffn=512, max_len=32, quant=quant)
    tok = train_wordpiece(["a b c d e f g"] * 20, vocab_size=200)
    model = build(cand, vocab_size=4000, num_labels=2)
    apply_candidate_compression(model)
    plan = pack_plan(model) if packed else None
    size = model_size_bytes(model)
    materialize_(model)
    out = LoadedModel(model, tok, ["neg", "pos"], 32, cand, pack=plan)
    out.size_bytes = size  # type: ignore[attr-defined]
    return out


def _weights_bytes(folder: Path) -> int:
    return (folder / "model.safetensors").stat().st_size


def test_a_4_bit_export_is_under_0_30_of_fp32_its_size_matches_the_file_and_it_loads_exactly(tmp_path: Path) -> None:
    four = _loaded(QuantConfig(embedding_bits=8, attention_bits=4, ffn_bits=4))
    fp32 = _loaded(QuantConfig(), packed=False)
    four.save(tmp_path / "four")
    fp32.save(tmp_path / "fp32")
    ratio = _weights_bytes(tmp_path / "four") / _weights_bytes(tmp_path / "fp32")
    assert ratio <= 0.30, ratio
    assert abs(_weights_bytes(tmp_path / "four") / four.size_bytes - 1) <= 0.05  # type: ignore[attr-defined]
    with safe_open(str(tmp_path / "four" / "model.safetensors"), framework="pt") as f:
        codes = f.get_tensor("blocks.0.ffn.fc1.weight.nas_codes")
        assert codes.dtype == torch.uint8 and codes.numel() == 512 * 128 // 2
        assert "nas_packed" in f.metadata()
    back = load(tmp_path / "four")
    ids = np.random.default_rng(0).integers(1, 4000, (16, 32))
    mask = np.ones_like(ids)
    np.testing.assert_array_equal(back.logits_from_ids(ids, mask), four.logits_from_ids(ids, mask))
    assert json.loads((tmp_path / "four" / "config.json").read_text())["weights"].startswith("quantized weights packed")
    back.save(tmp_path / "again")  # a loaded packed model writes the same packed file again
    assert _weights_bytes(tmp_path / "again") == _weights_bytes(tmp_path / "four")


@pytest.mark.parametrize("quant", [QuantConfig(attention_bits=1, ffn_bits="ternary"),
                                   QuantConfig(attention_bits=2, ffn_bits=8, embedding_bits=16, scheme="asymmetric"),
                                   QuantConfig(attention_bits=4, ffn_bits=4, granularity="per_tensor")])
def test_every_grid_round_trips_bit_for_bit(tmp_path: Path, quant: QuantConfig) -> None:
    m = _loaded(quant)
    m.save(tmp_path)
    back = load(tmp_path)
    for key, value in m.model.state_dict().items():
        assert torch.equal(back.model.state_dict()[key], value), key
    assert abs(_weights_bytes(tmp_path) / m.size_bytes - 1) <= 0.05  # type: ignore[attr-defined]


def test_damaged_packing_metadata_fails_in_one_line(tmp_path: Path) -> None:
    m = _loaded(QuantConfig(ffn_bits=4))
    m.save(tmp_path)
    from safetensors.torch import load_file, save_file

    state = load_file(str(tmp_path / "model.safetensors"))
    del state["blocks.0.ffn.fc1.weight.nas_scale"]
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as f:
        meta = f.metadata()
    save_file(state, str(tmp_path / "model.safetensors"), metadata=meta)
    with pytest.raises(ExportError, match="packed weights are damaged") as e:
        load(tmp_path)
    assert "re-export" in str(e.value)


@pytest.mark.slow
@pytest.mark.parametrize("bits", [1, "ternary"])
def test_binary_and_ternary_students_beat_chance_clearly_on_sentiment(bits: int | str) -> None:
    from evaluators.pipeline import run_trial
    from nas.config import MeasureConfig, TrainConfig

    cand = Candidate(n_layers=1, d_model=64, n_heads=4, d_ffn=128, max_len=64,
                     quant=QuantConfig(attention_bits=bits, ffn_bits=bits))
    res = run_trial(cand, "builtin:sentiment", train_cfg=TrainConfig(steps=300, batch_size=32, lr=2e-3, device="cpu"),
                    measure_cfg=MeasureConfig(meter="estimate", window_s=0.1, n_windows=2, idle_s=0.1, warmup_iters=2))
    assert res.metrics.accuracy >= 0.75, res.metrics.accuracy  # chance is 0.5; 0.90 seen at seed 0
    name = "binary" if bits == 1 else "ternary"
    assert f"attention {name}" in res.kernels and "fake-quant" in res.kernels


def _onnx_inputs(loaded: LoadedModel) -> ExportInputs:
    ids = np.random.default_rng(0).integers(1, 4000, (4, 32))
    return ExportInputs(model=loaded.model, candidate=loaded.candidate, example_ids=ids, example_mask=np.ones_like(ids),
                        loaded=loaded)


@pytest.mark.parametrize("quant", [QuantConfig(embedding_bits=8, attention_bits=4, ffn_bits=4),
                                   QuantConfig(embedding_bits=8, attention_bits=1, ffn_bits="ternary",
                                               scheme="asymmetric")])
def test_onnx_stores_packed_codes_and_runs_the_same_logits(tmp_path: Path, quant: QuantConfig) -> None:
    low, fp32 = _loaded(quant), _loaded(QuantConfig(), packed=False)
    files = {f.format: f for f in OnnxExporter().export(_onnx_inputs(low), tmp_path / "low")}
    OnnxExporter().export(_onnx_inputs(fp32), tmp_path / "fp32")
    size = (tmp_path / "low" / "onnx" / "model.onnx").stat().st_size
    assert size / (tmp_path / "fp32" / "onnx" / "model.onnx").stat().st_size <= 0.30
    graph = onnx.load(str(tmp_path / "low" / "onnx" / "model.onnx")).graph
    weight_bytes = sum(numpy_helper.to_array(i).nbytes for i in graph.initializer)  # the file adds the graph
    assert abs(weight_bytes / low.size_bytes - 1) <= 0.05, (weight_bytes, low.size_bytes)  # type: ignore[attr-defined]
    assert "low-bit weights packed" in files["onnx"].engine
    ids = np.random.default_rng(1).integers(1, 4000, (8, 32))
    mask = np.ones_like(ids)
    np.testing.assert_allclose(files["onnx"].runner(ids, mask), low.logits_from_ids(ids, mask), atol=1e-4)
