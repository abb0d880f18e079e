"""Predict, then skip (issue #16 item 2): a sampled candidate the study's cost model predicts infeasible with
high confidence is never built; it is stored FAIL (kind infeasible) with its candidate, told to Optuna as
PRUNED with the constraints it breaks, blocked, and counted in the trial budget."""

from __future__ import annotations

import logging
import pickle
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest

from nas.config import Candidate
from nas.cost_inputs import candidate_inputs
from nas.cost_model import MIN_TRIALS, CostModel, predictable
from nas.errors import ConfigError
from nas.records import FailKind
from nas.runner.cost_gate import CostGate, PredictedSkip, skip_constraints
from nas.runner.protocol import TrialConfig
from nas.runner.searcher import NASOptunaSearch, make_sampler
from nas.runner.writer import StoreHandle
from nas.spec import SamplerSpec, StudySpec
from search_spaces import load_space
from storage import Store, TrialCost, candidate_hash
from tests.conftest import fake_trial_result
from tests.test_cost_model import _candidate, _measured, _own_cache, _store_study  # noqa: F401  (_own_cache: autouse)
from tests.test_searcher import OVERRIDES

ENERGY = "energy_per_sample_j < 0.02"  # the stored trials' law: 0.007 to 0.076 J/sample
#: 3 layers, d_model 96, FFN 128: the law gives 0.07 J/sample, 3.5 x the constraint (not a stored trial)
BIG = Candidate(n_layers=3, d_model=96, n_heads=2, d_ffn=128, max_len=64)
#: 1 layer, d_model 32, FFN 96: 0.0075 J/sample, well inside (not a stored trial)
SMALL = Candidate(n_layers=1, d_model=32, n_heads=2, d_ffn=96, max_len=64)


def _gate(db: Path, *constraints: str, confidence: float = 0.98) -> CostGate:
    store = Store.open(db, create=False)
    return CostGate(StoreHandle(store, "s"), constraints or (ENERGY,), batch_size=32, seq_len=64,
                    confidence=confidence)


def _add_trial(db: Path, number: int, hardware: str) -> None:
    """One more COMPLETE trial of the law (tests.test_cost_model), on ``hardware``."""
    x = candidate_inputs(_candidate(number), batch_size=32, seq_len=64)
    m = _measured(x, np.random.default_rng(number), 0.02)
    result = fake_trial_result(candidate=x.candidate, hardware=hardware, meter="estimate", is_estimate=True,
                               energy_per_sample_j=m["energy_per_sample_j"], latency_p50_ms=m["latency_p50_ms"])
    with Store.open(db, create=False) as store:
        store.finish_trial("s", number, result, cost=TrialCost())


@pytest.fixture(scope="module")
def study_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 COMPLETE trials on one hardware fingerprint ('AMD EPYC', meter estimate), J/sample by the law."""
    db = tmp_path_factory.mktemp("gate") / "nas.db"
    _store_study(db, 12, fake_trial_result)
    return db


@pytest.fixture
def own_db(study_db: Path, tmp_path: Path) -> Path:
    """A copy of ``study_db`` a test may add trials to."""
    return Path(shutil.copy(study_db, tmp_path / "nas.db"))


# --- the gate ------------------------------------------------------------------------------------------------
def test_below_min_trials_it_never_skips(tmp_path: Path) -> None:
    db = tmp_path / "nas.db"
    _store_study(db, MIN_TRIALS - 1, fake_trial_result)
    gate = _gate(db)
    assert gate(BIG) is None and gate.model() is None
    _add_trial(db, MIN_TRIALS - 1, "AMD EPYC")  # now MIN_TRIALS: the same candidate is skipped
    assert gate(BIG) is not None


def test_a_candidate_far_beyond_the_constraint_is_skipped_one_well_inside_is_not(study_db: Path) -> None:
    gate = _gate(study_db, "accuracy > 0.5", ENERGY)
    skip = gate(BIG)
    assert isinstance(skip, PredictedSkip)
    assert skip.constraints == {ENERGY: 1.0}  # the accuracy constraint is not judged: unknown, left out
    assert skip.reason.startswith("predicted infeasible with 98% confidence")
    for part in ("not built", "AMD EPYC", "meter estimate", "ESTIMATE", repr(ENERGY), "12 COMPLETE trials"):
        assert part in skip.reason, (part, skip.reason)
    assert gate(SMALL) is None
    # a constraint on latency is judged too; one the model does not predict is not
    assert _gate(study_db, "latency_p50_ms < 30")(BIG) is not None
    assert _gate(study_db, "throughput_samples_s > 1e9")(BIG) is None


def test_the_confidence_is_the_one_sided_quantile(study_db: Path) -> None:
    """A bound between the 40% and the 0.1% quantile of the prediction: skipped at 60% confidence, not at 99.9%."""
    model = _gate(study_db).model()
    assert model is not None
    inputs = candidate_inputs(BIG, batch_size=32, seq_len=64)
    q40, q01 = (model.predict(inputs, confidence=c)["energy_per_sample_j"].low for c in (0.6, 0.999))
    assert q01 < q40
    bound = f"energy_per_sample_j < {(q40 * q01) ** 0.5:.6g}"
    assert _gate(study_db, bound, confidence=0.6)(BIG) is not None
    assert _gate(study_db, bound, confidence=0.999)(BIG) is None


def test_two_hardware_groups_never_skip(own_db: Path, caplog: pytest.LogCaptureFixture) -> None:
    gate = _gate(own_db)
    assert gate(BIG) is not None
    _add_trial(own_db, 12, "Intel Xeon")  # one reading of another machine: its joules are not comparable
    with caplog.at_level(logging.DEBUG, logger="nas.runner.cost_gate"):
        assert gate(BIG) is None
    assert "2 hardware/meter group(s)" in caplog.text and "'Intel Xeon'" in caplog.text


def test_it_refits_only_when_the_trial_count_changes(own_db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fits: list[int] = []
    fit = CostModel.fit.__func__  # type: ignore[attr-defined]

    def counting(cls: type[CostModel], observations: Any, **kw: Any) -> CostModel:
        fits.append(len(observations))
        return fit(cls, observations, **kw)  # type: ignore[no-any-return]

    monkeypatch.setattr(CostModel, "fit", classmethod(counting))
    gate = _gate(own_db)
    assert gate(BIG) is not None and gate(SMALL) is None and gate(BIG) is not None
    assert fits == [12]
    _add_trial(own_db, 12, "AMD EPYC")
    assert gate(BIG) is not None and fits == [12, 13]
    again = pickle.loads(pickle.dumps(gate))  # Tune pickles the searcher: the model stays behind
    assert again._model is None and again(BIG) == gate(BIG) and fits == [12, 13, 13]


def test_a_candidate_that_cannot_be_profiled_is_built(study_db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import nas.runner.cost_gate as cost_gate

    def broken(*_a: Any, **_k: Any) -> Any:
        raise RuntimeError("no kernel for this")

    gate = _gate(study_db)
    assert gate(BIG) is not None
    monkeypatch.setattr(cost_gate, "candidate_inputs", broken)
    assert gate(BIG) is None


# --- the setting ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("constraint", "expected"), [
    ("energy_per_sample_j < 0.002", True),
    ("latency_p50_ms <= 5 and attention == 'softmax'", True),
    ("accuracy > 0.8", False),
    ("energy_per_sample_j < 0.002 or accuracy > 0.8", False),  # not judgeable before training
    ("throughput_samples_s > 100", False),  # measured, not predicted
    ("energy_per_sample_j < 0.002 and params < 1e6", False),  # reads a value the model does not know
    ("n_layers <= 2", False),  # nothing predicted
])
def test_a_constraint_is_predictable_when_it_reads_a_predicted_value(constraint: str, expected: bool) -> None:
    assert predictable(constraint) is expected


def test_predict_skip_false_or_auto_without_a_predictable_constraint_is_off(tmp_path: Path) -> None:
    from nas.runner.checks import check_constraints
    from nas.runner.driver import _make_searcher

    store = Store.open(str(tmp_path / "nas.db"))
    store.create_study("g", StudySpec(name="g").model_dump_json(), [("accuracy", "maximize")])
    handle = StoreHandle(store, "g")

    def searcher(constraints: list[str], **fidelity: Any) -> NASOptunaSearch:
        spec = StudySpec(name="g", constraints=constraints, fidelity={"rungs": [4], **fidelity})
        return _make_searcher(spec, store, handle, optuna.storages.InMemoryStorage(), set())

    on = searcher([ENERGY])._gate  # auto, a predictable constraint
    assert isinstance(on, CostGate) and on.constraints == (ENERGY,) and on.confidence == 0.98
    assert isinstance(searcher([ENERGY], predict_skip=True, predict_skip_confidence=0.9)._gate, CostGate)
    assert searcher([ENERGY], predict_skip=False)._gate is None
    assert searcher(["accuracy > 0.8", "throughput_samples_s > 100"])._gate is None  # auto: nothing to predict
    assert searcher([])._gate is None
    spec = StudySpec(name="g", constraints=["accuracy > 0.8"], fidelity={"rungs": [4], "predict_skip": True})
    assert skip_constraints(spec.with_overrides(**{"fidelity.predict_skip": "auto"})) == ()
    with pytest.raises(ConfigError) as e:
        check_constraints(spec)  # true without a predictable constraint: refused before the search
    assert e.value.field == "fidelity.predict_skip" and "Fix:" in str(e.value)
    with pytest.raises(ValueError, match="predict_skip_confidence"):
        StudySpec(fidelity={"predict_skip_confidence": 0.5})


# --- the searcher ---------------------------------------------------------------------------------------------
LINEAR = "energy_per_sample_j < 0.001"


def _skip_linear(candidate: Candidate) -> PredictedSkip | None:
    """A stand-in gate: every linear-attention candidate is predicted infeasible."""
    if candidate.attention.kind != "linear":
        return None
    return PredictedSkip(reason=f"predicted infeasible (stand-in): breaks {LINEAR!r}; not built",
                         constraints={LINEAR: 1.0})


def _searcher(tmp_path: Path, **kwargs: Any) -> tuple[NASOptunaSearch, Store, set[str], Any]:
    store = Store.open(str(tmp_path / "nas.db"))
    store.create_study("g", StudySpec(name="g").model_dump_json(), [("accuracy", "maximize")])
    handle = StoreHandle(store, "g")
    failed: set[str] = set()
    ot = optuna.storages.InMemoryStorage()
    searcher = NASOptunaSearch(
        load_space("tiny", OVERRIDES), failed_hashes=failed, on_invalid=handle.record_invalid, metric=["accuracy"],
        mode=["max"], sampler=make_sampler(SamplerSpec(kind="random"), 0), study_name="g", storage=ot,
        gate=_skip_linear, on_skipped=handle.record_skipped, **kwargs)
    return searcher, store, failed, ot


def test_suggest_records_a_skipped_candidate_tells_optuna_pruned_and_samples_again(tmp_path: Path) -> None:
    searcher, store, failed, ot = _searcher(tmp_path)
    handed = [TrialConfig.from_tune(searcher.suggest(f"t{i}")) for i in range(4)]  # the 4 softmax candidates
    assert all(c.candidate.attention.kind == "softmax" for c in handed)
    skipped = [v for v in store.trials("g") if v.fail_kind is FailKind.INFEASIBLE]
    assert skipped, "the sampler never proposed a linear candidate"
    told = {t.number: t for t in ot.get_all_trials(ot.get_study_id_from_name("g"))}
    for view in skipped:
        assert view.state == "FAIL" and view.candidate is not None and view.candidate.attention.kind == "linear"
        assert view.fail_reason is not None and view.fail_reason.startswith("predicted infeasible")
        assert view.spends_budget
        assert view.cost is None or view.cost.total_energy_j is None, view.cost  # no metered joules
        assert candidate_hash(view.candidate) in failed  # never sampled again, also on resume:
        assert candidate_hash(view.candidate) in store.failed_candidate_hashes("g")
        t = told[view.number]
        assert t.state == optuna.trial.TrialState.PRUNED and t.constraints == {LINEAR: 1.0}
        assert "not built" in t.user_attrs["fail_reason"]
    assert len({v.candidate_hash for v in skipped}) == len(skipped)  # a blocked candidate is not judged twice
    assert {c.number for c in handed}.isdisjoint(v.number for v in skipped)


def test_a_skipped_trial_counts_in_the_budget(tmp_path: Path) -> None:
    searcher, store, _, ot = _searcher(tmp_path, max_trials=5)
    handed = []
    for i in range(8):
        cfg = searcher.suggest(f"t{i}")
        if cfg == "FINISHED":
            break
        handed.append(cfg)
    skipped = [v for v in store.trials("g") if v.fail_kind is FailKind.INFEASIBLE]
    assert skipped and len(handed) + len(skipped) == 5  # handed out plus skipped: the budget, not more
    assert sum(v.spends_budget for v in store.trials("g")) == len(skipped)  # the driver's _spent counts them
    n_told = len(ot.get_all_trials(ot.get_study_id_from_name("g")))
    assert searcher.suggest("again") == "FINISHED"
    assert len(ot.get_all_trials(ot.get_study_id_from_name("g"))) == n_told  # nothing more asked of Optuna


def test_without_a_gate_nothing_is_skipped(tmp_path: Path) -> None:
    searcher, store, _, _ = _searcher(tmp_path)
    searcher._gate = None
    kinds = [TrialConfig.from_tune(searcher.suggest(f"t{i}")).candidate.attention.kind for i in range(8)]
    assert "linear" in kinds and not [v for v in store.trials("g") if v.fail_kind is FailKind.INFEASIBLE]



# --- a whole search -------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_search_skips_what_the_model_predicts_infeasible_within_its_trial_budget(tmp_path: Path) -> None:
    """8 trials train (measure-first off, so the constraint no candidate meets stops none); then the cost model
    predicts every candidate infeasible, and the rest of the budget is spent on skips, none built."""
    from tests.test_search import nas_cli, small_spec, write_spec

    db = tmp_path / "nas.db"
    never = "energy_per_sample_j < 1e-12"
    spec = small_spec("gate", db, trials=MIN_TRIALS + 2, constraints=[never])
    spec["fidelity"]["measure_first"] = False
    spec["resources"]["max_concurrent"] = 1  # the model is fitted once MIN_TRIALS are stored, before the next ask
    res = nas_cli("search", str(write_spec(tmp_path, spec)), "--quiet", "--db", str(db))
    assert res.returncode == 0, res.stderr[-3000:]
    store = Store.open(str(db), create=False)
    views = store.trials("gate")
    skipped = [v for v in views if v.fail_kind is FailKind.INFEASIBLE]
    assert [v.state for v in views].count("COMPLETE") == MIN_TRIALS and len(skipped) == 2
    assert sum(v.spends_budget for v in views) == MIN_TRIALS + 2  # the budget, not more: Tune stopped asking
    assert store.get_study("gate").status == "COMPLETE"
    for v in skipped:
        assert v.candidate is not None and v.result is None and v.cost is None
        assert v.fail_reason is not None and v.fail_reason.startswith("predicted infeasible") and never in v.fail_reason
    told = {t.number: t for t in optuna.load_study(study_name="gate", storage=f"sqlite:///{db}").trials}
    assert all(told[v.number].state == optuna.trial.TrialState.PRUNED for v in skipped)
