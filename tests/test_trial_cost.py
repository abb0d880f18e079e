"""Every joule counted: a trial's cost is metered and stored whether it completes, stops or fails, a
teacher's training is charged once, unknown stays unknown, and training readings carry provenance."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from evaluators.tasks import load_task
from nas.config import Candidate, DistillConfig, MeasureConfig, TrainConfig
from nas.errors import TrialFailedError
from nas.records import FailKind, RungReport, TrialResult
from nas.runner.protocol import TrialConfig, TrialReport
from nas.runner.writer import StoreHandle, StoreWriter
from storage import Store, TrialCost, candidate_hash

TINY = Candidate(n_layers=1, d_model=16, n_heads=2, d_ffn=32, max_len=32, dropout=0.0)
FAST_MEASURE = MeasureConfig(meter="estimate", window_s=0.05, n_windows=2, idle_s=0.0, warmup_iters=1,
                             batch_size=4, seq_len=16)


def _train_cfg(steps: int = 6) -> TrainConfig:
    return TrainConfig(steps=steps, batch_size=16, lr=3e-3, device="cpu", eval_batch_size=256)


# --- the pipeline ----------------------------------------------------------------------------------
def test_failure_after_training_keeps_its_metered_cost(monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: a trained-then-failed trial stored no energy ("search cost 0.0 J")."""
    import evaluators.pipeline as pipeline
    from evaluators.pipeline import run_trial

    def boom(*_a: Any, **_k: Any) -> Any:
        raise RuntimeError("the measurement kernel crashed")

    monkeypatch.setattr(pipeline, "measure_forms", boom)
    with pytest.raises(TrialFailedError) as e:
        run_trial(TINY, "builtin:sentiment", train_cfg=_train_cfg(), measure_cfg=FAST_MEASURE)
    partial = e.value.partial
    assert partial is not None and partial.status == "FAIL" and "kernel crashed" in (partial.error or "")
    assert partial.train is not None and partial.train.steps == 6
    assert partial.train.energy_j is not None and partial.train.energy_j > 0
    assert partial.metrics is not None  # it was evaluated before the measurement failed
    cost = TrialCost.from_result(partial)
    assert cost.train_energy_j == pytest.approx(partial.train.energy_j) and cost.measure_energy_j is None


def test_rungs_carry_the_cost_so_far_and_a_stop_keeps_it() -> None:
    from evaluators.pipeline import run_trial

    rungs: list[RungReport] = []
    result = run_trial(TINY, "builtin:sentiment", train_cfg=_train_cfg(8), measure_cfg=FAST_MEASURE,
                       rungs=[2, 4], on_rung=lambda r: rungs.append(r) or r.step >= 4)
    assert result.status == "PRUNED" and [r.step for r in rungs] == [2, 4]
    assert all(r.train_energy_j is not None and r.train_energy_j > 0 for r in rungs)
    assert rungs[1].train_energy_j > rungs[0].train_energy_j  # cumulative
    assert result.train is not None and result.train.energy_j == pytest.approx(rungs[1].train_energy_j, rel=0.2)
    assert result.train.provenance is not None and result.train.provenance.n_windows >= 2


def test_training_reading_has_the_inference_reading_provenance() -> None:
    """Regression: training readings carried only {device, teacher, steps} and fingerprint 'cpu'."""
    from evaluators.pipeline import run_trial

    result = run_trial(TINY, "builtin:sentiment", train_cfg=_train_cfg(4), measure_cfg=FAST_MEASURE)
    train, inf = result.train, result.inference
    assert train is not None and inf is not None and train.provenance is not None
    assert train.hardware_fingerprint == inf.provenance.hardware_fingerprint
    for field in ("device_name", "host_id", "versions", "batch_size", "seq_len", "time_utc", "dtype"):
        assert getattr(train.provenance, field), field
    assert train.provenance.host_id == inf.provenance.host_id
    assert train.provenance.batch_size == 16 and train.provenance.serving_form == "train"
    assert train.provenance.meter == "estimate"
    # measured with the device to itself, and the record says what was observed
    use = inf.provenance.device_use
    assert use["shared"] is False and "observed_by" in use and inf.exclusive


def test_teacher_training_is_metered_and_charged_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: the auto teacher trained outside the meter window, so its joules were never counted."""
    import evaluators.pipeline as pipeline
    import evaluators.teacher_fit as teacher_fit
    from evaluators.pipeline import run_trial

    monkeypatch.setenv("NAS_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(pipeline, "_teachers", {})
    monkeypatch.setattr(pipeline, "_teacher_outputs", {})
    small = functools.partial(load_task, n_train=256, n_dev=64, n_test=64)  # the outputs cache runs all train rows
    monkeypatch.setattr(pipeline, "cached_task", lambda spec, seed, max_len: small(spec, seed=seed, max_len=max_len))
    real = teacher_fit.load_teacher  # what a resolved teacher loads with
    monkeypatch.setattr(teacher_fit, "load_teacher", lambda *a, **k: real(*a, **{**k, "steps": 5}))
    cand = TINY.model_copy(update={"distill": DistillConfig(kind="logit")})
    first = run_trial(cand, "builtin:sentiment", train_cfg=_train_cfg(3), measure_cfg=FAST_MEASURE, teacher="auto")
    second = run_trial(cand, "builtin:sentiment", train_cfg=_train_cfg(3), measure_cfg=FAST_MEASURE, teacher="auto")
    tt = first.train.teacher_training if first.train else None
    assert tt is not None and tt.steps == 5 and tt.energy_j is not None and tt.energy_j > 0
    assert tt.provenance is not None and tt.provenance.meter == "estimate"
    assert second.train is not None and second.train.teacher_training is None  # charged once
    tc = first.train.teacher_cache  # the teacher's outputs, computed once for both trials
    assert tc is not None and tc.energy_j is not None and tc.energy_j > 0 and tc.teacher == first.train.teacher
    assert second.train.teacher_cache is None  # charged once
    cost = TrialCost.from_result(first)
    assert cost.train_energy_j == pytest.approx(first.train.energy_j + tt.energy_j + tc.energy_j)


# --- the driver's writer ---------------------------------------------------------------------------
@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store.open(str(tmp_path / "nas.db"))
    s.create_study("s", "{}", [("accuracy", "maximize"), ("energy_per_sample_j", "minimize")])
    return s


def _tune_trial(number: int, cand: Candidate, last: dict[str, Any] | None, tid: str = "t") -> Any:
    cfg = TrialConfig(candidate=cand, number=number, candidate_hash=candidate_hash(cand)).to_tune()
    return SimpleNamespace(trial_id=f"{tid}{number}", config=cfg, last_result=last, placement_group_factory=None,
                           error_msg="ray.exceptions.ActorDiedError: the actor died unexpectedly")


def _rung(step: int, j: float | None, co2: float | None = None) -> RungReport:
    return RungReport(step=step, accuracy=0.6, train_energy_j=j, co2eq_g=co2, wall_s=1.0, meter="estimate",
                      is_estimate=True)


def test_writer_counts_every_trial_however_it_ends(store: Store, make_result: Any, make_candidate: Any) -> None:
    writer = StoreWriter(StoreHandle(store, "s"), set())
    c = [make_candidate(i) for i in range(5)]
    done = make_result(candidate=c[0], train_energy_j=5.0)
    failed = TrialResult(candidate=c[1], task="t", status="FAIL", train=done.train, error="NaN loss at step 3")
    cases = [
        _tune_trial(0, c[0], TrialReport(status="COMPLETE", step=10, result=done, objectives={
            "accuracy": 0.8, "energy_per_sample_j": 1e-3}).to_tune()),
        _tune_trial(1, c[1], TrialReport(status="FAIL", step=10, result=failed, error="NaN loss at step 3").to_tune()),
        _tune_trial(2, c[2], TrialReport(status="RUNNING", step=4, rung=_rung(4, 2.5)).to_tune()),  # ASHA stop
        _tune_trial(3, c[3], TrialReport(status="RUNNING", step=4, rung=_rung(4, 1.5)).to_tune()),  # worker died
        _tune_trial(4, c[4], None),  # died before its first rung: unknown
    ]
    for t in cases:
        writer.on_trial_start(0, [], t)
    for t in cases[:3]:
        writer.on_trial_complete(0, [], t)
    for t in cases[3:]:
        writer.on_trial_error(0, [], t)
    views = {v.number: v for v in store.trials("s")}
    assert [views[i].state for i in range(5)] == ["COMPLETE", "FAIL", "PRUNED", "FAIL", "FAIL"]
    assert [views[i].cost.train_energy_j for i in range(5)] == [5.0, 5.0, 2.5, 1.5, None]
    assert {r.kind for r in store.readings("s", 1)} == {"train"}  # the failed trial's reading is stored
    info = store.get_study("s")
    assert info.train_energy_j == pytest.approx(5.0 + 5.0 + 2.5 + 1.5)
    assert info.n_trials_unmetered == 1  # the lower bound is said
    assert info.co2eq_g is None  # no meter gave CO2: unknown, never 0.0
    assert store.failed_candidate_hashes("s") == {candidate_hash(c[i]) for i in (1, 3, 4)}


def test_study_co2_is_known_only_when_every_trial_has_it(store: Store, make_candidate: Any) -> None:
    assert store.get_study("s").co2eq_g == 0.0  # nothing ran yet: nothing spent
    store.prune_trial("s", 0, "stopped", cost=TrialCost.from_rung(_rung(2, 1.0, co2=0.2)))
    assert store.get_study("s").co2eq_g == pytest.approx(0.2)
    store.prune_trial("s", 1, "stopped", cost=TrialCost.from_rung(_rung(2, 1.0, co2=None)))
    assert store.get_study("s").co2eq_g is None and store.get_study("s").train_energy_j == pytest.approx(2.0)


def test_staged_weights_move_into_place_only_for_a_stored_complete_trial(
        store: Store, make_result: Any, make_candidate: Any, tmp_path: Path) -> None:
    art = tmp_path / "art"
    writer = StoreWriter(StoreHandle(store, "s"), set(), retention="all", artefacts_dir=str(art))
    staged = [art / ".staging" / f"trial_0000{i}-abc" for i in range(2)]
    for d in staged:
        d.mkdir(parents=True)
        (d / "model.safetensors").write_bytes(b"x")
    ok = make_result(candidate=make_candidate(0), weights_path=str(staged[0]))
    bad = TrialResult(candidate=make_candidate(1), task="t", status="FAIL", error="boom", weights_path=str(staged[1]))
    trials = [_tune_trial(0, make_candidate(0), TrialReport(status="COMPLETE", step=1, result=ok, objectives={
        "accuracy": 0.8, "energy_per_sample_j": 1e-3}).to_tune()),
              _tune_trial(1, make_candidate(1), TrialReport(status="FAIL", step=1, result=bad, error="boom").to_tune())]
    for t in trials:
        writer.on_trial_start(0, [], t)
        writer.on_trial_complete(0, [], t)
    assert [a.path for a in store.artefacts("s")] == [str(art / "trial_00000")]
    assert (art / "trial_00000" / "model.safetensors").exists()
    assert not staged[0].exists() and not staged[1].exists()  # the failed trial left nothing
    assert not (art / "trial_00001").exists()


def test_optuna_is_told_only_after_the_trial_is_stored(store: Store, make_result: Any, make_candidate: Any) -> None:
    """Regression: on a full disk a trial was FAIL in our tables and COMPLETE in Optuna's."""
    told: list[str] = []
    writer = StoreWriter(StoreHandle(store, "s"), set(), settle=told.append)
    t = _tune_trial(0, make_candidate(0), TrialReport(status="COMPLETE", step=1, result=make_result(
        candidate=make_candidate(0)), objectives={"accuracy": 0.8, "energy_per_sample_j": 1e-3}).to_tune())
    writer.on_trial_start(0, [], t)

    def disk_full(*_a: Any, **_k: Any) -> None:
        from nas.errors import StorageError

        raise StorageError("database error on nas.db: OperationalError: database or disk is full")

    store.finish_trial = disk_full  # type: ignore[method-assign]
    writer.on_trial_complete(0, [], t)  # Tune would swallow an exception here; the writer keeps it
    assert writer.fatal is not None and "disk is full" in str(writer.fatal)
    assert told == []  # Optuna still has it RUNNING: the driver fails it on the way out, like ours
    later = _tune_trial(1, make_candidate(1), None)
    writer.on_trial_start(0, [], later)  # nothing more is written once a write failed
    assert [v.number for v in store.trials("s")] == [0] and told == []

    ok = StoreWriter(StoreHandle(store, "s"), set(), settle=told.append)
    del store.finish_trial  # the real method again
    ok.on_trial_complete(0, [], t)
    assert told == ["t0"] and store.trial("s", 0).state == "COMPLETE"


def test_trial_report_round_trips_through_tune(make_result: Any) -> None:
    r = TrialReport(status="COMPLETE", step=10, result=make_result(), objectives={"accuracy": 0.8})
    d = r.to_tune()
    json.dumps(d)  # Tune stores reports as JSON
    back = TrialReport.from_tune({**d, "training_iteration": 3, "time_this_iter_s": 0.1})
    assert back is not None and back.status == "COMPLETE" and back.result == r.result
    assert dict(back.objectives) == {"accuracy": 0.8} and d["rung_accuracy"] == 0.8
    rung = TrialReport.from_tune(TrialReport(status="RUNNING", step=2, rung=_rung(2, 1.0)).to_tune())
    assert rung is not None and rung.rung == _rung(2, 1.0) and rung.spent == _rung(2, 1.0)
    assert TrialReport.from_tune({}) is None and TrialReport.from_tune(None) is None
    assert back.fail_kind is None


@pytest.mark.parametrize("kind", list(FailKind))
def test_fail_kind_round_trips_through_tune(kind: FailKind) -> None:
    d = TrialReport(status="FAIL", step=3, error="boom", fail_kind=kind).to_tune()
    json.dumps(d)
    back = TrialReport.from_tune(d)
    assert back is not None and back.fail_kind is kind and back.error == "boom"
    assert kind.retryable == (kind in (FailKind.INTERRUPTED, FailKind.DEVICE))
    assert kind.spends_budget == kind.blocks_candidate == (kind in (FailKind.CANDIDATE, FailKind.INFEASIBLE))


def test_a_complete_trial_missing_an_objective_is_a_failure_everywhere(make_result: Any) -> None:
    """Regression: FLOPs were null, Optuna said PRUNED and the store said COMPLETE."""
    import dataclasses

    from nas.runner.trainable import _final
    from nas.spec import StudySpec

    spec = StudySpec(objectives=[{"metric": "accuracy"}, {"metric": "flops_per_sample"}])
    report = _final(dataclasses.replace(make_result(), flops_per_sample=None), spec)
    assert report.status == "FAIL" and "flops_per_sample" in (report.error or "")
    assert report.result is not None and report.result.train is not None  # its cost is still stored
    ok = _final(make_result(), spec)
    assert ok.status == "COMPLETE" and set(ok.objectives) == {"accuracy", "flops_per_sample"}


def test_nas_studies_shows_unknown_energy_and_co2_as_unknown(store: Store) -> None:
    """Regression: the study's CO2 read 0.0 g when no meter gave CO2."""
    from rich.console import Console

    from nas.cli.render import studies_table

    store.prune_trial("s", 0, "stopped", cost=TrialCost.from_rung(_rung(2, 3.0)))
    store.prune_trial("s", 1, "stopped", cost=TrialCost(wall_s=1.0, meter="unknown"))
    console = Console(width=200, record=True)
    console.print(studies_table(store.list_studies()))
    text = console.export_text()
    assert ">= 3.0 J (includes estimates), 1 trial(s) unmetered" in text and "unknown" in text
    assert "0 g" not in text


def test_the_search_summary_and_the_card_say_when_the_cost_is_a_lower_bound(store: Store) -> None:
    from nas.export.card import _cost
    from nas.runner.api import SearchSummary

    store.prune_trial("s", 0, "stopped", cost=TrialCost.from_rung(_rung(2, 3.0)))
    store.prune_trial("s", 1, "stopped", cost=TrialCost(wall_s=1.0, meter="unknown"))
    info = store.get_study("s")
    assert "a lower bound: 1 trial(s) ran unmetered" in "\n".join(_cost(info))
    summary = SearchSummary(study="s", db="x.db", objectives=[], front=[], n_complete=0, n_failed=0, n_pruned=2,
                            total_energy_j=info.total_energy_j, energy_meters=("estimate",), energy_is_estimate=True,
                            co2eq_g=None, wall_s=1.0, stopped_reason="done", n_trials_unmetered=1)
    assert "search cost >= 3.0 J (ESTIMATE), meter estimate (1 trial(s) unmetered)" in summary.describe()
