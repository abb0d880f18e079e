"""Tests for nas.models: attention registry, padding, locality, cost scaling, outputs."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from nas.config import AttentionConfig, Candidate
from nas.errors import ConfigError
from nas.models import ATTENTION_REGISTRY, EncoderClassifier, LogitsOnly, ModelOutput, build, count_flops

VOCAB, LABELS = 50, 3


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> object:
    # Tiny models run fastest on one thread, and a busy CI box oversubscribes badly otherwise.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

ATTENTIONS = {
    "softmax": AttentionConfig(kind="softmax"),
    "local": AttentionConfig(kind="local", window=2),
    "linear": AttentionConfig(kind="linear"),
    "lowrank": AttentionConfig(kind="lowrank", k=8),
}


def tiny(kind: str = "softmax", n_layers: int = 2, pooling: str = "mean", max_len: int = 64,
         **kw: object) -> Candidate:
    return Candidate(n_layers=n_layers, d_model=32, n_heads=4, d_ffn=64, dropout=0.0, max_len=max_len,
                     pooling=pooling, attention=ATTENTIONS[kind], **kw)


def make(kind: str = "softmax", seed: int = 0, **kw: object) -> EncoderClassifier:
    torch.manual_seed(seed)
    return build(tiny(kind, **kw), vocab_size=VOCAB, num_labels=LABELS).eval()


def test_registry_has_the_four_kinds() -> None:
    assert set(ATTENTION_REGISTRY) >= {"softmax", "local", "linear", "lowrank"}


@pytest.mark.parametrize("kind", list(ATTENTIONS))
def test_same_signature_and_shapes(kind: str) -> None:
    model = make(kind)
    assert model.candidate.attention.kind == kind
    attn = model.blocks[0].attn
    for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
        assert isinstance(getattr(attn, name), torch.nn.Linear)
    assert (attn.n_heads, attn.head_dim) == (4, 8)
    x = torch.randn(2, 10, 32)
    pad = torch.zeros(2, 10, dtype=torch.bool)
    pad[1, 7:] = True
    y, w = attn(x, key_padding_mask=pad, need_weights=True)
    assert y.shape == (2, 10, 32)
    if kind in ("softmax", "local"):
        assert w is not None and w.shape == (2, 4, 10, 10)
        assert torch.allclose(w.sum(-1), torch.ones(2, 4, 10), atol=1e-5)
        # real queries give padded keys exactly no weight
        assert float(w[1, :, :7, 7:].detach().abs().max()) == 0.0
    else:
        assert w is None
    y2, w2 = attn(x, None, False)
    assert y2.shape == (2, 10, 32) and w2 is None


@pytest.mark.parametrize("pooling", ["mean", "cls"])
@pytest.mark.parametrize("kind", list(ATTENTIONS))
def test_padding_invariance(kind: str, pooling: str) -> None:
    model = make(kind, pooling=pooling)
    ids = torch.randint(0, VOCAB, (3, 12))
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[1, 8:] = 0
    mask[2, 3:] = 0
    other = ids.clone()
    other[mask == 0] = torch.randint(0, VOCAB, (int((mask == 0).sum()),))
    with torch.no_grad():
        a = model(ids, mask, output_hidden_states=True)
        b = model(other, mask, output_hidden_states=True)
    assert torch.allclose(a.logits, b.logits, atol=1e-6)
    real = mask.bool()
    for ha, hb in zip(a.hidden_states, b.hidden_states, strict=True):  # type: ignore[arg-type]
        assert torch.allclose(ha[real], hb[real], atol=1e-6)


@pytest.mark.parametrize("kind", list(ATTENTIONS))
def test_output_hidden_states_and_attentions(kind: str) -> None:
    model = make(kind)
    ids = torch.randint(0, VOCAB, (2, 9))
    out = model(ids, output_hidden_states=True, output_attentions=True)
    assert isinstance(out, ModelOutput)
    assert out.logits.shape == (2, LABELS)
    assert out.hidden_states is not None and len(out.hidden_states) == 3
    assert all(h.shape == (2, 9, 32) for h in out.hidden_states)
    assert out.attentions is not None and len(out.attentions) == 2
    for a in out.attentions:
        if kind in ("softmax", "local"):
            assert a is not None and a.shape == (2, 4, 9, 9)
        else:
            assert a is None
    plain = model(ids)
    assert plain.hidden_states is None and plain.attentions is None
    assert torch.allclose(plain.logits, out.logits, atol=1e-6)  # fused and explicit paths agree


def test_local_attention_cannot_see_beyond_window() -> None:
    window = 2
    model = make("local", n_layers=1)
    ids = torch.randint(0, VOCAB, (1, 16))
    j = 7
    perturbed = ids.clone()
    perturbed[0, j] = (ids[0, j] + 1) % VOCAB
    with torch.no_grad():
        h = model(ids, output_hidden_states=True).hidden_states[1]  # type: ignore[index]
        hp = model(perturbed, output_hidden_states=True).hidden_states[1]  # type: ignore[index]
    for i in range(16):
        same = torch.allclose(h[0, i], hp[0, i], atol=1e-6)
        if abs(i - j) > window:
            assert same, f"position {i} saw token {j} beyond window {window}"
    assert not torch.allclose(h[0, j + window], hp[0, j + window])  # inside the window it does see it
    maps = model(ids, output_attentions=True).attentions[0]  # type: ignore[index]
    idx = torch.arange(16)
    outside = (idx[:, None] - idx[None, :]).abs() > window
    assert float(maps[0][:, outside].detach().abs().max()) == 0.0


def _attn_flops(kind: str, T: int) -> int:
    attn = make(kind, n_layers=1, max_len=256).blocks[0].attn
    attn.use_fused = False
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        attn(torch.randn(1, T, 32), None, False)
    return int(fc.get_total_flops())


def test_linear_attention_cost_is_linear_softmax_is_quadratic() -> None:
    lin = _attn_flops("linear", 256) / _attn_flops("linear", 64)
    soft = _attn_flops("softmax", 256) / _attn_flops("softmax", 64)
    assert lin == pytest.approx(4.0, rel=0.02)
    assert soft > 8.0  # projections are linear, QK^T and AV are quadratic
    low = _attn_flops("lowrank", 256) / _attn_flops("lowrank", 64)
    assert low == pytest.approx(4.0, rel=0.02)


@pytest.mark.parametrize("T", [5, 20])
def test_lowrank_projects_keys_and_values_to_k(T: int) -> None:
    model = make("lowrank", n_layers=1)
    attn = model.blocks[0].attn
    assert attn.projected_length == 8
    assert attn.E.shape == (8, 64) and attn.F.shape == (8, 64)
    seen: list[tuple[int, ...]] = []
    handle = attn.projected_kv.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape)))
    model(torch.randint(0, VOCAB, (2, T)))
    handle.remove()
    assert seen == [(2, 4, 8, 8), (2, 4, 8, 8)]  # keys then values: (B, nh, k, hs)


def test_gradient_checkpointing_matches_plain_backward() -> None:
    ids = torch.randint(0, VOCAB, (2, 8))
    labels = torch.tensor([0, 2])
    grads = []
    for ckpt in (False, True):
        model = make("softmax").train()
        model.enable_gradient_checkpointing(ckpt)
        torch.nn.functional.cross_entropy(model(ids).logits, labels).backward()
        grads.append(model.blocks[0].attn.q_proj.weight.grad.clone())  # type: ignore[union-attr]
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_all_padding_row_is_finite() -> None:
    for kind in ATTENTIONS:
        model = make(kind)
        mask = torch.zeros(2, 6, dtype=torch.long)
        mask[0, :3] = 1
        out = model(torch.randint(0, VOCAB, (2, 6)), mask, output_attentions=True)
        assert torch.isfinite(out.logits).all()


def test_bad_inputs_raise_config_error() -> None:
    with pytest.raises(ConfigError, match="vocab_size"):
        build(tiny(), vocab_size=0, num_labels=2)
    with pytest.raises(ConfigError, match="Candidate"):
        build({"n_layers": 1}, vocab_size=10, num_labels=2)  # type: ignore[arg-type]
    model = make()
    with pytest.raises(ConfigError, match="max_len"):
        model(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(ConfigError, match="2-D"):
        model(torch.zeros(5, dtype=torch.long))


def test_count_flops_and_trace() -> None:
    model = make("softmax")
    ids = torch.randint(0, VOCAB, (2, 16))
    assert count_flops(model, ids) > 0
    assert all(b.attn.use_fused for b in model.blocks)  # restored
    mask = torch.ones_like(ids)
    traced = torch.jit.trace(LogitsOnly(model), (ids, mask))
    assert torch.allclose(traced(ids, mask), model(ids, mask).logits, atol=1e-6)


def test_layer_rule_models_and_compress_import_only_torch_and_l0() -> None:
    root = Path(__file__).resolve().parents[1] / "nas"
    banned = ("optuna", "sqlalchemy", "ray", "transformers", "evaluators", "storage", "search_spaces",
              "nas.search", "nas.cli", "nas.export", "nas.runner")
    for pkg in ("models", "compress"):
        for path in (root / pkg).glob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                mods = []
                if isinstance(node, ast.Import):
                    mods = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    mods = [node.module]
                for mod in mods:
                    assert not any(mod == b or mod.startswith(b + ".") for b in banned), f"{path}: {mod}"


@pytest.mark.parametrize("kind", list(ATTENTIONS))
def test_half_precision_padding_stays_finite(kind: str) -> None:
    # Large activations overflow fp16 scores; no row may become NaN and leak into real positions.
    model = make(kind)
    with torch.no_grad():
        model.tok_emb.weight.mul_(3000.0)
    model = model.to(torch.float16)
    ids = torch.randint(0, VOCAB, (2, 12))
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    out = model(ids, mask, output_hidden_states=True)
    assert torch.isfinite(out.logits).all()
    assert all(torch.isfinite(h).all() for h in out.hidden_states)  # type: ignore[union-attr]
