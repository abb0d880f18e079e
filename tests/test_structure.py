"""Structural levers of the search space: cross-layer sharing, low-rank weights, inference depth (LayerDrop).

Exactness against references, FLOPs and parameters against analytic counts, fix-it errors, save/load with
shared tensors, inheritance (truncated SVD, shared groups) and the presets sampling every new dimension.
"""

from __future__ import annotations

import collections
from typing import Any

import optuna
import pytest
import torch
from torch import nn

from nas.config import Candidate, RankConfig, SharingConfig, validate
from nas.errors import ConfigError
from nas.models import LowRankLinear, build, count_flops, load_unique_state, unique_state
from search_spaces import load_space, suggest

BASE: dict[str, Any] = {"d_model": 32, "n_heads": 4, "d_ffn": 64, "max_len": 32, "dropout": 0.0}
V, C, B, T = 50, 3, 2, 16
LAYERS = [{"n_heads": 2, "d_ffn": 32}, {"n_heads": 8, "d_ffn": 96}, {"n_heads": 4, "d_ffn": 64}]


def _ids(seed: int = 0) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


def _model(**kw: Any) -> Any:
    torch.manual_seed(0)
    base = {k: v for k, v in BASE.items() if "layers" not in kw or k not in ("n_heads", "d_ffn")}
    return build(Candidate(**{**base, **kw}), vocab_size=V, num_labels=C).eval()


def _manual(model: Any, blocks: list[nn.Module], ids: torch.Tensor) -> torch.Tensor:
    """The model's forward written out, applying ``blocks`` in order."""
    pos = torch.arange(ids.shape[1])
    x = model.emb_ln(model.tok_emb(ids) + model.pos_emb(pos)[None])
    for block in blocks:
        x, _ = block(x)
    out: torch.Tensor = model.head(model.ln_f(x).mean(dim=1))
    return out


# --- sharing ------------------------------------------------------------------------------------------
def test_sharing_all_with_one_group_equals_one_layer_applied_l_times() -> None:
    one = _model(n_layers=1)
    shared = _model(n_layers=4, sharing=SharingConfig(kind="all"))
    load_unique_state(shared, one.state_dict())  # a one-group model stores exactly a 1-layer model's tensors
    ids = _ids()
    with torch.no_grad():
        got = shared(ids).logits
        want = _manual(one, [one.blocks[0]] * 4, ids)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(got, one(ids).logits)  # applying it 4 times is not applying it once


def _block_params(model: Any, part: str) -> int:
    return sum(p.numel() for p in getattr(model.blocks[0], part).parameters())


@pytest.mark.parametrize(("kind", "group", "shared_parts"), [
    ("all", None, ("attn", "ffn", "ln_1", "ln_2")), ("all", 2, ("attn", "ffn", "ln_1", "ln_2")),
    ("attention", None, ("attn",)), ("attention", 3, ("attn",)), ("ffn", 2, ("ffn",)),
])
def test_shared_parameters_count_once_and_flops_do_not_shrink(kind: str, group: int | None,
                                                              shared_parts: tuple[str, ...]) -> None:
    n = 4
    dense = _model(n_layers=n)
    shared = _model(n_layers=n, sharing=SharingConfig(kind=kind, group_size=group))
    groups = -(-n // (group or n))  # ceil: the last group may be shorter
    per_layer = sum(_block_params(dense, p) for p in shared_parts)
    assert shared.num_parameters() == dense.num_parameters() - (n - groups) * per_layer
    assert sum(p.numel() for p in unique_state(shared).values()) == shared.num_parameters()
    ids = _ids()
    assert count_flops(shared, ids) == count_flops(dense, ids)


def test_shared_weights_round_trip_through_safetensors(tmp_path: Any) -> None:
    from safetensors.torch import load_file, save_file

    model = _model(n_layers=3, sharing=SharingConfig(kind="attention"))
    with torch.no_grad():
        model.blocks[0].attn.q_proj.weight.add_(1.0)  # the change shows in every layer of the group
    assert model.blocks[2].attn.q_proj.weight is model.blocks[0].attn.q_proj.weight
    save_file(unique_state(model), str(tmp_path / "w.safetensors"))  # refused when tensors share memory
    again = _model(n_layers=3, sharing=SharingConfig(kind="attention"))
    load_unique_state(again, load_file(str(tmp_path / "w.safetensors")))
    torch.testing.assert_close(again(_ids()).logits, model(_ids()).logits)
    assert again.blocks[2].attn.q_proj.weight is again.blocks[0].attn.q_proj.weight  # still shared after load
    with pytest.raises(ConfigError, match="missing"):
        state = unique_state(model)
        del state["head.weight"]
        load_unique_state(again, state)


def test_structured_pruning_and_quantization_touch_a_shared_module_once() -> None:
    from nas.compress import apply_candidate_compression
    from nas.config import PruneConfig, QuantConfig

    model = _model(n_layers=4, sharing=SharingConfig(kind="all"), sparsity=PruneConfig(kind="heads", amount=0.5),
                   quant=QuantConfig(attention_bits=8))
    report = apply_candidate_compression(model)
    assert report.details["prune"]["heads_removed_per_layer"] == [2]  # one shared attention, pruned once: 4 -> 2
    assert len(report.details["quantize"]["quantized"]["attention"]) == 4  # q/k/v/out registered once
    assert all(b.attn.n_heads == 2 for b in model.iter_blocks())
    assert model(_ids()).logits.shape == (B, C)


# --- low-rank weights ---------------------------------------------------------------------------------
def test_full_rank_reproduces_the_dense_layer_and_truncation_is_the_best_fit() -> None:
    torch.manual_seed(0)
    dense = nn.Linear(24, 16)
    x = torch.randn(5, 24)
    full = LowRankLinear(24, 16, rank=16)
    assert full.load_dense_(dense.weight, dense.bias) < 1e-5
    torch.testing.assert_close(full(x), dense(x), rtol=1e-4, atol=1e-5)
    low = LowRankLinear(24, 16, rank=4)
    err = low.load_dense_(dense.weight, dense.bias)
    s = torch.linalg.svdvals(dense.weight.detach())
    assert err == pytest.approx(float(s[4:].norm() / s.norm()), rel=1e-4)  # Eckart-Young: the tail's energy


@pytest.mark.parametrize(("attention", "ffn"), [(0.5, 1.0), (1.0, 0.25), (0.25, 0.5)])
def test_low_rank_params_and_flops_match_the_analytic_count(attention: float, ffn: float) -> None:
    n, d, f = 2, BASE["d_model"], BASE["d_ffn"]
    dense = _model(n_layers=n)
    low = _model(n_layers=n, rank=RankConfig(attention=attention, ffn=ffn))
    linears = [("attention", d, d)] * 4 + [("ffn", d, f), ("ffn", f, d)]  # q/k/v/out, fc1, fc2 (in, out)
    saved = 0
    for group, i, o in linears:
        r = RankConfig(attention=attention, ffn=ffn).of(group, i, o)
        saved += 0 if r is None else i * o - r * (i + o)
    assert dense.num_parameters() - low.num_parameters() == n * saved  # biases unchanged
    ids = _ids()
    assert count_flops(dense, ids) - count_flops(low, ids) == 2 * B * T * n * saved
    assert isinstance(low.blocks[0].attn.q_proj, LowRankLinear) == (attention < 1)
    assert isinstance(low.blocks[0].ffn.fc1, LowRankLinear) == (ffn < 1)


def test_low_rank_factors_are_quantized_and_masked_like_linears() -> None:
    from nas.compress import apply_candidate_compression, model_size_bytes
    from nas.config import PruneConfig, QuantConfig

    model = _model(n_layers=2, rank=RankConfig(attention=0.5, ffn=0.5), quant=QuantConfig(attention_bits=4),
                   sparsity=PruneConfig(kind="magnitude", amount=0.5))
    groups = model.layer_groups()
    assert len(groups["attention"]) == 2 * 4 * 2  # two factors for each of q/k/v/out in 2 layers
    before = model_size_bytes(model)
    apply_candidate_compression(model)
    assert model_size_bytes(model) < before
    assert torch.isfinite(model(_ids()).logits).all()


# --- inference depth ----------------------------------------------------------------------------------
def test_infer_layers_keeps_evenly_spread_layers_and_counts_only_them() -> None:
    full = _model(n_layers=4)
    model = _model(n_layers=4, infer_layers=2, layerdrop=0.2)
    assert model.candidate.kept_layers == (1, 3)
    ids = _ids()
    assert count_flops(model, ids) == count_flops(full, ids)  # before dropping: the trained depth
    blocks = [model.blocks[1], model.blocks[3]]
    assert model.keep_inference_layers_() == (1, 3)
    assert model.keep_inference_layers_() == (1, 3) and len(model.blocks) == 2  # idempotent
    torch.testing.assert_close(model(ids).logits, _manual(model, blocks, ids))
    two = _model(n_layers=2)
    assert count_flops(model, ids) == count_flops(two, ids)
    assert model.num_parameters() == two.num_parameters()


def test_layerdrop_skips_whole_layers_in_training_only() -> None:
    model = _model(n_layers=3, infer_layers=2, layerdrop=0.95)
    model.train()
    torch.manual_seed(1)
    out = model(_ids(), output_hidden_states=True)
    assert out.hidden_states is not None and len(out.hidden_states) == 4  # one per layer, skipped ones too
    skipped = sum(torch.equal(a, b) for a, b in zip(out.hidden_states, out.hidden_states[1:], strict=False))
    assert skipped >= 2
    model.eval()
    out = model(_ids(), output_hidden_states=True)
    assert out.hidden_states is not None
    assert not any(torch.equal(a, b) for a, b in zip(out.hidden_states, out.hidden_states[1:], strict=False))


# --- validation ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("bad", "field", "fix"), [
    ({"rank": {"attention": 0}}, "rank.attention", "1.0 for the dense layer"),
    ({"rank": {"ffn": 1.5}}, "rank.ffn", "1.0 for the dense layer"),
    ({"n_layers": 1, "sharing": {"kind": "all"}}, "sharing.kind", "n_layers >= 2"),
    ({"n_layers": 2, "sharing": {"kind": "ffn", "group_size": 3}}, "sharing.group_size", "group_size <= 2"),
    ({"sharing": {"group_size": 2}}, "sharing.group_size", "remove it"),
    ({"n_layers": 2, "infer_layers": 3}, "infer_layers", "infer_layers <= 2"),
    ({"layerdrop": 0.1}, "layerdrop", "layerdrop: 0"),
    ({"rank": {"attention": 0.5}, "sparsity": {"kind": "heads", "amount": 0.5}}, "sparsity.kind", "rank.attention: 1.0"),
    ({"rank": {"ffn": 0.5}, "sparsity": {"kind": "ffn", "amount": 0.5}}, "sparsity.kind", "rank.ffn: 1.0"),
    ({"attention": {"kind": "local", "window": 100}, "max_len": 64}, "attention.window", "smaller window"),
    ({"d_model": 32, "layers": [{"n_heads": 3, "d_ffn": 64}, {"n_heads": 2, "d_ffn": 64}]}, "layers[0].n_heads",
     "allowed: [1, 2, 4, 8, 16, 32]"),
    ({"n_layers": 3, "layers": [{"n_heads": 2, "d_ffn": 64}]}, "layers has 1 entries", "one {n_heads, d_ffn} per layer"),
    ({"n_heads": 8, "layers": [{"n_heads": 2, "d_ffn": 64}]}, "n_heads=8", "set n_heads: 2"),
    ({"sharing": {"kind": "ffn"}, "layers": LAYERS[:2]}, "sharing.kind", "remove layers"),
    ({"d_model": 32, "layers": [{"n_heads": 2, "d_ffn": 64}, {"n_heads": 4, "d_ffn": 64}],
      "sparsity": {"kind": "heads", "amount": 0.75}}, "sparsity.amount", "smaller amount"),
])
def test_each_bad_combination_is_one_line_naming_the_field_and_the_fix(bad: dict[str, Any], field: str,
                                                                        fix: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate(Candidate, bad, source="candidate")
    message = str(info.value)
    assert "\n" not in message and field in message and fix in message, message


def test_space_knobs_are_checked_with_the_fix() -> None:
    with pytest.raises(ConfigError, match=r"rank_attention.*outside \(0, 1\]"):
        load_space("tiny", {"rank_attention": [1.0, 0.0]})
    with pytest.raises(ConfigError, match="unknown sharing kind"):
        load_space("tiny", {"sharing": ["albert"]})
    with pytest.raises(ConfigError, match="group_size"):
        load_space("tiny", {"group_size": [1]})


def test_earlier_candidates_dump_and_hash_as_before() -> None:
    from storage import candidate_hash

    plain = Candidate(**BASE)
    dumped = plain.model_dump()
    assert not {"sharing", "rank", "infer_layers", "layerdrop"} & set(dumped)
    assert Candidate.model_validate(dumped) == plain
    new = Candidate(**BASE, n_layers=3, sharing=SharingConfig(kind="all"), infer_layers=2)
    assert Candidate.from_json(new.to_json()) == new and candidate_hash(new) != candidate_hash(plain)


# --- the presets --------------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", ["tiny", "base"])
def test_presets_sample_every_new_dimension(preset: str) -> None:
    space = load_space(preset)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen: collections.Counter[Any] = collections.Counter()
    for _ in range(300):
        trial = study.ask()
        c = suggest(trial, space)
        study.tell(trial, 0.0)
        seen[("sharing", c.sharing.kind)] += 1
        seen[("group_size", c.sharing.group_size)] += 1
        seen[("rank_attention", c.rank.attention)] += 1
        seen[("rank_ffn", c.rank.ffn)] += 1
        seen[("infer", c.infer_layers is not None and c.infer_layers < c.n_layers)] += 1
        seen[("layerdrop", c.layerdrop)] += 1
    for kind in space.sharing:
        assert seen[("sharing", kind)] > 0, kind
    for name in ("rank_attention", "rank_ffn", "layerdrop"):
        for value in getattr(space, name):
            assert seen[(name, value)] > 0, (name, value)
    assert seen[("infer", True)] > 0 and seen[("group_size", None)] > 0
    assert any(seen[("group_size", g)] for g in space.group_size)


def test_fit_to_teacher_cuts_sharing_and_depth_to_the_teacher() -> None:
    from search_spaces import fit_to_teacher

    teacher = Candidate(**BASE, n_layers=2, norm="post")
    student = Candidate(**BASE, n_layers=4, sharing=SharingConfig(kind="all", group_size=3), infer_layers=3,
                        layerdrop=0.1)
    fitted = fit_to_teacher(student, teacher)
    assert fitted.n_layers == 2 and fitted.sharing == SharingConfig(kind="all")
    assert fitted.infer_layers is None and fitted.layerdrop == 0.0


# --- inheritance --------------------------------------------------------------------------------------
def test_low_rank_student_inherits_the_truncated_svd_and_shared_groups_their_first_layer() -> None:
    from evaluators.inherit import inherit_

    layout: dict[str, Any] = {**BASE, "norm": "post", "pooling": "cls", "pooler": "tanh"}
    torch.manual_seed(0)
    teacher = build(Candidate(**layout, n_layers=2), vocab_size=V, num_labels=C)
    student = build(Candidate(**layout, n_layers=2, init="teacher", rank=RankConfig(ffn=0.25),
                              sharing=SharingConfig(kind="attention")), vocab_size=V, num_labels=C)
    inherit_(student, teacher)
    for i in range(2):
        fc1 = student.blocks[i].ffn.fc1
        assert isinstance(fc1, LowRankLinear) and fc1.rank == 8
        w = teacher.blocks[i].ffn.fc1.weight.detach()
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        torch.testing.assert_close(fc1.weight.detach(), (u[:, :8] * s[:8]) @ vh[:8], rtol=1e-4, atol=1e-5)
    # the shared attention holds teacher layer 0's (the group's first layer maps to teacher block 0)
    torch.testing.assert_close(student.blocks[1].attn.q_proj.weight, teacher.blocks[0].attn.q_proj.weight)


# --- per-layer shapes ---------------------------------------------------------------------------------


def test_per_layer_shapes_build_each_layer_and_default_to_the_widest() -> None:
    c = Candidate(**{k: v for k, v in BASE.items() if k not in ("n_heads", "d_ffn")}, layers=LAYERS)
    assert (c.n_layers, c.n_heads, c.d_ffn) == (3, 8, 96)
    model = build(c, vocab_size=V, num_labels=C)
    assert [b.attn.n_heads for b in model.iter_blocks()] == [2, 8, 4]
    assert [b.attn.head_dim for b in model.iter_blocks()] == [16, 4, 8]  # d_model / n_heads
    assert [b.ffn.d_ffn for b in model.iter_blocks()] == [32, 96, 64]
    assert Candidate.from_json(c.to_json()) == c and c.flat()["layer_shapes"] == "per_layer"


def test_per_layer_params_and_flops_are_the_sum_of_their_layers() -> None:
    """Each layer costs what a uniform model of its shape costs per layer (analytic: the shared ends cancel)."""
    base = {k: v for k, v in BASE.items() if k not in ("n_heads", "d_ffn")}
    mixed = _model(**base, layers=LAYERS)
    ids = _ids()

    def per_layer(shape: dict[str, int]) -> tuple[int, int]:
        one, two = _model(**base, n_layers=1, **shape), _model(**base, n_layers=2, **shape)
        return (two.num_parameters() - one.num_parameters(), count_flops(two, ids) - count_flops(one, ids))

    ends = _model(**base, n_layers=1, **LAYERS[0])
    params = ends.num_parameters() + sum(per_layer(s)[0] for s in LAYERS[1:])
    flops = count_flops(ends, ids) + sum(per_layer(s)[1] for s in LAYERS[1:])
    assert mixed.num_parameters() == params and count_flops(mixed, ids) == flops
    d, (f0, f1, f2) = BASE["d_model"], (s["d_ffn"] for s in LAYERS)
    ffn_params = sum(2 * d * f + f + d for f in (f0, f1, f2))  # fc1 and fc2 weights and biases
    assert sum(p.numel() for b in mixed.iter_blocks() for p in b.ffn.parameters()) == ffn_params




@pytest.mark.parametrize("preset", ["tiny", "base"])
def test_presets_draw_per_layer_shapes_conditional_on_depth(preset: str) -> None:
    space = load_space(preset)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    heterogeneous = 0
    for _ in range(120):
        trial = study.ask()
        c = suggest(trial, space)
        study.tell(trial, 0.0)
        per_layer = {k for k in trial.params if k.startswith(("n_heads_", "ffn_ratio_"))}
        if c.layers is None:
            assert not per_layer
            continue
        heterogeneous += len({(s.n_heads, s.d_ffn) for s in c.layers}) > 1
        assert per_layer == {f"{p}_{i}" for p in ("n_heads", "ffn_ratio") for i in range(c.n_layers)}
        assert c.sharing.kind == "none" and all(c.d_model % s.n_heads == 0 for s in c.layers)
    assert heterogeneous > 0


def test_fit_to_teacher_caps_every_layer() -> None:
    from search_spaces import fit_to_teacher

    teacher = Candidate(d_model=64, n_layers=2, n_heads=4, d_ffn=128, head_dim=16, norm="post")
    student = Candidate(d_model=64, layers=[{"n_heads": 8, "d_ffn": 64}, {"n_heads": 2, "d_ffn": 256},
                                            {"n_heads": 4, "d_ffn": 64}])
    fitted = fit_to_teacher(student, teacher)
    assert fitted.layers is not None and [(s.n_heads, s.d_ffn) for s in fitted.layers] == [(4, 64), (2, 128)]
    assert (fitted.n_layers, fitted.n_heads, fitted.d_ffn) == (2, 4, 128)
