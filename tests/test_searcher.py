"""The searcher never replays: a resumed or re-run study draws new candidates, and a candidate that is
COMPLETE (or being evaluated) in the study is never handed out again."""

from __future__ import annotations

import optuna
import pytest

from nas.runner.protocol import TrialConfig, TrialReport
from nas.runner.searcher import NASOptunaSearch, make_sampler, sampler_seed
from search_spaces import load_space

OVERRIDES = {"n_layers": [1], "d_model": [16, 32], "n_heads": [2], "ffn_ratio": [1, 2],
             "attention": ["softmax", "linear"], "attention_bits": [32], "ffn_bits": [32],
             "embedding_bits": [32], "sparsity": ["none"], "max_len": 32}


def _searcher(storage: optuna.storages.BaseStorage, seed: int, evaluated: dict[str, int] | None = None,
              rejected: list[str] | None = None) -> NASOptunaSearch:
    return NASOptunaSearch(
        load_space("tiny", OVERRIDES), failed_hashes=set(), evaluated=evaluated,
        on_invalid=(lambda n, p, reason, kind: rejected.append(reason)) if rejected is not None else None,
        metric=["accuracy"], mode=["max"], sampler=make_sampler("random", seed, 2), study_name="s",
        storage=storage)


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
