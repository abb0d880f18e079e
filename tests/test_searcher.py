"""The searcher never replays: a resumed or re-run study draws new candidates, and a candidate that is
COMPLETE (or being evaluated) in the study is never handed out again."""

from __future__ import annotations

import optuna
import pytest

from nas.runner.protocol import TrialConfig, TrialReport
from nas.runner.searcher import NASOptunaSearch, make_sampler, sampler_seed
from nas.spec import SamplerSpec
from search_spaces import load_space

OVERRIDES = {"n_layers": [1], "d_model": [16, 32], "n_heads": [2], "ffn_ratio": [1, 2],
             "attention": ["softmax", "linear"], "attention_bits": [32], "ffn_bits": [32],
             "embedding_bits": [32], "sparsity": ["none"], "max_len": 32}


def _searcher(storage: optuna.storages.BaseStorage, seed: int, evaluated: dict[str, int] | None = None,
              rejected: list[str] | None = None) -> NASOptunaSearch:
    return NASOptunaSearch(
        load_space("tiny", OVERRIDES), failed_hashes=set(), evaluated=evaluated,
        on_invalid=(lambda n, p, reason, kind: rejected.append(reason)) if rejected is not None else None,
        metric=["accuracy"], mode=["max"], sampler=make_sampler(SamplerSpec(kind="random"), seed),
        study_name="s", storage=storage)


def test_sampler_seed_changes_with_the_count_of_told_trials() -> None:
    """Regression: a resumed study re-created its sampler with the same seed and replayed its sequence."""
    assert sampler_seed(0, "s", 0) == sampler_seed(0, "s", 0)
    seeds = {sampler_seed(0, "s", n) for n in range(20)} | {sampler_seed(0, "t", 0), sampler_seed(1, "s", 0)}
    assert len(seeds) == 22 and all(0 <= x < 2**32 for x in seeds)


def test_a_candidate_already_evaluated_is_never_handed_out_again() -> None:
    storage = optuna.storages.InMemoryStorage()
    first = _searcher(storage, seed=3)
    handed = []
    for i in range(3):
        cfg = first.suggest(f"a{i}")
        handed.append(TrialConfig.from_tune(cfg))
        first.on_trial_complete(f"a{i}", TrialReport(status="COMPLETE", step=1, objectives={"accuracy": 0.5}).to_tune())
        first.settle(f"a{i}")
    done = {c.candidate_hash: c.number for c in handed}
    # the same seed again (what a resume used to do), but the study's COMPLETE candidates are known
    rejected: list[str] = []
    again = _searcher(storage, seed=3, evaluated=dict(done), rejected=rejected)
    for i in range(4):
        cfg = again.suggest(f"b{i}")
        assert cfg is not None
        assert TrialConfig.from_tune(cfg).candidate_hash not in done
    assert rejected and all(r.startswith("not evaluated: identical to trial") for r in rejected)
    states = [t.state for t in storage.get_all_trials(storage.get_study_id_from_name("s"))]
    assert states.count(optuna.trial.TrialState.FAIL) == len(rejected)


def test_a_candidate_being_evaluated_is_not_handed_out_twice() -> None:
    searcher = _searcher(optuna.storages.InMemoryStorage(), seed=0)
    hashes = [TrialConfig.from_tune(searcher.suggest(f"t{i}")).candidate_hash for i in range(6)]
    assert len(hashes) == len(set(hashes))  # 8 possible candidates; none twice while in flight


def test_tell_waits_for_settle() -> None:
    storage = optuna.storages.InMemoryStorage()
    searcher = _searcher(storage, seed=0)
    searcher.suggest("t0")
    searcher.on_trial_complete("t0", TrialReport(status="COMPLETE", step=1, objectives={"accuracy": 0.7}).to_tune())
    trial = storage.get_all_trials(storage.get_study_id_from_name("s"))[0]
    assert trial.state == optuna.trial.TrialState.RUNNING
    searcher.settle("t0")
    trial = storage.get_all_trials(storage.get_study_id_from_name("s"))[0]
    assert trial.state == optuna.trial.TrialState.COMPLETE and trial.values == [pytest.approx(0.7)]


# --- the study's constraints reach the sampler; the GP sampler ------------------------------------------
def _complete(searcher: NASOptunaSearch, trial_id: str, status: str = "COMPLETE", **objectives: float) -> None:
    searcher.on_trial_complete(trial_id, TrialReport(status=status, step=1, objectives=objectives).to_tune())
    searcher.settle(trial_id)


def test_a_complete_trial_is_told_with_one_optuna_constraint_per_study_constraint() -> None:
    storage = optuna.storages.InMemoryStorage()
    asked: list[int] = []

    def judged(number: int) -> dict[str, float]:
        asked.append(number)
        return {"accuracy >= 0.6": -1.0 if number == 0 else 1.0, "weight_bits <= 8": 1.0}

    searcher = NASOptunaSearch(
        load_space("tiny", OVERRIDES), failed_hashes=set(), metric=["accuracy"], mode=["max"],
        sampler=make_sampler(SamplerSpec(kind="random"), 0), study_name="s", storage=storage, constraints=judged)
    for i in range(3):
        searcher.suggest(f"t{i}")
    _complete(searcher, "t0", accuracy=0.7)
    _complete(searcher, "t1", accuracy=0.5)
    _complete(searcher, "t2", status="FAIL")
    trials = storage.get_all_trials(storage.get_study_id_from_name("s"))
    assert trials[0].constraints == {"accuracy >= 0.6": -1.0, "weight_bits <= 8": 1.0}  # <= 0 is feasible
    assert trials[1].constraints == {"accuracy >= 0.6": 1.0, "weight_bits <= 8": 1.0}
    assert trials[2].state == optuna.trial.TrialState.FAIL and trials[2].constraints == {}
    assert asked == [0, 1]  # judged only once stored COMPLETE


def test_a_study_without_constraints_sets_none() -> None:
    storage = optuna.storages.InMemoryStorage()
    searcher = _searcher(storage, seed=0)
    searcher.suggest("t0")
    _complete(searcher, "t0", accuracy=0.7)
    assert storage.get_all_trials(storage.get_study_id_from_name("s"))[0].constraints == {}


def test_the_driver_judges_constraints_from_the_stored_trial(tmp_path, make_result, make_candidate) -> None:
    import pickle

    from nas.runner.driver import study_constraints
    from nas.runner.writer import StoreHandle
    from nas.spec import StudySpec
    from storage import Store, TrialCost

    spec = StudySpec(name="c", constraints=["accuracy >= 0.6", "energy_per_sample_j < 0.005"])
    store = Store.open(str(tmp_path / "nas.db"))
    handle = StoreHandle(store, "c")
    assert study_constraints(spec.model_copy(update={"constraints": []}), handle) is None
    store.create_study("c", spec.model_dump_json(), [("accuracy", "maximize"), ("energy_per_sample_j", "minimize")])
    for i, (acc, joules) in enumerate([(0.9, 1e-3), (0.5, 1e-3), (0.9, 1e-2), (0.9, None)]):
        cand = make_candidate(i)
        result = make_result(candidate=cand, accuracy=acc, energy_per_sample_j=joules)
        store.start_trial("c", i, cand)
        store.finish_trial("c", i, result, cost=TrialCost.from_result(result))
    judge = study_constraints(spec, handle)
    assert judge is not None
    feasible = {i: [v <= 0 for v in judge(i).values()] for i in range(4)}
    assert feasible == {0: [True, True], 1: [False, True], 2: [True, False], 3: [True, False]}  # missing: not met
    assert list(judge(0)) == spec.constraints
    # Tune pickles the searcher, and the searcher holds the judge (regression: a closure over the store)
    assert pickle.loads(pickle.dumps(judge))(1) == judge(1)


def test_resume_tells_optuna_a_trial_the_killed_driver_stored_but_never_told(tmp_path, make_result,
                                                                             make_candidate) -> None:
    """Regression (kill -9 between our write and Optuna's tell): our tables said COMPLETE, Optuna FAIL."""
    from optuna.storages import RDBStorage

    from nas.runner.driver import _settle_running_optuna_trials
    from nas.spec import StudySpec
    from storage import Store, TrialCost

    spec = StudySpec(name="k", constraints=["accuracy >= 0.6"])
    store = Store.open(str(tmp_path / "nas.db"))
    store.create_study("k", spec.model_dump_json(), [("accuracy", "maximize"), ("energy_per_sample_j", "minimize")])
    ot_storage = RDBStorage(store.url, engine_kwargs=store.optuna_engine_kwargs())
    study = optuna.create_study(study_name="k", storage=ot_storage, directions=["maximize", "minimize"])
    asked = [study.ask() for _ in range(3)]  # all RUNNING in Optuna, as a killed driver leaves them
    for i in (0, 1):
        store.start_trial("k", i, make_candidate(i))
    result = make_result(candidate=make_candidate(0), accuracy=0.5, energy_per_sample_j=2e-3)
    store.finish_trial("k", 0, result, cost=TrialCost.from_result(result))  # stored, never told
    store.mark_unfinished_failed("k", "interrupted")  # trial 1 died mid-run; trial 2 never started

    _settle_running_optuna_trials(ot_storage, store, spec)
    trials = optuna.load_study(study_name="k", storage=ot_storage).trials
    assert [t.number for t in trials] == [a.number for a in asked]
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "FAIL"]
    assert trials[0].values == [0.5, 2e-3]
    assert trials[0].system_attrs.get("constraints:accuracy >= 0.6") == 1.0  # told it failed the constraint
    assert trials[1].user_attrs["fail_reason"] == trials[2].user_attrs["fail_reason"]


def test_gp_sampler_settings() -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no experimental or deprecation noise
        sampler = make_sampler(SamplerSpec(kind="gp", n_startup_trials=5), 7)
    assert isinstance(sampler, optuna.samplers.GPSampler)
    assert sampler._n_startup_trials == 5 and not sampler._warn_independent_sampling
    assert isinstance(sampler._independent_sampler, optuna.samplers.RandomSampler)


def test_gp_sampler_proposes_after_its_start_up_trials_and_reads_the_constraints() -> None:
    """Two random start-up trials, then the GP (its proposals are stored as ``gp:relative_params``) over a
    define-by-run space with a conditional knob (``window`` only for local attention)."""
    storage = optuna.storages.InMemoryStorage()
    overrides = {**OVERRIDES, "attention": ["softmax", "local"], "window": [2, 8], "n_layers": [1, 2]}
    searcher = NASOptunaSearch(
        load_space("tiny", overrides), failed_hashes=set(), metric=["accuracy", "energy_per_sample_j"],
        mode=["max", "min"], sampler=make_sampler(SamplerSpec(kind="gp", n_startup_trials=2), 0), study_name="s",
        storage=storage, constraints=lambda n: {"accuracy >= 0.6": -1.0 if n % 2 else 1.0})
    hashes = []
    for i in range(4):
        cfg = TrialConfig.from_tune(searcher.suggest(f"t{i}"))
        hashes.append(cfg.candidate_hash)
        _complete(searcher, f"t{i}", accuracy=0.5 + 0.1 * cfg.candidate.n_layers,
                  energy_per_sample_j=1e-3 * cfg.candidate.d_model)
    trials = storage.get_all_trials(storage.get_study_id_from_name("s"))
    by_gp = [any(k.startswith("gp:relative_params") for k in t.system_attrs) for t in trials]
    assert by_gp == [False, False, True, True]
    assert [t.constraints["accuracy >= 0.6"] for t in trials] == [1.0, -1.0, 1.0, -1.0]
    assert len(set(hashes)) == 4


def test_a_slow_sampler_does_not_warn_about_define_by_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray warns when the define-by-run space takes over 1 s; with the GP sampler that is its model fit."""
    import warnings

    monkeypatch.setattr("ray.tune.search.optuna.optuna_search.DEFINE_BY_RUN_WARN_THRESHOLD_S", -1.0)
    searcher = _searcher(optuna.storages.InMemoryStorage(), seed=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        searcher.suggest("t0")
    assert not [w for w in caught if "Define-by-run" in str(w.message)]
