"""Measure first (issue #16 item 1): a trial measures its built, compressed model before it trains, and one
that breaks a study constraint judgeable then is stopped at once, stored with its reason and its cost, told
to Optuna, and never sampled again; the reading after training stays the one of record."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import optuna
import pytest

from evaluators.measure_first import charging_first
from nas.config import Candidate, MeasureConfig, TrainConfig
from nas.errors import ConfigError, TrialFailedError
from nas.feasibility import (
    BEFORE_TRAINING_NAMES,
    MEASURED_NAMES,
    MeasureFirst,
    judgeable,
    values_before_training,
)
from nas.records import FailKind, RungReport, TrialResult
from nas.runner.protocol import TrialConfig, TrialReport
from nas.spec import StudySpec
from nas.vocab import OBJECTIVE
from storage import FILTER_NAMES, Store, TrialCost, candidate_hash

TINY = Candidate(n_layers=1, d_model=16, n_heads=2, d_ffn=32, max_len=32, dropout=0.0)
FAST_MEASURE = MeasureConfig(meter="estimate", window_s=0.05, n_windows=2, idle_s=0.0, warmup_iters=1,
                             batch_size=4, seq_len=16)
NEVER = "energy_per_sample_j < 1e-12"  # no model meets it
ALWAYS = "energy_per_sample_j < 1e9"


def _rule(*constraints: str, margin: float = 0.1) -> MeasureFirst:
    rule = MeasureFirst.for_study(list(constraints), setting="auto", margin=margin)
    assert rule is not None
    return rule


# --- the rule: which constraints can be judged before training ----------------------------------------
@pytest.mark.parametrize(("constraint", "expected"), [
    ("energy_per_sample_j < 0.002", True),
    ("energy_per_sample_net_j < 0.002 and latency_p95_ms <= 5", True),
    ("throughput_samples_s > 100", True),
    ("params < 1e6 and size_bytes < 4e6 and flops_per_sample < 1e9", True),
    ('attention == "linear" and weight_bits <= 8', True),  # candidate fields are known before building
    ("not is_estimate and meter == \"nvml-counter\"", True),
    ("accuracy > 0.8", False),
    ("accuracy > 0.8 or energy_per_sample_j < 0.002", False),  # met by its accuracy, perhaps: wait for it
    ("test_accuracy > 0.5", False),
    ("train_energy_j < 100", False),
    ('state == "COMPLETE"', False),
])
def test_a_constraint_is_judgeable_when_every_name_it_reads_is_known_before_training(constraint: str,
                                                                                      expected: bool) -> None:
    assert judgeable(constraint) is expected


def test_the_names_known_before_training_come_from_the_vocabulary() -> None:
    assert set(FILTER_NAMES) >= BEFORE_TRAINING_NAMES
    for term in OBJECTIVE.terms.values():
        assert (term.name in BEFORE_TRAINING_NAMES) == (term.before_training != "no"), term.name
    assert {"energy_per_sample_j", "energy_per_sample_net_j", "latency_p50_ms", "latency_p95_ms",
                              "throughput_samples_s"} == MEASURED_NAMES
    assert not {"accuracy", "macro_f1", "train_energy_j"} & BEFORE_TRAINING_NAMES


def test_the_setting_turns_it_on_off_or_by_the_constraints() -> None:
    energy, acc = "energy_per_sample_j < 0.002", "accuracy > 0.8"
    assert MeasureFirst.for_study([energy], setting=False, margin=0.1) is None
    assert MeasureFirst.for_study([acc], setting="auto", margin=0.1) is None  # nothing to judge early
    assert MeasureFirst.for_study([], setting="auto", margin=0.1) is None
    rule = MeasureFirst.for_study([acc, energy], setting="auto", margin=0.1)
    assert rule is not None and list(rule.checks) == [energy]  # only the judgeable one
    with pytest.raises(ConfigError) as e:
        MeasureFirst.for_study([acc], setting=True, margin=0.1)
    assert e.value.field == "fidelity.measure_first" and "Fix:" in str(e.value)


def test_a_reading_is_judged_within_its_noise() -> None:
    rule = _rule("energy_per_sample_j < 0.002", margin=0.1)
    assert rule.violated({"energy_per_sample_j": 0.003}) == ("energy_per_sample_j < 0.002",)
    assert rule.violated({"energy_per_sample_j": 0.0021}) == ()  # within 10%: it trains
    assert rule.violated({"energy_per_sample_j": 0.0021}, cv=0.0) == ()
    assert rule.violated({"energy_per_sample_j": 0.003}, cv=0.2) == ()  # 2 x CV = 40% > 10%
    assert rule.violated({"energy_per_sample_j": 0.0015}) == ()
    assert rule.violated({"energy_per_sample_j": None}) == ()  # no number: not judged
    assert rule.violated({"energy_per_sample_j": float("nan")}) == ()
    # a maximised value is given the benefit of the doubt upwards; exact values get none
    assert _rule("throughput_samples_s > 100").violated({"throughput_samples_s": 95.0}) == ()
    assert _rule("throughput_samples_s > 100").violated({"throughput_samples_s": 80.0}) != ()
    assert _rule("params < 1000").violated({"params": 1001.0}) == ("params < 1000",)
    both = _rule("energy_per_sample_j < 0.002 and throughput_samples_s > 100", margin=0.1)
    assert both.violated({"energy_per_sample_j": 0.0021, "throughput_samples_s": 95.0}) == ()
    assert both.violated({"energy_per_sample_j": 0.0021, "throughput_samples_s": 50.0}) != ()


def test_the_gate_gives_the_constraint_the_value_and_the_meter(make_result: Any) -> None:
    rule = _rule("energy_per_sample_j < 0.002", "d_model <= 64")
    hungry = make_result(energy_per_sample_j=0.005, accuracy=None, meter="estimate", is_estimate=True)
    reason = rule.gate(hungry)
    assert reason is not None and "'energy_per_sample_j < 0.002'" in reason and "0.005" in reason
    assert "estimate" in reason and "d_model" not in reason.split("(")[1]  # only the broken one's values
    assert rule.gate(make_result(energy_per_sample_j=0.001, accuracy=None)) is None
    values = values_before_training(hungry)
    assert "accuracy" not in values and values["energy_per_sample_j"] == 0.005 and values["meter"] == "estimate"


def test_measure_first_true_without_a_judgeable_constraint_is_refused_before_the_search() -> None:
    from nas.runner.checks import check_constraints

    spec = StudySpec(constraints=["accuracy > 0.8"], fidelity={"rungs": [4], "measure_first": True})
    with pytest.raises(ConfigError, match="fidelity.measure_first"):
        check_constraints(spec)
    check_constraints(spec.with_overrides(**{"fidelity.measure_first": "auto"}))


# --- the pipeline -----------------------------------------------------------------------------------
def _train_cfg(steps: int = 6) -> TrainConfig:
    return TrainConfig(steps=steps, batch_size=16, lr=3e-3, device="cpu", eval_batch_size=256)


def test_a_trial_whose_reading_breaks_the_constraint_never_trains(monkeypatch: pytest.MonkeyPatch) -> None:
    import evaluators.pipeline as pipeline
    from evaluators.pipeline import run_trial

    def no_training(*_a: Any, **_k: Any) -> Any:
        raise AssertionError("trained a candidate that the constraint excludes")

    monkeypatch.setattr(pipeline, "train_candidate", no_training)
    with pytest.raises(TrialFailedError) as e:
        run_trial(TINY, "builtin:sentiment", train_cfg=_train_cfg(), measure_cfg=FAST_MEASURE,
                  gate=_rule(NEVER).gate)
    assert e.value.kind is FailKind.INFEASIBLE
    stopped = e.value.partial
    assert stopped is not None and stopped.train is None and stopped.metrics is None
    assert stopped.error is not None and NEVER in stopped.error
    inf = stopped.inference
    assert inf is not None and inf.provenance.before_training and inf.exclusive and inf.serving_form == "eager"
    assert inf.energy_per_sample_j is not None and inf.energy_per_sample_j > 0
    assert stopped.params and stopped.size_bytes and stopped.flops_per_sample  # counted on the served copy
    cost = TrialCost.from_result(stopped)
    assert cost.train_energy_j == 0.0  # it trained for nothing: known, not unknown
    assert cost.measure_energy_j is not None and cost.measure_energy_j == pytest.approx(inf.protocol_energy_j)


def test_a_trial_that_passes_trains_and_its_reading_after_training_is_the_one_of_record() -> None:
    from evaluators.pipeline import run_trial

    gated: list[TrialResult] = []

    def gate(record: TrialResult) -> str | None:
        gated.append(record)
        return _rule(ALWAYS).gate(record)

    result = run_trial(TINY, "builtin:sentiment", train_cfg=_train_cfg(4), measure_cfg=FAST_MEASURE, gate=gate)
    assert result.status == "COMPLETE" and result.train is not None and result.train.steps == 4
    assert len(gated) == 1 and result.first_reading == gated[0].inference
    assert result.first_reading is not None and result.first_reading.provenance.before_training
    assert result.inference is not None and not result.inference.provenance.before_training
    assert result.params == gated[0].params and result.size_bytes == gated[0].size_bytes  # shapes: the same
    cost = TrialCost.from_result(result)
    both = [r.protocol_energy_j for r in (result.inference, result.first_reading)]
    assert None not in both and cost.measure_energy_j == pytest.approx(sum(both))  # type: ignore[arg-type]
    assert TrialResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result
    plain = run_trial(TINY, "builtin:sentiment", train_cfg=_train_cfg(2), measure_cfg=FAST_MEASURE)
    assert plain.first_reading is None  # without a gate nothing is measured first


def test_a_rung_report_carries_the_measurement_before_training(make_result: Any) -> None:
    first = dataclasses.replace(make_result().inference, protocol_energy_j=3.0)
    seen: list[RungReport] = []
    on_rung = charging_first(seen.append, first)
    assert on_rung is not None
    on_rung(RungReport(step=2, accuracy=0.6, train_energy_j=5.0, co2eq_g=None, wall_s=1.0, meter="estimate",
                       is_estimate=True))
    assert seen[0].measure_energy_j == 3.0
    cost = TrialCost.from_rung(seen[0])  # an ASHA stop at that rung still counts the measurement
    assert cost.train_energy_j == 5.0 and cost.measure_energy_j == 3.0 and cost.total_energy_j == 8.0
    assert charging_first(seen.append, None) is not None and charging_first(None, first) is None


# --- worker, writer and Optuna --------------------------------------------------------------------------
def _spec(db: Path, *constraints: str, **fidelity: Any) -> StudySpec:
    return StudySpec.model_validate({
        "name": "mf", "task": "builtin:sentiment", "constraints": list(constraints),
        "space": {"preset": "tiny", "overrides": {
            "n_layers": [1], "d_model": [16], "n_heads": [2], "ffn_ratio": [1, 2], "attention": ["softmax", "linear"],
            "attention_bits": [32], "ffn_bits": [32], "embedding_bits": [32], "sparsity": ["none"],
            "activation_bits": [32], "max_len": 32}},
        "sampler": {"kind": "tpe", "seed": 0}, "fidelity": {"rungs": [4], "enabled": False, **fidelity},
        "train": {"batch_size": 16, "lr": 0.003, "device": "cpu"},
        "measure": FAST_MEASURE.model_dump(), "storage": {"url": str(db), "retention": "none"},
    })


def _searcher_and_writer(spec: StudySpec, store: Store) -> tuple[Any, Any, Any]:
    from nas.runner.driver import study_constraints
    from nas.runner.searcher import NASOptunaSearch, make_sampler
    from nas.runner.writer import StoreHandle, StoreWriter
    from search_spaces import load_space

    handle = StoreHandle(store, spec.name)
    judge = study_constraints(spec, handle)
    assert judge is not None
    failed: set[str] = set()
    ot = optuna.storages.InMemoryStorage()
    searcher = NASOptunaSearch(
        load_space(spec.space.preset, spec.space.overrides), failed_hashes=failed, metric=spec.objective_names,
        mode=["max", "min"], sampler=make_sampler(spec.sampler, 0), study_name=spec.name, storage=ot,
        constraints=judge, first_constraints=judge.before_training)
    writer = StoreWriter(handle, failed, settle=searcher.settle)
    return searcher, writer, ot


def _run(searcher: Any, writer: Any, spec: StudySpec, trial_id: str) -> tuple[TrialReport, TrialConfig]:
    from nas.runner.trainable import run_one

    config = searcher.suggest(trial_id)
    reports: list[dict[str, Any]] = []
    final = run_one(config, spec, reports.append)
    trial = SimpleNamespace(trial_id=trial_id, config=config, last_result=reports[-1], placement_group_factory=None)
    writer.on_trial_start(0, [], trial)
    searcher.on_trial_complete(trial_id, reports[-1])
    writer.on_trial_complete(0, [], trial)  # stores, then settles (tells Optuna)
    return final, TrialConfig.from_tune(config)


def test_a_stopped_trial_is_stored_with_its_reason_told_to_optuna_and_never_sampled_again(tmp_path: Path) -> None:
    spec = _spec(tmp_path / "nas.db", NEVER, "accuracy > 0.5")
    store = Store.open(spec.storage.url)
    store.create_study(spec.name, spec.model_dump_json(), list(zip(spec.objective_names, spec.directions,
                                                                    strict=True)))
    searcher, writer, ot = _searcher_and_writer(spec, store)
    final, cfg = _run(searcher, writer, spec, "t0")
    assert final.status == "FAIL" and final.fail_kind is FailKind.INFEASIBLE and final.step == 0
    view = store.trial(spec.name, cfg.number)
    assert view.state == "FAIL" and view.fail_kind is FailKind.INFEASIBLE and view.spends_budget
    assert view.fail_reason is not None and NEVER in view.fail_reason and "before training" in view.fail_reason
    assert view.cost is not None and view.cost.train_energy_j == 0.0 and view.cost.measure_energy_j > 0
    assert view.result is not None and view.result.train is None  # nothing trained, nothing evaluated
    assert view.values()["energy_per_sample_j"] is not None and view.values()["accuracy"] is None
    (reading,) = store.readings(spec.name, cfg.number)
    assert reading.kind == "inference:eager" and reading.provenance is not None
    assert reading.provenance["before_training"] is True and reading.meter == "estimate" and reading.is_estimate
    assert candidate_hash(cfg.candidate) in store.failed_candidate_hashes(spec.name)  # blocked, also on resume
    (told,) = ot.get_all_trials(ot.get_study_id_from_name(spec.name))
    # PRUNED with the judgeable constraint broken (TPE reads it); the accuracy one is unknown, left out
    assert told.state == optuna.trial.TrialState.PRUNED and told.constraints == {NEVER: 1.0}
    assert NEVER in told.user_attrs["fail_reason"]
    assert store.get_study(spec.name).train_energy_j == 0.0 and store.get_study(spec.name).n_trials_unmetered == 0
    # the same candidate is never handed out again
    hashes = []
    for i in range(1, 4):
        config = searcher.suggest(f"t{i}")
        if config is None:
            break
        hashes.append(TrialConfig.from_tune(config).candidate_hash)
    assert candidate_hash(cfg.candidate) not in hashes


def test_a_trial_that_meets_the_constraint_completes_with_both_readings_stored(tmp_path: Path) -> None:
    spec = _spec(tmp_path / "nas.db", ALWAYS)
    store = Store.open(spec.storage.url)
    store.create_study(spec.name, spec.model_dump_json(), list(zip(spec.objective_names, spec.directions,
                                                                    strict=True)))
    searcher, writer, ot = _searcher_and_writer(spec, store)
    final, cfg = _run(searcher, writer, spec, "t0")
    assert final.status == "COMPLETE"
    view = store.trial(spec.name, cfg.number)
    assert view.state == "COMPLETE" and view.result is not None and view.result.first_reading is not None
    readings = store.readings(spec.name, cfg.number)
    flags = sorted(bool(r.provenance and r.provenance.get("before_training")) for r in readings
                   if r.kind.startswith("inference:"))
    assert flags == [False, True]  # the one of record, and the one before training
    assert view.values()["energy_per_sample_j"] == view.result.inference.energy_per_sample_j  # of record: after
    assert view.cost is not None and view.cost.measure_energy_j == pytest.approx(
        view.result.inference.protocol_energy_j + view.result.first_reading.protocol_energy_j)
    (told,) = ot.get_all_trials(ot.get_study_id_from_name(spec.name))
    assert told.state == optuna.trial.TrialState.COMPLETE and told.constraints == {ALWAYS: -1.0}


def test_measure_first_off_trains_even_a_trial_the_constraint_excludes(tmp_path: Path) -> None:
    from nas.runner.trainable import measure_first_rule

    assert measure_first_rule(_spec(tmp_path / "a.db", NEVER, measure_first=False)) is None
    assert measure_first_rule(_spec(tmp_path / "a.db", "accuracy > 0.5")) is None
    assert measure_first_rule(_spec(tmp_path / "a.db", NEVER)) is not None  # auto


def test_resume_tells_optuna_a_stored_infeasible_trial_as_pruned(tmp_path: Path, make_result: Any,
                                                                  make_candidate: Any) -> None:
    from optuna.storages import RDBStorage

    from nas.runner.driver import _settle_running_optuna_trials

    spec = StudySpec(name="k", constraints=["energy_per_sample_j < 0.002", "accuracy > 0.5"])
    store = Store.open(str(tmp_path / "nas.db"))
    store.create_study("k", spec.model_dump_json(), [("accuracy", "maximize"), ("energy_per_sample_j", "minimize")])
    ot_storage = RDBStorage(store.url, engine_kwargs=store.optuna_engine_kwargs())
    study = optuna.create_study(study_name="k", storage=ot_storage, directions=["maximize", "minimize"])
    study.ask()  # RUNNING in Optuna, as a driver killed after storing it leaves it
    stopped = dataclasses.replace(make_result(candidate=make_candidate(0), accuracy=None, energy_per_sample_j=5e-3),
                                  status="FAIL", train=None, error="infeasible, measured before training")
    store.start_trial("k", 0, make_candidate(0))
    store.finish_trial("k", 0, stopped, cost=TrialCost.from_result(stopped), fail_kind=FailKind.INFEASIBLE)
    _settle_running_optuna_trials(ot_storage, store, spec)
    (told,) = optuna.load_study(study_name="k", storage=ot_storage).trials
    assert told.state == optuna.trial.TrialState.PRUNED
    assert told.constraints == {"energy_per_sample_j < 0.002": 1.0}


# --- a whole search ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_search_whose_constraint_excludes_every_candidate_trains_none(tmp_path: Path) -> None:
    from tests.test_search import nas_cli, small_spec, write_spec

    db = tmp_path / "nas.db"
    spec = small_spec("mf", db, trials=3, constraints=[NEVER])
    res = nas_cli("search", str(write_spec(tmp_path, spec)), "--quiet", "--db", str(db))
    assert res.returncode == 0, res.stderr[-3000:]
    store = Store.open(str(db), create=False)
    views = store.trials("mf")
    assert [v.fail_kind for v in views] == [FailKind.INFEASIBLE] * 3  # budget spent, nothing re-sampled
    assert len({v.candidate_hash for v in views}) == 3
    info = store.get_study("mf")
    assert info.train_energy_j == 0.0 and info.measure_energy_j > 0 and info.n_trials_unmetered == 0
    ot = optuna.load_study(study_name="mf", storage=f"sqlite:///{db}")
    assert [t.state for t in ot.trials] == [optuna.trial.TrialState.PRUNED] * 3
    assert all(t.constraints == {NEVER: 1.0} for t in ot.trials)
