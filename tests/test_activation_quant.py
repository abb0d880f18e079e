"""Activation quantization (#14 item 2): fake-quant Linear inputs in QAT, and real int8 x int8 on CPU."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch

from nas.compress import apply_candidate_compression, convert_int8_for_cpu, materialize_
from nas.compress.act_quant import MOMENTUM, ActivationQuant, StaticInt8Linear, activation_quantizers
from nas.config import Candidate, MeasureConfig, QuantConfig, TrainConfig, validate
from nas.errors import ConfigError
from nas.models import build
from search_spaces import ReplayTrial, load_space, suggest

SMALL = {"n_layers": 2, "d_model": 64, "n_heads": 2, "d_ffn": 128, "max_len": 32, "dropout": 0.0}
W8A8 = QuantConfig(attention_bits=8, ffn_bits=8, activation_bits=8)


def _model(quant: QuantConfig, seed: int = 0) -> Any:
    torch.manual_seed(seed)
    model = build(Candidate(**SMALL, quant=quant), vocab_size=100, num_labels=2)
    apply_candidate_compression(model)
    return model


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, 100, (16, 32), generator=g), torch.ones(16, 32, dtype=torch.long)


def _train_steps(model: Any, n: int, lr: float = 1e-2) -> None:
    """A few steps on a learnable rule: the label says whether token 1..49 outnumber 50..99."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for i in range(n):
        ids, mask = _batch(i)
        labels = ((ids < 50).sum(1) > 16).long()
        loss = torch.nn.functional.cross_entropy(model(ids, attention_mask=mask).logits, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


# ------------------------------------------------------------------------------------------------ the grid
@pytest.mark.parametrize("bits", [8, 4])
def test_inputs_land_on_a_grid_of_2_to_the_bits_levels_with_zero_exact(bits: int) -> None:
    q = ActivationQuant(bits)
    x = torch.randn(4, 10, 16) * 3 + 1
    assert torch.equal(q.eval()(x), x)  # no range before a training batch: left alone
    y = q.train()(x)  # the first training batch sets the range, and is quantized on it
    assert q.ready and torch.equal(q.eval()(x), y)
    scale, zero_point = q.grid()
    codes = y / scale + zero_point
    assert torch.allclose(codes, codes.round(), atol=1e-3)
    assert codes.round().unique().numel() <= 2**bits
    assert q(torch.zeros(3)).abs().max() == 0  # 0 lies on the grid
    assert (y - x).abs().max() <= scale / 2 + 1e-6  # inside the range, the error is at most half a step


def test_running_range_is_a_moving_average_of_training_batches_and_eval_leaves_it() -> None:
    q = ActivationQuant(8, "running").train()
    q(torch.tensor([-1.0, 2.0]))
    q(torch.tensor([-3.0, 4.0]))
    assert float(q.lo) == pytest.approx(-1 + MOMENTUM * (-3 + 1))
    assert float(q.hi) == pytest.approx(2 + MOMENTUM * (4 - 2))
    before = (float(q.lo), float(q.hi))
    q.eval()(torch.tensor([-100.0, 100.0]))
    assert (float(q.lo), float(q.hi)) == before


def test_a_learned_range_is_trained_by_the_loss_through_the_straight_through_estimator() -> None:
    q = ActivationQuant(4, "learned").train()
    q(torch.tensor([-1.0, 1.0]))
    assert isinstance(q.lo, torch.nn.Parameter) and isinstance(q.hi, torch.nn.Parameter)
    x = torch.linspace(-3, 3, 101, requires_grad=True)  # most values lie outside [-1, 1]: clipped
    (q(x) - x).pow(2).sum().backward()
    assert float(q.hi.grad) < 0 < float(q.lo.grad)  # a descent step widens the range
    z = torch.linspace(-3, 3, 101, requires_grad=True)
    q(z).sum().backward()
    assert z.grad is not None and z.grad[50] == 1 and z.grad[0] == 0  # STE inside the range, 0 where clipped


def test_every_attention_and_ffn_linear_gets_its_input_quantized_and_ranges_round_trip() -> None:
    model = _model(QuantConfig(activation_bits=4, activation_range="learned"))
    quants = activation_quantizers(model)
    assert len(quants) == 2 * 6  # q, k, v, out, fc1, fc2 per layer
    assert {n for n, _ in model.named_parameters() if "input_quant" in n}  # learned: the optimizer sees them
    _train_steps(model, 3)
    ids, mask = _batch(99)
    with torch.no_grad():
        ref = model(ids, attention_mask=mask).logits
    fresh = _model(QuantConfig(activation_bits=4, activation_range="learned"), seed=1)
    assert not any(q.ready for q in activation_quantizers(fresh).values())
    fresh.load_state_dict(model.state_dict())
    fresh.eval()
    assert all(q.ready for q in activation_quantizers(fresh).values())
    with torch.no_grad():
        assert torch.equal(fresh(ids, attention_mask=mask).logits, ref)


def test_the_kernels_label_and_the_candidate_label_name_the_activations() -> None:
    model = _model(QuantConfig(ffn_bits=4, activation_bits=4))
    report = apply_candidate_compression(model)
    assert "Linear inputs (int4 per-tensor affine, running range)" in report.kernels
    assert "fake-quant" in report.kernels and report.simulated
    assert QuantConfig(ffn_bits=4, activation_bits=4).label == "4-bit, A4"
    assert QuantConfig(activation_bits=8).quantizes_weights is False and not QuantConfig(activation_bits=8).is_noop


# ---------------------------------------------------------------------------------------- real int8 on CPU
def test_w8a8_serves_as_static_int8_kernels_that_agree_with_the_fake_quant_model() -> None:
    model = _model(W8A8)
    _train_steps(model, 20, lr=3e-3)
    served = copy.deepcopy(model)
    materialize_(served)
    report = convert_int8_for_cpu(served)
    if "engine" not in report.details:
        pytest.skip("no quantized CPU engine here")
    assert "int8 x int8 static quantized Linear" in report.kernels and not report.simulated
    linears = [m for m in served.modules() if isinstance(m, StaticInt8Linear)]
    assert len(linears) == 12
    agree, total, err = 0, 0, 0.0
    for seed in range(8):
        ids, mask = _batch(100 + seed)
        with torch.no_grad():
            a = model(ids, attention_mask=mask).logits
            b = served(ids, attention_mask=mask).logits
        agree += int((a.argmax(-1) == b.argmax(-1)).sum())
        total += len(ids)
        err = max(err, float((a - b).abs().max() / a.abs().max()))
    assert agree / total >= 0.99
    assert err < 0.08, err  # inputs read with 7-bit codes (reduce_range): 0.037 of the logits seen at seed 0


def test_other_activation_bits_keep_their_fake_grid_in_front_of_a_dynamic_int8_linear() -> None:
    model = _model(QuantConfig(attention_bits=8, ffn_bits=8, activation_bits=4))
    _train_steps(model, 3)
    served = copy.deepcopy(model)
    materialize_(served)
    report = convert_int8_for_cpu(served)
    if "engine" not in report.details:
        pytest.skip("no quantized CPU engine here")
    assert report.details["static"] == [] and "int8 dynamic" in report.kernels and report.simulated
    assert "stay fake-quant" in report.kernels
    ids, mask = _batch(5)
    with torch.no_grad():
        served(ids, attention_mask=mask)  # the hooks still find their input grid after the swap
    assert len(activation_quantizers(served)) == 0  # the swapped modules are quantized Linears, not nn.Linear
    assert all(hasattr(m, "input_quant") for n, m in served.named_modules() if n.endswith(("fc1", "q_proj")))


# ----------------------------------------------------------------------------------------- the space
def test_presets_offer_activation_bits_and_a_draw_gives_them_to_the_candidate() -> None:
    for preset in ("tiny", "base"):
        space = load_space(preset)
        assert set(space.activation_bits) == {32, 8, 4} and set(space.activation_range) == {"running", "learned"}
    space = load_space("tiny")
    base = {name: v[0] for name, v in space.model_dump().items() if isinstance(v, list)}
    cand = suggest(ReplayTrial({**base, "activation_bits": 8, "activation_range": "learned"}), space)
    assert (cand.quant.activation_bits, cand.quant.activation_range) == (8, "learned")
    cand = suggest(ReplayTrial({**base, "activation_bits": 32, "activation_range": "learned"}), space)
    assert (cand.quant.activation_bits, cand.quant.activation_range) == (32, "running")  # no range to draw


def test_a_study_that_leaves_activations_alone_hashes_and_dumps_as_before() -> None:
    assert "activation_bits" not in QuantConfig(ffn_bits=8).model_dump()
    assert QuantConfig(ffn_bits=8, activation_bits=8).model_dump()["activation_bits"] == 8


@pytest.mark.parametrize(("data", "words"), [
    ({"quant": {"activation_bits": 2}}, ["quant.activation_bits=2", "use 8, 4, or 32"]),
    ({"quant": {"activation_bits": 16}}, ["quant.activation_bits=16"]),
    ({"quant": {"activation_range": "learned"}}, ["quant.activation_range", "set quant.activation_bits"]),
])
def test_bad_activation_settings_fail_in_one_line_before_training(data: dict[str, Any], words: list[str]) -> None:
    with pytest.raises(ConfigError) as e:
        validate(Candidate, data, source="candidate")
    text = str(e.value)
    assert "\n" not in text.strip() and all(w in text for w in words), text


# ------------------------------------------------------------------------------------ train, measure, export
@pytest.mark.slow
@pytest.mark.parametrize("quant", [W8A8, QuantConfig(attention_bits=4, ffn_bits=8, activation_bits=4,
                                                     activation_range="learned")])
def test_an_activation_quantized_trial_trains_measures_and_exports_with_parity(tmp_path: Path,
                                                                                quant: QuantConfig) -> None:
    from evaluators.pipeline import run_trial
    from nas.export import export_trial, load
    from nas.spec import FidelitySpec, StudySpec
    from storage import Store, TrialCost

    cand = Candidate(n_layers=1, d_model=64, n_heads=4, d_ffn=128, max_len=64, quant=quant)
    train = TrainConfig(steps=200, batch_size=32, lr=2e-3, device="cpu", seed=0)
    measure = MeasureConfig(meter="estimate", window_s=0.1, n_windows=2, idle_s=0.1, warmup_iters=2, batch_size=8,
                            seq_len=32)
    result = run_trial(cand, "builtin:sentiment", train_cfg=train, measure_cfg=measure, weights_out=tmp_path / "w")
    assert result.metrics.accuracy >= 0.75, result.metrics.accuracy  # chance is 0.5
    static = "int8 x int8 static" in result.kernels
    assert static == (quant.activation_bits == 8), result.kernels
    spec = StudySpec(name="aq", task="builtin:sentiment", train=train, measure=measure, fidelity=FidelitySpec(rungs=[200]))
    store = Store.open(str(tmp_path / "nas.db"))
    store.create_study("aq", spec.model_dump_json(), [("accuracy", "maximize"), ("energy_per_sample_j", "minimize")])
    stored = dataclasses.replace(result, weights_path=None)
    store.start_trial("aq", 0, cand)
    store.finish_trial("aq", 0, stored, cost=TrialCost.from_result(stored, wall_s=1.0))
    store.add_artefact("aq", 0, "weights", tmp_path / "w" / "model.safetensors")
    store.close()
    report = export_trial("aq", 0, tmp_path / "out", fmt="all", db=str(tmp_path / "nas.db"))
    assert {"onnx", "torchscript", "hf"} <= {p.format for p in report.parity}
    assert all(p.passed for p in report.parity), report.parity
    back = load(tmp_path / "out")
    assert back.candidate.quant == quant
    assert back.predict(["a fine film"])[0]["label"] in back.labels
