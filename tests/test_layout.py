"""The post-LN (BERT) layout, LayerNorm epsilon, the pooler and an explicit head width, with every attention
kind, FLOP counting, structured pruning and the ``hf`` export round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nas.compress import apply_candidate_compression
from nas.config import AttentionConfig, Candidate, PruneConfig
from nas.models import EncoderClassifier, build, count_flops

VOCAB, LABELS = 40, 3
ATTENTIONS = {
    "softmax": AttentionConfig(kind="softmax"),
    "local": AttentionConfig(kind="local", window=2),
    "linear": AttentionConfig(kind="linear"),
    "lowrank": AttentionConfig(kind="lowrank", k=8),
}


def post(kind: str = "softmax", **kw: object) -> Candidate:
    base: dict[str, object] = {"n_layers": 2, "d_model": 24, "n_heads": 3, "head_dim": 6, "d_ffn": 32,
                               "dropout": 0.0, "max_len": 16, "pooling": "cls", "pooler": "tanh", "norm": "post",
                               "layer_norm_eps": 1e-12, "attention": ATTENTIONS[kind]}
    base.update(kw)
    return Candidate.model_validate(base)


def make(c: Candidate, seed: int = 0) -> EncoderClassifier:
    torch.manual_seed(seed)
    return build(c, vocab_size=VOCAB, num_labels=LABELS).eval()


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(4, VOCAB, (3, 10), generator=g)
    mask = torch.ones(3, 10, dtype=torch.long)
    mask[1, 6:] = 0
    ids[1, 6:] = 0
    return ids, mask


def test_post_layout_modules() -> None:
    m = make(post())
    assert isinstance(m.emb_ln, torch.nn.LayerNorm) and m.emb_ln.eps == 1e-12
    assert isinstance(m.ln_f, torch.nn.Identity)
    assert m.pooler is not None and m.pooler.weight.shape == (24, 24) and isinstance(m.pooler_act, torch.nn.Tanh)
    attn = m.blocks[0].attn
    assert (attn.q_proj.weight.shape, attn.out_proj.weight.shape) == ((18, 24), (24, 18))
    assert m.blocks[1].ln_2.eps == 1e-12
    pre = make(Candidate(n_layers=1, d_model=16, n_heads=2, d_ffn=16, max_len=16))
    assert isinstance(pre.emb_ln, torch.nn.Identity) and isinstance(pre.ln_f, torch.nn.LayerNorm)
    assert pre.pooler is None and pre.ln_f.eps == 1e-5
    relu = make(post(pooler="relu"))
    assert isinstance(relu.pooler_act, torch.nn.ReLU)


def test_post_block_is_layernorm_after_the_residual() -> None:
    m = make(post())
    block = m.blocks[0]
    x = torch.randn(2, 5, 24)
    a, _ = block.attn(x)
    h = block.ln_1(x + a)
    expected = block.ln_2(h + block.ffn(h))
    got, _ = block(x)
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("kind", list(ATTENTIONS))
def test_every_attention_kind_in_the_post_layout(kind: str) -> None:
    m = make(post(kind))
    ids, mask = batch()
    out = m(ids, mask, output_hidden_states=True)
    assert out.logits.shape == (3, LABELS) and torch.isfinite(out.logits).all()
    assert out.hidden_states is not None and len(out.hidden_states) == 3
    # the pooled logits ignore padding content
    ids2 = ids.clone()
    ids2[1, 6:] = 7
    torch.testing.assert_close(m(ids2, mask).logits, out.logits)
    assert count_flops(m, ids, mask) > 0


def test_flops_follow_the_attention_width() -> None:
    ids, mask = batch()
    narrow = count_flops(make(post(head_dim=4)), ids, mask)
    wide = count_flops(make(post(head_dim=12)), ids, mask)
    # q/k/v/out scale with n_heads * head_dim: 4 matrices of 24 x (12 - 4) * 3 per token and layer, and more
    assert wide - narrow >= 2 * 4 * 24 * 8 * 3 * 30 * 2


def test_head_pruning_with_an_explicit_head_width() -> None:
    c = post(sparsity=PruneConfig(kind="heads", amount=0.34))
    m = make(c)
    apply_candidate_compression(m)
    attn = m.blocks[0].attn
    assert (attn.n_heads, attn.head_dim) == (2, 6)
    assert attn.q_proj.weight.shape == (12, 24) and attn.out_proj.weight.shape == (24, 12)
    ids, mask = batch()
    assert m(ids, mask).logits.shape == (3, LABELS)


def test_hf_export_round_trip_of_the_post_layout(tmp_path: Path) -> None:
    from evaluators.tokenize import word_level
    from nas.export.loaded import LoadedModel, load

    c = post()
    m = make(c)
    tok = word_level([f"w{i}" for i in range(VOCAB - 4)])
    LoadedModel(m, tok, ["a", "b", "c"], 16, c).save(tmp_path / "hf")
    back = load(tmp_path / "hf")
    assert back.candidate == c
    ids, mask = batch()
    torch.testing.assert_close(back.model(ids, mask).logits, m(ids, mask).logits)
