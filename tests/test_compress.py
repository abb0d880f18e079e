"""Tests for nas.compress: fake-quant grids and STE, pruning kinds, size accounting, round-trips."""

from __future__ import annotations

import io
import itertools

import pytest
import torch
from torch.nn.utils import parametrize

from nas.compress import (
    CompressionReport,
    apply_candidate_compression,
    convert_int8_for_cpu,
    int8_backend,
    materialize_,
    model_size_bytes,
    prune_,
    quantize_,
)
from nas.config import AttentionConfig, Candidate, PruneConfig, QuantConfig
from nas.errors import ConfigError
from nas.models import EncoderClassifier, LogitsOnly, build

VOCAB, LABELS = 40, 3
D, H, FFN, L = 32, 4, 64, 2


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> object:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def cand(attention: AttentionConfig | None = None, quant: QuantConfig | None = None,
         sparsity: PruneConfig | None = None, n_layers: int = L) -> Candidate:
    return Candidate(n_layers=n_layers, d_model=D, n_heads=H, d_ffn=FFN, dropout=0.0, max_len=32,
                     attention=attention or AttentionConfig(), quant=quant or QuantConfig(),
                     sparsity=sparsity or PruneConfig())


def make(c: Candidate | None = None, seed: int = 0) -> EncoderClassifier:
    torch.manual_seed(seed)
    return build(c or cand(), vocab_size=VOCAB, num_labels=LABELS)


def ids_mask(B: int = 3, T: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 9:] = 0
    return ids, mask


def train_step(model: EncoderClassifier, steps: int = 2) -> None:
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    ids, mask = ids_mask()
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(ids, mask).logits, torch.tensor([0, 1, 2])).backward()
        opt.step()
    model.eval()


# --- quantization ----------------------------------------------------------------------------------

@pytest.mark.parametrize("bits,scheme", list(itertools.product([8, 4, 2], ["symmetric", "asymmetric"])))
def test_per_channel_grid_has_at_most_2_pow_b_values(bits: int, scheme: str) -> None:
    model = make()
    report = quantize_(model, QuantConfig(embedding_bits=bits, attention_bits=bits, ffn_bits=bits, scheme=scheme))
    assert report.simulated and f"int{bits}" in report.kernels and "fake-quant" in report.kernels
    with torch.no_grad():
        for group, pairs in model.layer_groups().items():
            for module, name in pairs:
                w = getattr(module, name)
                original = module.parametrizations[name].original
                assert not torch.equal(w, original), f"{group} {name} not quantized"
                for row in w:
                    assert row.unique().numel() <= 2**bits
    assert not parametrize.is_parametrized(model.head)  # classifier head stays fp32


def test_per_tensor_grid_and_bf16() -> None:
    model = make()
    quantize_(model, QuantConfig(attention_bits=4, ffn_bits=16, granularity="per_tensor"))
    with torch.no_grad():
        w = model.blocks[0].attn.q_proj.weight
        assert w.unique().numel() <= 16
        f = model.blocks[0].ffn.fc1.weight
        assert torch.equal(f, f.to(torch.bfloat16).float())
        assert not torch.equal(f, model.blocks[0].ffn.fc1.parametrizations.weight.original)


def test_ste_gradients_flow_and_model_still_trains() -> None:
    model = make(cand(quant=QuantConfig(embedding_bits=4, attention_bits=4, ffn_bits=2)))
    apply_candidate_compression(model)
    ids, mask = ids_mask()
    loss = torch.nn.functional.cross_entropy(model.train()(ids, mask).logits, torch.tensor([0, 1, 2]))
    loss.backward()
    for module, name in itertools.chain(*model.layer_groups().values()):
        grad = module.parametrizations[name].original.grad
        assert grad is not None and float(grad.abs().sum()) > 0
    before = model.eval()(ids, mask).logits.detach()
    train_step(model, steps=3)
    assert not torch.allclose(before, model(ids, mask).logits)


def test_filter_fn_and_double_quantize() -> None:
    model = make()
    report = quantize_(model, QuantConfig(ffn_bits=8), filter_fn=lambda m, fqn: fqn.startswith("blocks.0."))
    assert report.details["quantized"] == {"ffn": ["blocks.0.ffn.fc1.weight", "blocks.0.ffn.fc2.weight"]}
    assert not parametrize.is_parametrized(model.blocks[1].ffn.fc1)
    with pytest.raises(ConfigError, match="already fake-quantized"):
        quantize_(model, QuantConfig(ffn_bits=8))


# --- pruning ---------------------------------------------------------------------------------------

def test_head_pruning_removes_exact_parameters() -> None:
    model = make(cand(attention=AttentionConfig(kind="lowrank", k=8)))
    before = model.num_parameters()
    report = prune_(model, PruneConfig(kind="heads", amount=0.5))
    removed_heads, hs = 2, D // H
    per_layer = 4 * removed_heads * hs * D + 3 * removed_heads * hs  # q/k/v rows + biases, out_proj columns
    assert model.num_parameters() == before - L * per_layer
    assert (report.params_before, report.params_after) == (before, before - L * per_layer)
    assert not report.simulated and report.details["heads_removed_per_layer"] == [2, 2]
    for block in model.blocks:
        assert block.attn.n_heads == 2 and block.attn.q_proj.out_features == 2 * hs
    ids, mask = ids_mask()
    out = model.eval()(ids, mask, output_attentions=True)
    assert out.logits.shape == (3, LABELS) and torch.isfinite(out.logits).all()


def test_head_pruning_keeps_the_strongest_heads() -> None:
    model = make(cand(n_layers=1))
    attn = model.blocks[0].attn
    hs = attn.head_dim
    with torch.no_grad():
        for lin in (attn.q_proj, attn.k_proj, attn.v_proj):
            lin.weight[2 * hs:3 * hs] *= 10.0  # head 2 is by far the strongest
    kept_rows = attn.q_proj.weight[2 * hs:3 * hs].detach().clone()
    prune_(model, PruneConfig(kind="heads", amount=0.75))
    assert attn.n_heads == 1 and torch.equal(attn.q_proj.weight, kept_rows)
    out = model.eval()(*ids_mask(), output_attentions=True)
    assert out.attentions[0].shape == (3, 1, 12, 12)  # type: ignore[index]


def test_ffn_pruning_removes_exact_parameters() -> None:
    model = make()
    before = model.num_parameters()
    report = prune_(model, PruneConfig(kind="ffn", amount=0.25))
    removed = 16  # round(64 * 0.25)
    assert model.num_parameters() == before - L * removed * (2 * D + 1)  # fc1 row + bias, fc2 column
    assert report.details["neurons_removed_per_layer"] == [removed, removed]
    assert all(b.ffn.d_ffn == FFN - removed for b in model.blocks)
    assert torch.isfinite(model.eval()(*ids_mask()).logits).all()


def _linears(model: EncoderClassifier) -> list[torch.nn.Module]:
    return [m for g in ("attention", "ffn") for m, n in model.layer_groups()[g] if n == "weight"]


def test_two_four_masks_have_two_zeros_per_group_and_persist() -> None:
    model = make()
    report = prune_(model, PruneConfig(kind="2:4"))
    assert report.simulated and report.details["sparsity_reached"] == pytest.approx(0.5)
    train_step(model)
    with torch.no_grad():
        for lin in _linears(model):
            w = lin.weight
            zeros = (w == 0).reshape(w.shape[0], -1, 4).sum(-1)
            assert torch.all(zeros == 2)
    assert torch.isfinite(model(*ids_mask()).logits).all()


def test_magnitude_sparsity_reaches_amount_and_persists() -> None:
    model = make()
    prune_(model, PruneConfig(kind="magnitude", amount=0.6))
    train_step(model)
    with torch.no_grad():
        for lin in _linears(model):
            assert float((lin.weight == 0).float().mean()) == pytest.approx(0.6, abs=0.01)
    assert torch.isfinite(model(*ids_mask()).logits).all()


def test_structured_pruning_after_quantize_is_refused() -> None:
    model = make()
    quantize_(model, QuantConfig(attention_bits=8))
    with pytest.raises(ConfigError, match="before quantize_"):
        prune_(model, PruneConfig(kind="heads", amount=0.25))


def test_zeros_survive_fake_quant() -> None:
    model = make(cand(quant=QuantConfig(ffn_bits=4, attention_bits=4, scheme="asymmetric"),
                      sparsity=PruneConfig(kind="magnitude", amount=0.5)))
    apply_candidate_compression(model)
    with torch.no_grad():
        for lin in _linears(model):
            assert float((lin.weight == 0).float().mean()) >= 0.5


# --- size, round-trip, export, int8 -----------------------------------------------------------------

def test_model_size_bytes_follows_bit_width() -> None:
    sizes = {}
    for bits in (32, 8, 4):
        model = make(cand(quant=QuantConfig(embedding_bits=bits, attention_bits=bits, ffn_bits=bits)))
        apply_candidate_compression(model)
        sizes[bits] = model_size_bytes(model)
    assert sizes[32] == sum(p.numel() * 4 for p in make().parameters())
    assert sizes[4] < sizes[8] < sizes[32]
    assert 0.25 < sizes[8] / sizes[32] < 0.35  # ~1/4, plus fp32 biases, norms, head and scales
    assert 0.5 < sizes[4] / sizes[8] < 0.65  # ~1/2
    pruned = make(cand(sparsity=PruneConfig(kind="heads", amount=0.5)))
    apply_candidate_compression(pruned)
    assert model_size_bytes(pruned) == 4 * pruned.num_parameters() < sizes[32]
    masked = make(cand(sparsity=PruneConfig(kind="2:4")))
    apply_candidate_compression(masked)
    assert model_size_bytes(masked) == sizes[32]  # masks are counted dense


ROUND_TRIP = {
    "lowrank-heads-int4-asym": cand(AttentionConfig(kind="lowrank", k=8),
                                    QuantConfig(embedding_bits=8, attention_bits=4, ffn_bits=4, scheme="asymmetric"),
                                    PruneConfig(kind="heads", amount=0.25)),
    "local-ffn-int8": cand(AttentionConfig(kind="local", window=3), QuantConfig(ffn_bits=8, attention_bits=8),
                           PruneConfig(kind="ffn", amount=0.5)),
    "linear-2:4-int2": cand(AttentionConfig(kind="linear"), QuantConfig(attention_bits=2, ffn_bits=16),
                            PruneConfig(kind="2:4")),
    "softmax-magnitude-per-tensor": cand(quant=QuantConfig(ffn_bits=4, granularity="per_tensor"),
                                         sparsity=PruneConfig(kind="magnitude", amount=0.3)),
}


@pytest.mark.parametrize("name", list(ROUND_TRIP))
def test_state_dict_round_trip(name: str) -> None:
    c = ROUND_TRIP[name]
    trained = make(c, seed=0)
    apply_candidate_compression(trained)
    train_step(trained)
    buf = io.BytesIO()
    torch.save(trained.state_dict(), buf)
    buf.seek(0)
    fresh = make(Candidate.from_json(c.to_json()), seed=123)  # different init: load must fill everything
    report = apply_candidate_compression(fresh)
    fresh.load_state_dict(torch.load(buf))
    fresh.eval()
    ids, mask = ids_mask()
    with torch.no_grad():
        assert torch.equal(fresh(ids, mask).logits, trained(ids, mask).logits)
    assert report.simulated
    assert apply_candidate_compression(fresh) is report  # idempotent: never prunes twice


def test_noop_candidate_reports_dense() -> None:
    report = apply_candidate_compression(make())
    assert isinstance(report, CompressionReport)
    assert not report.simulated and "dense" in report.kernels
    assert report.params_before == report.params_after


def test_trace_and_onnx_export_after_compression() -> None:
    model = make(ROUND_TRIP["lowrank-heads-int4-asym"]).eval()
    apply_candidate_compression(model)
    ids, mask = ids_mask()
    wrapper = LogitsOnly(model)
    expected = model(ids, mask).logits.detach()
    traced = torch.jit.trace(wrapper, (ids, mask))
    assert torch.allclose(traced(ids, mask), expected, atol=1e-6)
    pytest.importorskip("onnx")
    buf = io.BytesIO()
    torch.onnx.export(wrapper, (ids, mask), buf, dynamo=False, input_names=["input_ids", "attention_mask"])
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(buf.getvalue())
    got = sess.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    assert torch.allclose(torch.from_numpy(got), expected, atol=1e-5)


def test_materialize_bakes_weights() -> None:
    model = make(ROUND_TRIP["linear-2:4-int2"]).eval()
    apply_candidate_compression(model)
    ids, mask = ids_mask()
    expected = model(ids, mask).logits.detach()
    report = materialize_(model)
    assert report.details["materialized"] and not any(parametrize.is_parametrized(m) for m in model.modules())
    assert torch.allclose(model(ids, mask).logits, expected, atol=1e-6)


@pytest.mark.parametrize("name", list(ROUND_TRIP))
@pytest.mark.parametrize("bake", ["materialize", "int8"])
def test_baking_a_deep_copy_leaves_the_original_intact(name: str, bake: str) -> None:
    """Regression: parametrize shares its dynamic class with deep copies, so baking the copy used to
    delete ``weight`` from the original (FLOPs became null for every compressed trial)."""
    import copy

    from nas.models.flops import count_flops

    model = make(ROUND_TRIP[name]).eval()
    apply_candidate_compression(model)
    ids, mask = ids_mask()
    expected = model(ids, mask).logits.detach()
    flops = count_flops(model, ids, mask)
    serving = copy.deepcopy(model)
    materialize_(serving) if bake == "materialize" else convert_int8_for_cpu(serving)
    assert not any(parametrize.is_parametrized(m) for m in serving.modules() if bake == "materialize")
    assert any(parametrize.is_parametrized(m) for m in model.modules())
    with torch.no_grad():
        assert torch.allclose(model(ids, mask).logits, expected, atol=1e-6)
    assert count_flops(model, ids, mask) == flops
    train_step(model)  # the original still trains (export --retrain)


def test_int8_cpu_kernels() -> None:
    model = make(cand(quant=QuantConfig(attention_bits=8, ffn_bits=8))).eval()
    apply_candidate_compression(model)
    ids, mask = ids_mask()
    fake = model(ids, mask).logits.detach()
    size_fake = model_size_bytes(model)
    report = convert_int8_for_cpu(model)
    if int8_backend() is None:
        assert "fake-quant" in report.kernels and report.simulated
        return
    assert "int8 dynamic quantized Linear" in report.kernels and not report.simulated
    assert len(report.details["converted"]) == L * 6
    assert report.params_after == report.params_before
    with torch.no_grad():
        real = model(ids, mask).logits
    assert torch.allclose(real, fake, atol=0.02)
    assert model_size_bytes(model) == pytest.approx(size_fake, rel=0.02)


def test_int8_without_8bit_groups_changes_nothing() -> None:
    model = make(cand(quant=QuantConfig(ffn_bits=4)))
    apply_candidate_compression(model)
    report = convert_int8_for_cpu(model)
    assert report.details["converted"] == [] and report.simulated and "int4" in report.kernels


def test_bad_configs_raise_config_error() -> None:
    with pytest.raises(ConfigError, match="QuantConfig"):
        quantize_(make(), {"ffn_bits": 8})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="leaves none"):
        prune_(make(cand(n_layers=1)), PruneConfig(kind="heads", amount=0.9))
