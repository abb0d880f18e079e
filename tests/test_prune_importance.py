"""Gradient (Taylor) importance and gradual (cubic) pruning, beside the weight norm and one shot (#14, items 4-5).

Hand-made cases where the two importances must disagree, the cubic schedule against Zhu & Gupta's formula,
masks that only grow during a real training run and end at ``amount``, the final removal of exactly the
masked heads and neurons, the fix-it errors, the hashes of candidates stored before the fields existed, and
the search space drawing the new knobs only when something is pruned.
"""

from __future__ import annotations

import collections
import hashlib
from collections.abc import Iterator
from typing import Any

import optuna
import pytest
import torch
import torch.nn.functional as F

from nas.compress import SCHEDULES, GradualPruner, prune_
from nas.compress.gradual import CUBIC_END, CUBIC_PRUNING_STEPS, CUBIC_START, cubic, one_shot
from nas.compress.importance import head_importance, neuron_importance, taylor_scores
from nas.config import Candidate, PruneConfig, validate
from nas.errors import ConfigError
from nas.models import build

V, C = 40, 2
SMALL: dict[str, Any] = {"n_layers": 1, "d_model": 32, "n_heads": 4, "d_ffn": 32, "max_len": 16, "dropout": 0.0}


def _model(sparsity: dict[str, Any] | None = None, **kw: Any) -> Any:
    torch.manual_seed(0)
    cand = Candidate(**{**SMALL, **kw}, sparsity=PruneConfig(**(sparsity or {})))
    return build(cand, vocab_size=V, num_labels=C)


def _losses(n: int = 3) -> Any:
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randint(1, V, (8, 12), generator=g), torch.randint(0, C, (8,), generator=g)) for _ in range(n)]

    def losses(model: Any) -> Iterator[torch.Tensor]:
        for ids, y in batches:
            yield F.cross_entropy(model(ids).logits, y)

    return losses


def _cut_head(model: Any, head: int, inflate: float = 10.0) -> None:
    """Head ``head`` reaches nothing (its out_proj columns are 0) but has the largest weights of all."""
    attn = model.blocks[0].attn
    cols = slice(head * attn.head_dim, (head + 1) * attn.head_dim)
    with torch.no_grad():
        attn.out_proj.weight[:, cols] = 0.0
        for lin in (attn.q_proj, attn.k_proj, attn.v_proj):
            lin.weight[cols] *= inflate


# --- importance ---------------------------------------------------------------------------------------
def test_a_head_cut_from_the_loss_has_zero_taylor_importance_but_the_largest_norm() -> None:
    model = _model()
    _cut_head(model, 0)
    taylor = taylor_scores(model, "heads", _losses())["blocks.0.attn"]
    norm = head_importance(model.blocks[0].attn)
    assert taylor[0] == 0.0 and (taylor[1:] > 0).all()
    assert int(norm.argmax()) == 0


def test_taylor_and_the_weight_norm_remove_different_heads() -> None:
    kept = {}
    for importance in ("magnitude", "taylor"):
        model = _model({"kind": "heads", "amount": 0.25, "importance": importance})
        _cut_head(model, 0)
        with torch.no_grad():
            model.blocks[0].attn.q_proj.weight[24:] *= 0.1  # head 3: the smallest norm
            model.blocks[0].attn.k_proj.weight[24:] *= 0.1
        q_before = model.blocks[0].attn.q_proj.weight.detach().clone()
        report = prune_(model, model.candidate.sparsity, batch_losses=_losses())
        q_after = model.blocks[0].attn.q_proj.weight.detach()
        kept[importance] = [h for h in range(4) if any(torch.equal(q_before[h * 8:(h + 1) * 8], q_after[i * 8:(i + 1) * 8])
                                                       for i in range(3))]
        assert report.details["importance"] == importance and report.details["heads_removed_per_layer"] == [1]
    assert kept == {"magnitude": [0, 1, 2], "taylor": [1, 2, 3]}


def test_a_neuron_cut_from_the_loss_has_zero_taylor_importance() -> None:
    model = _model()
    ffn = model.blocks[0].ffn
    with torch.no_grad():
        ffn.fc2.weight[:, 5] = 0.0
        ffn.fc1.weight[5] *= 10.0
    cut = ffn.fc1.weight[5].detach().clone()
    taylor = taylor_scores(model, "ffn", _losses())["blocks.0.ffn"]
    assert taylor[5] == 0.0 and int(neuron_importance(ffn).argmax()) == 5
    prune_(model, PruneConfig(kind="ffn", amount=0.25, importance="taylor"), batch_losses=_losses())
    assert ffn.d_ffn == 24 and not any(torch.equal(row, cut) for row in ffn.fc1.weight)


def test_taylor_weight_scores_are_the_summed_absolute_first_order_terms() -> None:
    model = _model()
    losses = _losses(2)
    scores = taylor_scores(model, "magnitude", losses)
    w = model.blocks[0].attn.v_proj.weight
    expected = torch.zeros_like(w)
    for loss in losses(model.eval()):
        (g,) = torch.autograd.grad(loss, [w])
        expected += (w * g).abs().detach()
    torch.testing.assert_close(scores["blocks.0.attn.v_proj"], expected)
    assert set(scores) == {f"blocks.0.{n}" for n in ("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.out_proj",
                                                     "ffn.fc1", "ffn.fc2")}
    assert all(p.grad is None for p in model.parameters())  # the optimizer's gradients are not touched


@pytest.mark.parametrize("kind", ["magnitude", "2:4"])
def test_taylor_masks_reach_the_same_sparsity_as_magnitude(kind: str) -> None:
    model = _model({"kind": kind, "amount": 0.5 if kind == "magnitude" else 0.0, "importance": "taylor"})
    report = prune_(model, model.candidate.sparsity, batch_losses=_losses())
    assert report.details["sparsity_reached"] == 0.5 and report.details["importance"] == "taylor"
    assert "[taylor importance, one-shot schedule]" in report.kernels


def test_without_batches_a_rebuild_ranks_by_magnitude_and_says_so() -> None:
    model = _model({"kind": "heads", "amount": 0.5, "importance": "taylor", "schedule": "cubic"})
    report = prune_(model, model.candidate.sparsity)
    assert report.details["importance"] == "magnitude" and "taylor" in str(report.details["importance_asked"])
    assert report.details["schedule"] == "one_shot" and "cubic" in str(report.details["schedule_asked"])
    assert model.blocks[0].attn.n_heads == 2
    with pytest.raises(ConfigError, match="sparsity.importance.*no batches"):
        taylor_scores(model, "heads", None)


# --- schedules ----------------------------------------------------------------------------------------
def test_the_cubic_schedule_follows_zhu_and_gupta() -> None:
    s = cubic(300, 0.6)
    assert (s.start_step, s.end_step) == (int(300 * CUBIC_START), int(300 * CUBIC_END)) == (30, 210)
    assert len(s.prune_steps) == CUBIC_PRUNING_STEPS and s.prune_steps[-1] == s.end_step
    n_dt = s.end_step - s.start_step
    for t in range(s.start_step, s.end_step + 1):
        assert s.target(t) == pytest.approx(0.6 + (0.0 - 0.6) * (1 - (t - s.start_step) / n_dt) ** 3)
    values = [s.target(t) for t in range(301)]
    assert values[0] == 0.0 and values[s.start_step] == 0.0 and values[-1] == 0.6 and values[s.end_step] == 0.6
    assert all(a <= b for a, b in zip(values, values[1:], strict=False))
    assert s.target(s.prune_steps[0]) < s.target(s.prune_steps[4]) < 0.6  # fast at first, then slower
    shot = one_shot(300, 0.6)
    assert shot.prune_steps == (150,) and shot.target(149) == 0.0 and shot.target(150) == 0.6
    assert SCHEDULES["cubic"] is cubic and cubic(1, 0.5).prune_steps == (1,)


@pytest.fixture(scope="module")
def task() -> Any:
    from evaluators.tasks import load_task

    return load_task("builtin:sentiment", seed=0, max_len=16, n_train=512, n_dev=128, n_test=64)


def _gradual_run(task: Any, kind: str, amount: float, importance: str, steps: int = 20) -> tuple[Any, Any, list[Any]]:
    """Train a small model for ``steps`` with a cubic pruner stepped after each step; the masks at each prune."""
    from evaluators.pruning import importance_losses
    from evaluators.train import train
    from nas.config import TrainConfig

    cand = Candidate(**{**SMALL, "max_len": 16}, sparsity=PruneConfig(kind=kind, amount=amount, importance=importance,
                                                                      schedule="cubic"))
    torch.manual_seed(0)
    model = build(cand, vocab_size=task.vocab_size, num_labels=task.num_labels)
    pruner = GradualPruner(model, cand.sparsity, cubic(steps, amount), importance_losses(task, 16, 0, n_batches=2))
    pruner.install()
    snapshots: list[Any] = []

    def step(s: int, _m: Any) -> None:
        if pruner.step(s):
            snapshots.append({n: u.keep.clone() for n, u in pruner.units.items()})

    train(model, task, TrainConfig(steps=steps, batch_size=16, lr=3e-3, device="cpu"), callback=step)
    return model, pruner, snapshots


@pytest.mark.parametrize(("kind", "importance"), [("magnitude", "taylor"), ("heads", "magnitude")])
def test_masks_only_grow_during_training_and_end_at_the_amount(task: Any, kind: str, importance: str) -> None:
    model, pruner, snapshots = _gradual_run(task, kind, 0.5, importance)
    assert len(snapshots) == CUBIC_PRUNING_STEPS
    for before, after in zip(snapshots, snapshots[1:], strict=False):
        for name in before:
            assert not (after[name] & ~before[name]).any(), "an unmasked unit came back"
    assert [t[2] for t in pruner.trace] == sorted(t[2] for t in pruner.trace)
    assert pruner.sparsity == 0.5
    for name, u in pruner.units.items():  # the masked weights really are zero in the forward pass
        w = u.linear.weight
        zero_cols = (w == 0).all(dim=0)
        masked = ~u.keep if u.width == 0 else (~u.keep).repeat_interleave(u.width)
        assert (w[~u.keep] == 0).all() if u.width == 0 else bool(zero_cols[masked].all()), name
    report = pruner.finish()
    assert report.details["schedule"] == "cubic" and len(report.details["schedule_trace"]) == CUBIC_PRUNING_STEPS
    assert "cubic schedule" in report.kernels


@pytest.mark.parametrize("kind", ["heads", "ffn"])
def test_the_end_removes_exactly_the_masked_units_with_exact_parameter_counts(task: Any, kind: str) -> None:
    model, pruner, _ = _gradual_run(task, kind, 0.5, "taylor", steps=16)
    name = "blocks.0.attn" if kind == "heads" else "blocks.0.ffn"
    keep = pruner.units[name].keep.clone()
    module = model.blocks[0].attn if kind == "heads" else model.blocks[0].ffn
    rows = (module.q_proj if kind == "heads" else module.fc1).weight.detach().clone()
    ids = task.dev_ids[:16]
    model.eval()
    with torch.no_grad():
        masked_out = model(ids, attention_mask=task.dev_mask[:16]).logits
    before = sum(p.numel() for p in model.parameters())
    report = pruner.finish()
    with torch.no_grad():
        torch.testing.assert_close(model(ids, attention_mask=task.dev_mask[:16]).logits, masked_out)
    d, removed = SMALL["d_model"], int((~keep).sum())
    if kind == "heads":
        hs = d // SMALL["n_heads"]
        kept_rows = rows.view(SMALL["n_heads"], hs, d)[keep].reshape(-1, d)
        torch.testing.assert_close(model.blocks[0].attn.q_proj.weight, kept_rows)
        assert model.blocks[0].attn.n_heads == 2 and report.details["heads_removed_per_layer"] == [2]
        per_unit = 3 * (d * hs + hs) + d * hs  # q/k/v rows and biases, out_proj columns
    else:
        torch.testing.assert_close(model.blocks[0].ffn.fc1.weight, rows[keep])
        assert model.blocks[0].ffn.d_ffn == 16 and report.details["neurons_removed_per_layer"] == [16]
        per_unit = d + 1 + d  # an fc1 row and bias, an fc2 column
    assert report.params_before == before and report.params_after == before - removed * per_unit
    assert sum(p.numel() for p in model.parameters()) == report.params_after


def test_a_cubic_trial_trains_compresses_and_rebuilds(tmp_path: Any) -> None:
    from evaluators.pipeline import run_trial
    from evaluators.weights import load_trial_model
    from nas.config import MeasureConfig, QuantConfig, TrainConfig

    cand = Candidate(**SMALL, sparsity=PruneConfig(kind="heads", amount=0.5, importance="taylor", schedule="cubic"),
                     quant=QuantConfig(ffn_bits=8))
    measure = MeasureConfig(window_s=0.05, n_windows=2, idle_s=0.05, warmup_iters=1, meter="estimate", batch_size=4,
                            seq_len=16)
    result = run_trial(cand, "builtin:sentiment", train_cfg=TrainConfig(steps=12, batch_size=16, device="cpu"),
                       measure_cfg=measure, weights_out=tmp_path / "w")
    assert result.status == "COMPLETE" and "[taylor importance, cubic schedule]" in (result.kernels or "")
    model, loaded, _, _ = load_trial_model(tmp_path / "w")
    assert loaded == cand and model.blocks[0].attn.n_heads == 2
    assert result.params == sum(p.numel() for p in model.parameters())


# --- validation and storage ---------------------------------------------------------------------------
@pytest.mark.parametrize(("bad", "words"), [
    ({"importance": "taylor"}, ["sparsity.importance='taylor'", "sparsity.kind"]),
    ({"schedule": "cubic"}, ["sparsity.schedule='cubic'", "remove it"]),
    ({"kind": "2:4", "schedule": "cubic"}, ["sparsity.schedule 'cubic'", "schedule: one_shot"]),
    ({"kind": "heads", "amount": 0.5, "importance": "fisher"}, ["sparsity.importance", "'magnitude' or 'taylor'"]),
    ({"kind": "ffn", "amount": 0.5, "schedule": "linear"}, ["sparsity.schedule", "'one_shot' or 'cubic'"]),
])
def test_bad_combinations_are_one_line_fix_it_errors(bad: dict[str, Any], words: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        validate(Candidate, {"sparsity": bad}, source="candidate")
    message = str(info.value)
    assert "\n" not in message and all(w in message for w in words), message


def test_the_gradual_pruner_refuses_a_kind_without_an_amount() -> None:
    model = _model()
    with pytest.raises(ConfigError, match="no gradual form"):
        GradualPruner(model, PruneConfig(kind="2:4"), cubic(10, 0.5))


#: Candidates stored before importance and schedule existed, with their hashes then (storage.candidate_hash).
STORED = [
    ({}, "e0f7135cf8da780ab88afaa00008518d740bf5b5d6235175837049c29356f0bf"),
    ({"sparsity": {"kind": "heads", "amount": 0.5}}, "f4d5be1844b1dbd0e07f99a92741be3992440e4d832f1e29024073fa24170411"),
    ({"sparsity": {"kind": "magnitude", "amount": 0.3}, "quant": {"ffn_bits": 8}},
     "0b187e301fa5a2ef99d026379bbda63baa33376e663ee0174c92a8b80fa535e2"),
    ({"sparsity": {"kind": "2:4"}}, "86902e081c56616705c4c4f1d7f0c8fb9885afe69226f92d14589ceb4809f330"),
]


@pytest.mark.parametrize(("fields", "stored_hash"), STORED)
def test_candidates_stored_before_the_new_fields_read_rebuild_and_hash_unchanged(fields: dict[str, Any],
                                                                                   stored_hash: str) -> None:
    from storage import candidate_hash

    cand = Candidate(**fields)
    assert candidate_hash(cand) == stored_hash
    text = cand.to_json()
    assert "importance" not in text and "schedule" not in text
    assert Candidate.from_json(text) == cand and hashlib.sha256(text.encode()).hexdigest() == stored_hash
    new = cand.model_copy(update={"sparsity": PruneConfig(kind="heads", amount=0.5, importance="taylor")})
    assert candidate_hash(new) != stored_hash and Candidate.from_json(new.to_json()) == new
    assert new.flat()["prune_importance"] == "taylor" and new.flat()["prune_schedule"] == "one_shot"


def test_fit_to_teacher_keeps_importance_and_schedule() -> None:
    from search_spaces import fit_to_teacher

    student = Candidate(n_heads=4, sparsity=PruneConfig(kind="heads", amount=0.75, importance="taylor",
                                                        schedule="cubic"))
    fitted = fit_to_teacher(student, Candidate(n_heads=2, d_model=64))
    assert (fitted.sparsity.importance, fitted.sparsity.schedule, fitted.sparsity.amount) == ("taylor", "cubic", 0.5)


# --- the search space ---------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", ["tiny", "base"])
def test_the_space_draws_importance_and_schedule_only_when_something_is_pruned(preset: str) -> None:
    from nas.vocab import SPARSITY_KIND
    from search_spaces import load_space, suggest

    space = load_space(preset)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trials = [study.ask() for _ in range(200)]  # random sampling: no trial needs the previous one told
    seen: collections.Counter[Any] = collections.Counter()
    for trial, cand in ((t, suggest(t, space)) for t in trials):
        kind = cand.sparsity.kind
        assert ("prune_importance" in trial.params) == (kind != "none")
        assert ("prune_schedule" in trial.params) == SPARSITY_KIND[kind].takes_amount
        assert cand.sparsity.importance == trial.params.get("prune_importance", "magnitude")
        assert cand.sparsity.schedule == trial.params.get("prune_schedule", "one_shot")
        seen[(kind, cand.sparsity.importance, cand.sparsity.schedule)] += 1
    assert seen[("2:4", "taylor", "one_shot")] and seen[("heads", "taylor", "cubic")]
    assert seen[("ffn", "magnitude", "cubic")] and seen[("magnitude", "magnitude", "one_shot")]


def test_a_space_that_leaves_the_knobs_at_one_choice_samples_as_before() -> None:
    from search_spaces import ReplayTrial, load_space, suggest

    space = load_space("tiny", {"prune_importance": ["magnitude"], "prune_schedule": ["one_shot"], "activation_bits": [32]})
    params = {"n_layers": 1, "n_heads": 2, "d_model": 32, "ffn_ratio": 2, "attention": "softmax",
              "embedding_bits": 32, "attention_bits": 32, "ffn_bits": 32, "quant_scheme": "symmetric",
              "quant_granularity": "per_channel", "sparsity": "heads", "sparsity_amount": 0.5, "distill": "none",
              "dropout": 0.0, "pooling": "mean", "sharing": "none", "rank_attention": 1.0, "rank_ffn": 1.0,
              "drop_layers": 0}
    trial = ReplayTrial(params)
    cand = suggest(trial, space)
    assert cand.sparsity == PruneConfig(kind="heads", amount=0.5) and "prune_importance" not in trial.used
    with pytest.raises(ConfigError, match="unknown pruning importance"):
        load_space("tiny", {"prune_importance": ["fisher"]})
