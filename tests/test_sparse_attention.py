"""Sparse attention kinds: exact against a dense masked reference, O(T w) FLOPs, padding, fix-it errors."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError
from torch.utils.flop_counter import FlopCounterMode

from nas.config import AttentionConfig, Candidate
from nas.models import ATTENTION_REGISTRY, build
from nas.models.attention import Attention, SoftmaxAttention

T, C, NH = 50, 32, 4


def cand(max_len: int = 64, **attention) -> Candidate:
    return Candidate.model_validate({"n_layers": 1, "d_model": C, "n_heads": NH, "d_ffn": 64,
                                     "max_len": max_len, "attention": attention})


def module(**attention) -> Attention:
    torch.manual_seed(0)
    return ATTENTION_REGISTRY.lookup(attention["kind"])(cand(**attention)).eval()


def reference(m: Attention, x: torch.Tensor, kpm: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Dense softmax over the (T, T) ``allowed`` pattern minus padded keys, with ``m``'s projections."""
    q, k, v = (m._split(p(x)) for p in (m.q_proj, m.k_proj, m.v_proj))
    att = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))
    blocked = ~allowed[None, None] | kpm[:, None, None, :]
    att = att.masked_fill(blocked, torch.finfo(att.dtype).min).softmax(-1)
    y = (att @ v).transpose(1, 2).reshape(x.size(0), x.size(1), -1)
    return m.out_proj(y)


def flops(m: Attention, x: torch.Tensor) -> int:
    """FLOPs of one forward of an attention module on its explicit (countable) path."""
    m.use_fused = False
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        m(x)
    return int(counter.get_total_flops())


def _pattern(kind: str, **p) -> torch.Tensor:
    i = torch.arange(T)[:, None]
    j = torch.arange(T)[None, :]
    if kind == "local":
        return (i - j).abs() <= p["window"]
    if kind == "strided":
        return (i // p["stride"] == j // p["stride"]) | (i % p["stride"] == j % p["stride"])
    if kind == "fixed":
        return (i // p["stride"] == j // p["stride"]) | (j % p["stride"] >= p["stride"] - p["summary"])
    return torch.ones(T, T, dtype=torch.bool)


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    x = torch.randn(2, T, C)
    kpm = torch.zeros(2, T, dtype=torch.bool)
    kpm[1, 37:] = True  # the second row is padded from 37 on
    return x, kpm


@pytest.mark.parametrize("attention", [
    {"kind": "local", "window": 4}, {"kind": "local", "window": 7}, {"kind": "local", "window": 64},
    {"kind": "strided", "stride": 7}, {"kind": "strided", "stride": 8},
    {"kind": "fixed", "stride": 8, "summary": 2}, {"kind": "fixed", "stride": 6, "summary": 1},
    {"kind": "hash", "buckets": 1},
])
def test_each_sparse_kernel_equals_dense_softmax_over_its_pattern(attention, batch) -> None:
    """Real positions only: a padded query's output is free (it never reaches a real one)."""
    x, kpm = batch
    m = module(**attention)
    allowed = _pattern(attention["kind"], **{k: v for k, v in attention.items() if k != "kind"})
    y, _ = m(x, kpm)
    ref = reference(m, x, kpm, allowed)
    real = ~kpm
    assert torch.allclose(y[real], ref[real], atol=1e-5), (y[real] - ref[real]).abs().max()


def test_local_with_the_window_at_least_t_equals_softmax_and_the_map_path_agrees(batch) -> None:
    x, kpm = batch
    m = module(kind="local", window=T)
    soft = SoftmaxAttention(cand(kind="softmax")).eval()
    soft.load_state_dict(m.state_dict())
    assert torch.allclose(m(x, kpm)[0][~kpm], soft(x, kpm)[0][~kpm], atol=1e-6)
    small = module(kind="local", window=3)
    y, w = small(x, kpm, need_weights=True)  # attention distillation: the T x T map, same output
    assert w is not None and w.shape == (2, NH, T, T)
    assert torch.allclose(y[~kpm], small(x, kpm)[0][~kpm], atol=1e-5)


def test_the_map_path_builds_its_mask_on_the_inputs_device() -> None:
    """Without a padding mask the band was built on the CPU: a GPU model failed under attention KD."""
    m = module(kind="local", window=3).to("meta")
    y, w = m(torch.randn(2, T, C, device="meta"), None, need_weights=True)
    assert y.device.type == "meta" and w is not None and w.device.type == "meta"


def test_hash_buckets_are_balanced_chunks_and_padding_never_leaks(batch) -> None:
    x, kpm = batch
    m = module(kind="hash", buckets=4)
    y, _ = m(x, kpm)
    x2 = x.clone()
    x2[1, 37:] = 1e4 * torch.randn(T - 37, C)  # garbage at padded positions
    assert torch.equal(m(x2, kpm)[0][1, :37], y[1, :37])
    assert torch.isfinite(y).all()


@pytest.mark.parametrize(("attention", "scores"), [
    # scores per (batch, head): the q.k products the kernel forms (its att @ v costs the same again)
    ({"kind": "softmax"}, 512 * 512),
    ({"kind": "local", "window": 32}, 16 * 32 * 96),
    ({"kind": "strided", "stride": 32}, 16 * 32 * 32 + 32 * 16 * 16),
    ({"kind": "fixed", "stride": 32, "summary": 2}, 512 * 32 + 512 * 16 * 2),
    ({"kind": "hash", "buckets": 8}, 8 * 64 * 64),
])
def test_attention_flops_match_the_analytic_count(attention, scores) -> None:
    """FLOPs of the core (scores and weighted sum; projections excluded) at T = 512, batch 1."""
    m = ATTENTION_REGISTRY.lookup(attention["kind"])(cand(max_len=512, **attention)).eval()
    x = torch.randn(1, 512, C)
    proj = 4 * 2 * 512 * C * C  # q, k, v, out
    extra = 2 * 2 * 512 * (C // NH) * 8 * NH if attention["kind"] == "hash" else 0  # hashing q and k
    assert flops(m, x) == proj + extra + NH * 2 * 2 * scores * (C // NH)


def test_at_512_the_sparse_kinds_use_at_most_a_quarter_of_softmaxs_attention_flops() -> None:
    def core(**attention) -> int:
        m = ATTENTION_REGISTRY.lookup(attention["kind"])(cand(max_len=512, **attention)).eval()
        return flops(m, torch.randn(1, 512, C)) - 4 * 2 * 512 * C * C

    full = core(kind="softmax")
    for attention in ({"kind": "local", "window": 32}, {"kind": "strided", "stride": 23},
                      {"kind": "hash", "buckets": 8}):
        assert core(**attention) <= full / 4, attention


@pytest.mark.parametrize(("attention", "message"), [
    ({"kind": "strided"}, "attention.stride is required when kind is 'strided' (e.g. stride: 16)"),
    ({"kind": "hash"}, "attention.buckets is required when kind is 'hash' (e.g. buckets: 8)"),
    ({"kind": "local", "window": 4, "stride": 8}, "attention.stride only applies to kind 'strided' or 'fixed'"),
    ({"kind": "fixed", "stride": 4, "summary": 4}, "attention.summary (4) must be below attention.stride (4)"),
    ({"kind": "strided", "stride": 4, "summary": 1}, "attention.summary only applies to kind 'fixed'"),
])
def test_bad_sparse_settings_are_one_line_fix_it_errors(attention, message) -> None:
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        AttentionConfig.model_validate(attention)


def test_earlier_candidates_dump_and_hash_as_before() -> None:
    """The new fields are left out of a dump when unset: stored candidate hashes stay valid."""
    dumped = Candidate().model_dump_json()
    assert '"stride"' not in dumped and '"buckets"' not in dumped and '"window":null' in dumped
    assert Candidate.model_validate_json(dumped) == Candidate()
    assert '"buckets":8' in cand(kind="hash", buckets=8).model_dump_json()


@pytest.mark.parametrize("attention", [{"kind": "local", "window": 4}, {"kind": "strided", "stride": 8},
                                       {"kind": "fixed", "stride": 8, "summary": 2},
                                       {"kind": "hash", "buckets": 4}])
def test_sparse_models_train_and_keep_their_weights_through_a_state_dict(attention) -> None:
    torch.manual_seed(0)
    model = build(cand(**attention), vocab_size=50, num_labels=2)
    ids = torch.randint(1, 50, (3, T))
    loss = torch.nn.functional.cross_entropy(model(ids).logits, torch.tensor([0, 1, 0]))
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    again = build(cand(**attention), vocab_size=50, num_labels=2)
    again.load_state_dict(model.state_dict())
    assert torch.equal(again.eval()(ids).logits, model.eval()(ids).logits)
