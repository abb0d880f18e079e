"""Brief training: budgets, determinism, schedule, rungs, failures, metrics."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch

from evaluators.metrics import accuracy_and_macro_f1, evaluate
from evaluators.tasks import TaskData, load_task
from evaluators.train import _batches, build_for_task, lr_multiplier, train
from nas.config import AttentionConfig, Candidate, TrainConfig
from nas.errors import ConfigError, TrialFailedError
from nas.records import EnergyReading, EvalMetrics

TINY = Candidate(n_layers=1, d_model=32, n_heads=2, d_ffn=64, max_len=64, dropout=0.0)


@pytest.fixture(scope="module")
def task() -> TaskData:
    return load_task("builtin:sentiment", n_train=256, n_dev=64, max_len=32)


def _cfg(**kw: Any) -> TrainConfig:
    base: dict[str, Any] = {"steps": 4, "batch_size": 16, "device": "cpu", "eval_batch_size": 64}
    base.update(kw)
    return TrainConfig(**base)


def test_step_budget_is_honoured(task: TaskData) -> None:
    res = train(build_for_task(TINY, task), task, _cfg(steps=5))
    assert res.steps == 5 and len(res.losses) == 5 and res.stop_reason == "steps"
    assert math.isfinite(res.final_loss)
    summary = res.to_summary()
    assert summary.steps == 5 and summary.energy_j is None and summary.meter == "none"


def test_seconds_budget_is_honoured(task: TaskData) -> None:
    res = train(build_for_task(TINY, task), task, _cfg(steps=10**6, max_seconds=0.3))
    assert res.stop_reason == "time" and 0 < res.steps < 10**6
    assert res.wall_s < 0.3 + 2.0  # one step of slack on a loaded machine


def test_deterministic_given_seed(task: TaskData) -> None:
    a = train(build_for_task(TINY, task, seed=3), task, _cfg(seed=7))
    b = train(build_for_task(TINY, task, seed=3), task, _cfg(seed=7))
    c = train(build_for_task(TINY, task, seed=3), task, _cfg(seed=8))
    assert a.losses == b.losses
    assert a.losses != c.losses


def test_lr_schedule_warmup_then_cosine() -> None:
    xs = np.linspace(0, 1, 101)
    ys = [lr_multiplier(x, 0.1) for x in xs]
    peak = int(np.argmax(ys))
    assert abs(xs[peak] - 0.1) < 0.011 and abs(ys[peak] - 1.0) < 1e-9
    assert all(a < b for a, b in zip(ys[:peak], ys[1 : peak + 1], strict=True))  # warmup rises
    assert all(a >= b for a, b in zip(ys[peak:], ys[peak + 1 :], strict=False))  # cosine falls
    assert ys[-1] < 1e-9 and 0 < ys[0] < 0.05
    assert abs(lr_multiplier(0.55, 0.1) - 0.5) < 1e-9  # half-way through the decay
    assert lr_multiplier(0.0, 0.0) == 1.0


def test_optimizer_follows_schedule(task: TaskData) -> None:
    seen: list[float] = []
    model = build_for_task(TINY, task)

    def cb(step: int, m: torch.nn.Module) -> None:
        seen.append(step)

    res = train(model, task, _cfg(steps=6, lr=1e-3), callback=cb)
    assert seen == [1, 2, 3, 4, 5, 6] and res.steps == 6


def test_nan_loss_raises_trial_failed_naming_step(task: TaskData) -> None:
    model = build_for_task(TINY, task)
    calls = {"n": 0}

    def poison(_m: torch.nn.Module, _i: Any, out: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        return out * float("nan") if calls["n"] >= 3 else out

    model.head.register_forward_hook(poison)
    with pytest.raises(TrialFailedError, match="at step 3"):
        train(model, task, _cfg(steps=10))


def test_rungs_report_and_early_stop(task: TaskData) -> None:
    reports: list[tuple[int, float]] = []

    def report(step: int, acc: float) -> bool:
        reports.append((step, acc))
        return step >= 4

    res = train(build_for_task(TINY, task), task, _cfg(steps=10), rungs=[2, 4, 8], report=report)
    assert res.steps == 4 and res.stop_reason == "report" and res.stopped_early
    assert [r[0] for r in res.rung_accuracies] == [2, 4] and reports == list(res.rung_accuracies)
    assert res.to_summary().rung_accuracies == res.rung_accuracies


def test_callback_can_stop(task: TaskData) -> None:
    res = train(build_for_task(TINY, task), task, _cfg(steps=10), callback=lambda s, m: s == 2)
    assert res.steps == 2 and res.stop_reason == "callback"


def test_meter_wraps_the_window(task: TaskData) -> None:
    class FakeMeter:
        def __init__(self) -> None:
            self.keys: list[str] = []

        def begin(self, key: str) -> None:
            self.keys.append("begin:" + key)

        def end(self, key: str) -> EnergyReading:
            self.keys.append("end:" + key)
            return EnergyReading(meter="estimate", is_estimate=True, energy_j=12.5, duration_s=1.0)

    meter = FakeMeter()
    res = train(build_for_task(TINY, task), task, _cfg(steps=2), meter=meter)
    assert meter.keys == ["begin:train", "end:train"]
    s = res.to_summary()
    assert s.energy_j == 12.5 and s.meter == "estimate" and s.is_estimate


def test_amp_and_checkpointing_are_cpu_noops(task: TaskData) -> None:
    model = build_for_task(TINY, task)
    res = train(model, task, _cfg(steps=2, amp=True, gradient_checkpointing=True))
    assert res.amp_dtype is None and res.gradient_checkpointing is False
    assert res.device == "cpu"


def test_every_attention_kind_trains(task: TaskData) -> None:
    for att in (AttentionConfig(kind="local", window=2), AttentionConfig(kind="linear"),
                AttentionConfig(kind="lowrank", k=8)):
        cand = TINY.model_copy(update={"attention": att})
        res = train(build_for_task(cand, task), task, _cfg(steps=2))
        assert math.isfinite(res.final_loss)


def test_task_longer_than_candidate_is_a_config_error(task: TaskData) -> None:
    with pytest.raises(ConfigError, match="max_len"):
        build_for_task(TINY.model_copy(update={"max_len": 16}), task)


def test_evaluate_returns_metrics(task: TaskData) -> None:
    m = evaluate(build_for_task(TINY, task), task, batch_size=16)
    assert isinstance(m, EvalMetrics) and m.n_examples == 64 and 0 <= m.accuracy <= 1


def test_accuracy_and_macro_f1_known_values() -> None:
    acc, f1 = accuracy_and_macro_f1([0, 0, 1, 1], [0, 1, 1, 1], 2)
    # class 0: P=1/2 R=1 F1=2/3; class 1: P=1 R=2/3 F1=0.8
    assert acc == 0.75 and abs(f1 - (2 / 3 + 0.8) / 2) < 1e-12
    acc, f1 = accuracy_and_macro_f1([2, 2], [2, 2], 3)  # absent classes are left out
    assert acc == 1.0 and f1 == 1.0
    assert accuracy_and_macro_f1([], [], 2) == (0.0, 0.0)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sentiment", "longmatch"])
def test_small_model_learns_builtin_above_chance(name: str) -> None:
    torch.set_num_threads(2)
    task = load_task(f"builtin:{name}", n_train=4000, n_dev=400)
    model = build_for_task(Candidate(max_len=64), task, seed=0)
    train(model, task, TrainConfig(steps=300, batch_size=32, device="cpu"))
    assert evaluate(model, task).accuracy > 0.65


def test_group_by_length_sees_every_row_once_per_epoch_in_batches_of_like_length() -> None:
    lengths = torch.randint(1, 64, (1000,), generator=torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(0)
    def epoch(gen: torch.Generator, lengths: torch.Tensor | None) -> list[torch.Tensor]:
        it = _batches(1000, 32, gen, lengths)
        return [next(it) for _ in range(31)]  # one epoch: 31 full batches

    batches = epoch(gen, lengths)
    rows = torch.cat(batches)
    assert len(set(rows.tolist())) == len(rows) == 31 * 32, "each row at most once per epoch"
    plain = epoch(torch.Generator().manual_seed(0), None)
    padded = sum(int(lengths[b].max()) * len(b) for b in batches)
    padded_plain = sum(int(lengths[b].max()) * len(b) for b in plain)
    assert padded < 0.7 * padded_plain, "grouped batches compute far fewer padding tokens"
    again = epoch(torch.Generator().manual_seed(0), lengths)
    assert all(torch.equal(a, b) for a, b in zip(batches, again, strict=True)), "reproducible from the seed"
    firsts = [int(lengths[b].max()) for b in batches]
    assert firsts != sorted(firsts, reverse=True), "the batches are shuffled, not served longest first"


def test_group_by_length_trains_on_real_text(task: TaskData) -> None:
    model = build_for_task(TINY, task, seed=0)
    res = train(model, task, _cfg(steps=6, group_by_length=True))
    assert res.steps == 6 and all(math.isfinite(x) for x in res.losses)
