"""The teacher outputs cache: built once, reused, equal to the live teacher, and used by training."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from evaluators.meters import make_meter
from evaluators.metrics import trim_batch
from evaluators.tasks import TaskData, load_task
from evaluators.teacher import Teacher
from evaluators.teacher_cache import TeacherOutputs, build_or_load, teacher_fingerprint
from evaluators.train import build_for_task, train
from nas.config import Candidate, DistillConfig, MeasureConfig, TrainConfig
from nas.errors import ConfigError
from nas.records import TrainSummary

TEACHER = Candidate(n_layers=2, d_model=16, n_heads=2, d_ffn=32, max_len=16, dropout=0.0)
STUDENT = Candidate(n_layers=1, d_model=8, n_heads=2, d_ffn=16, max_len=16, dropout=0.0)


@pytest.fixture(scope="module")
def task() -> TaskData:
    return load_task("builtin:sentiment", n_train=40, n_dev=8, n_test=8, max_len=16)


def _teacher(task: TaskData, seed: int = 1) -> Teacher:
    model = build_for_task(TEACHER, task, seed=seed)
    with torch.no_grad():  # confident, example-dependent logits (a fresh head gives near-constant ones)
        model.head.weight.mul_(30.0)
    return Teacher(f"tiny-{seed}", model, task.tokenizer, TEACHER.n_layers, TEACHER.d_model, TEACHER.n_heads,
                   kind="auto")


def _count_calls(teacher: Teacher) -> list[int]:
    calls = [0]
    teacher.model.register_forward_hook(lambda *_a: calls.__setitem__(0, calls[0] + 1))
    return calls


def _build(teacher: Teacher, task: TaskData, root: Path, **kw: Any) -> TeacherOutputs:
    base: dict[str, Any] = {"batch_size": 16, "device": "cpu", "root": root}
    return build_or_load(teacher, task, **{**base, **kw})


def test_miss_then_hit_reads_the_same_arrays_and_charges_once(task: TaskData, tmp_path: Path) -> None:
    teacher = _teacher(task)
    calls = _count_calls(teacher)
    meter = make_meter("estimate", MeasureConfig(meter="estimate"))
    seen: list[tuple[int, int]] = []
    first = _build(teacher, task, tmp_path, meter=meter, progress=lambda d, t: seen.append((d, t)))
    assert calls[0] == 3 and seen == [(1, 3), (2, 3), (3, 3)]  # 40 rows in batches of 16
    cost = first.take_build_cost()
    assert isinstance(cost, TrainSummary) and cost.steps == 3 and cost.energy_j is not None and cost.energy_j > 0
    assert first.take_build_cost() is None  # handed out once
    second = _build(teacher, task, tmp_path, meter=meter)
    assert calls[0] == 3, "a hit must not run the teacher"
    assert second.take_build_cost() is None and second.key == first.key
    np.testing.assert_array_equal(np.asarray(second.logits), np.asarray(first.logits))
    assert second.logits.shape == (task.n_train, task.num_labels) and second.hidden is None
    assert not list((tmp_path / "teacher-outputs").glob("*.tmp*")), "the temporary folder was left behind"
    meter.close()


def test_other_length_or_weights_is_another_entry(task: TaskData, tmp_path: Path) -> None:
    teacher = _teacher(task)
    base = _build(teacher, task, tmp_path)
    other_len = load_task("builtin:sentiment", n_train=40, n_dev=8, n_test=8, max_len=14)
    assert _build(teacher, other_len, tmp_path).key != base.key
    other = _teacher(task, seed=2)
    assert teacher_fingerprint(other) != teacher_fingerprint(teacher)
    calls = _count_calls(other)
    assert _build(other, task, tmp_path).key != base.key and calls[0] > 0


def test_cached_outputs_equal_the_live_teacher(task: TaskData, tmp_path: Path) -> None:
    teacher = _teacher(task)
    out = _build(teacher, task, tmp_path, needs_hidden=True, needs_attention=True, hidden_examples=20)
    assert out.hidden_examples == 20 and out.hidden is not None and out.attentions is not None
    idx = torch.tensor([19, 3, 0, 7])
    ids, mask = trim_batch(task.train_ids[idx], task.train_mask[idx])
    with torch.no_grad():
        live = teacher(ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
    got = out.batch(idx, ids.shape[1])
    torch.testing.assert_close(got.logits, live.logits, atol=1e-5, rtol=1e-5)
    assert got.hidden_states is not None and len(got.hidden_states) == TEACHER.n_layers + 1
    real = mask[..., None].to(torch.float32)  # padded positions are masked out of every distillation loss
    for g, w in zip(got.hidden_states, live.hidden_states, strict=True):  # float16 storage
        torch.testing.assert_close(g * real, w * real, atol=5e-3, rtol=2e-3)
    assert got.attentions is not None and len(got.attentions) == TEACHER.n_layers
    for g, w in zip(got.attentions, live.attentions, strict=True):
        assert g is not None and g.shape == w.shape
        rows = mask[:, None, :, None].to(torch.float32)  # the maps of real query positions
        torch.testing.assert_close(g * rows, w * rows, atol=1e-3, rtol=2e-3)
    with pytest.raises(IndexError):
        out.batch(torch.tensor([20]), ids.shape[1])  # past K with hidden states asked for
    assert out.batch(torch.tensor([39]), 4, hidden=False, attention=False).hidden_states is None
    # a logits-only request is served by this larger entry, without running the teacher
    calls = _count_calls(teacher)
    assert _build(teacher, task, tmp_path, hidden_examples=20).key == out.key and calls[0] == 0


def _train(task: TaskData, teacher: Teacher, kind: str, outputs: TeacherOutputs | None) -> Any:
    student = build_for_task(STUDENT, task, seed=0)
    cfg = TrainConfig(steps=4, batch_size=8, lr=3e-3, device="cpu", eval_batch_size=64)
    return train(student, task, cfg, teacher=teacher, distill=DistillConfig(kind=kind), teacher_outputs=outputs)


def test_training_on_the_cache_matches_the_live_teacher(task: TaskData, tmp_path: Path) -> None:
    teacher = _teacher(task)
    outputs = _build(teacher, task, tmp_path)
    live = _train(task, teacher, "logit", None)
    calls = _count_calls(teacher)
    cached = _train(task, teacher, "logit", outputs)
    assert calls[0] == 0, "training on the cache must not call the teacher"
    assert len(cached.losses) == 4
    torch.testing.assert_close(torch.tensor(cached.losses), torch.tensor(live.losses), atol=1e-5, rtol=1e-5)


def test_hidden_distillation_draws_only_the_first_k_examples(task: TaskData, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    teacher = _teacher(task)
    outputs = _build(teacher, task, tmp_path, needs_hidden=True, hidden_examples=12)
    drawn: list[int] = []
    real = TeacherOutputs.batch

    def spy(self: TeacherOutputs, indices: torch.Tensor, *a: Any, **k: Any) -> Any:
        drawn.extend(indices.tolist())
        return real(self, indices, *a, **k)

    monkeypatch.setattr(TeacherOutputs, "batch", spy)
    res = _train(task, teacher, "hidden", outputs)
    assert res.steps == 4 and len(drawn) == 4 * 8
    assert max(drawn) < 12 and len(set(drawn)) > 8  # more than one batch of the K rows, none past them
    with pytest.raises(ConfigError, match="attention maps"):
        _train(task, teacher, "attention", outputs)  # the entry has no maps


def test_train_summary_counts_the_cache_once_and_old_rows_still_read() -> None:
    cache = TrainSummary(steps=3, wall_s=1.0, final_loss=float("nan"), energy_j=2.0, meter="estimate",
                         is_estimate=True, co2eq_g=0.5)
    s = TrainSummary(steps=4, wall_s=2.0, final_loss=0.3, energy_j=5.0, meter="estimate", is_estimate=True,
                     co2eq_g=1.0, teacher_cache=cache)
    assert s.total_energy_j == 7.0 and s.total_co2eq_g == 1.5
    back = TrainSummary.from_dict(s.to_dict())
    assert back.teacher_cache is not None and back.teacher_cache.energy_j == 2.0 and back.total_energy_j == 7.0
    old = s.to_dict()
    del old["teacher_cache"]  # a row stored before the field existed
    assert TrainSummary.from_dict(old).teacher_cache is None
    unknown = TrainSummary(steps=1, wall_s=1.0, final_loss=0.1, energy_j=5.0, meter="m", is_estimate=False,
                           teacher_cache=TrainSummary(steps=1, wall_s=1.0, final_loss=0.1, energy_j=None,
                                                      meter="none", is_estimate=False))
    assert unknown.total_energy_j is None  # unknown stays unknown


def test_rows_past_k_run_sorted_by_length_and_land_in_their_own_places(task: TaskData, tmp_path: Path) -> None:
    teacher = _teacher(task)
    out = _build(teacher, task, tmp_path, needs_hidden=True, hidden_examples=8)
    seen: list[int] = []
    orig = teacher.model.forward

    def spy(ids: torch.Tensor, *a: Any, **kw: Any) -> Any:
        seen.append(ids.shape[1])
        return orig(ids, *a, **kw)

    teacher.model.forward = spy  # type: ignore[method-assign]
    _build(teacher, task, tmp_path / "again", needs_hidden=True, hidden_examples=8)
    assert len(seen) == 1 + math.ceil((task.n_train - 8) / 16), "one in-order batch of K=8 rows, then the rest"
    assert seen[1:] == sorted(seen[1:], reverse=True), "past the first K rows, batches run longest first"
    with torch.no_grad():  # every row's logits, alone (no padding at all), against the stored row
        for r in range(task.n_train):
            ids, mask = trim_batch(task.train_ids[r:r + 1], task.train_mask[r:r + 1])
            stored = torch.from_numpy(np.array(out.logits[r]))
            torch.testing.assert_close(stored, orig(ids, attention_mask=mask).logits[0], atol=1e-5, rtol=1e-5)
