"""The storage contract: every backend must pass these tests.

Subclass :class:`StorageContract` once per backend and provide a function-scoped ``db_url`` fixture that
yields the URL of a fresh, empty database (see ``test_storage.py`` for SQLite and ``test_postgres.py``
for PostgreSQL). The class name does not start with ``Test`` so pytest collects it only through its
subclasses.
"""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import MetaData, Table, create_engine, inspect, select, text, update

import storage.schema as schema_module
import storage.store as store_module
from nas.config import Candidate
from nas.errors import ConfigError, StorageError
from nas.records import FailKind, TrialResult
from nas.reference import TeacherReference
from storage import FILTER_NAMES, Store, TrialCost, candidate_hash
from storage.models import VERSION_TABLE, Base, StudyRow

ROOT = Path(__file__).resolve().parents[1]
OBJ2 = [("accuracy", "maximize"), ("energy_per_sample_j", "minimize")]
OBJ3 = [*OBJ2, ("latency_p50_ms", "minimize")]
COST = TrialCost(train_energy_j=10.0, measure_energy_j=2.0, co2eq_g=0.5, wall_s=30.0, gpu_s=15.0,
                 meter="nvml-counter", is_estimate=False)

MakeResult = Callable[..., TrialResult]
MakeCandidate = Callable[..., Candidate]
MakeTeacher = Callable[..., TeacherReference]


def _scored(result: TrialResult, *, majority: float | None = None, test_accuracy: float | None = None,
            test_macro_f1: float | None = None) -> TrialResult:
    """``result`` with a dev majority-class rate and test numbers in its metrics."""
    assert result.metrics is not None
    metrics = dataclasses.replace(result.metrics, majority_accuracy=majority, test_accuracy=test_accuracy,
                                  test_macro_f1=test_macro_f1, n_test_examples=None if test_accuracy is None else 100)
    return dataclasses.replace(result, metrics=metrics)


#: The noise of every fake reading (tests/conftest.py's fake_trial_result): CV 0.02 over 3 windows.
FAKE_CV, FAKE_WINDOWS = 0.02, 3


def _brute_front(points: list[tuple[int, list[float | None]]], objectives: list[tuple[str, str]]) -> set[int]:
    """Trial numbers on the noise-aware front, by definition (O(N^2)); rows with None never qualify.

    A point is off the front only when another is better for sure: its worst case (J/sample plus 1.96
    standard errors of a fake reading) no worse than this one's best case everywhere, and better somewhere.
    """
    def bounds(p: list[float]) -> tuple[list[float], list[float]]:
        w = [1.96 * FAKE_CV * abs(v) / math.sqrt(FAKE_WINDOWS) if name.startswith("energy_per_sample") else 0.0
             for (name, _), v in zip(objectives, p, strict=True)]
        signed = [(-v if d == "maximize" else v) for (_, d), v in zip(objectives, p, strict=True)]
        return [v - x for v, x in zip(signed, w, strict=True)], [v + x for v, x in zip(signed, w, strict=True)]

    valid = [(n, bounds([float(v) for v in p])) for n, p in points
             if all(v is not None and not math.isnan(v) for v in p)]
    front = set()
    for n, (lo, _) in valid:
        dominated = any(all(a <= b for a, b in zip(hi, lo, strict=True)) and any(a < b for a, b in zip(hi, lo, strict=True))
                        for m, (_, hi) in valid if m != n)
        if not dominated:
            front.add(n)
    return front


class StorageContract:
    """Backend-independent behaviour of :class:`storage.Store`."""

    # -- hooks -----------------------------------------------------------------------------------
    @pytest.fixture
    def db_url(self) -> Iterator[str]:
        """Override: yield the URL of a fresh, empty database."""
        raise NotImplementedError("a backend test class must provide a db_url fixture")

    @pytest.fixture
    def store(self, db_url: str) -> Iterator[Store]:
        s = Store.open(db_url)
        yield s
        s.close()

    # -- helpers ---------------------------------------------------------------------------------
    @staticmethod
    def _study(store: Store, name: str = "s", objectives: list[tuple[str, str]] = OBJ2) -> None:
        store.create_study(name, json.dumps({"task": "builtin:parity"}), objectives)

    # -- studies ---------------------------------------------------------------------------------
    def test_create_get_list_studies(self, store: Store) -> None:
        info = store.create_study("alpha", '{"a": 1}', OBJ2, optuna_study_id=7, budget_energy_j=1e6)
        store.create_study("beta", "{}", OBJ3)
        assert info.name == "alpha" and info.status == "RUNNING" and info.optuna_study_id == 7
        assert info.objectives == tuple(OBJ2)
        assert info.objectives_key == "accuracy:maximize,energy_per_sample_j:minimize"
        assert info.budget_energy_j == 1e6 and info.total_energy_j == 0.0
        assert info.created_utc.tzinfo is not None
        got = store.get_study("alpha")
        assert got.spec == {"a": 1} and got.created_utc == info.created_utc
        assert [s.name for s in store.list_studies()] == ["alpha", "beta"]
        store.set_study_status("alpha", "COMPLETE")
        assert store.get_study("alpha").status == "COMPLETE"
        with pytest.raises(ConfigError, match="RUNNING"):
            store.set_study_status("alpha", "DONE")

    def test_duplicate_study_and_exist_ok(self, store: Store) -> None:
        self._study(store, "a")
        with pytest.raises(StorageError, match="already exists"):
            self._study(store, "a")
        again = store.create_study("a", "{}", OBJ2, exist_ok=True, optuna_study_id=3)
        assert again.optuna_study_id == 3
        with pytest.raises(StorageError, match="objectives"):
            store.create_study("a", "{}", OBJ3, exist_ok=True)

    def test_unknown_study_error_text(self, store: Store) -> None:
        with pytest.raises(StorageError) as err:
            store.get_study("nope")
        assert "unknown study 'nope'; run `nas studies` to list them" in str(err.value)
        with pytest.raises(StorageError, match="unknown study 'nope'"):
            store.trials("nope")

    def test_bad_objectives_and_spec(self, store: Store) -> None:
        with pytest.raises(ConfigError, match="allowed: accuracy"):
            store.create_study("a", "{}", [("acuracy", "maximize")])
        with pytest.raises(ConfigError, match="maximize"):
            store.create_study("a", "{}", [("accuracy", "up")])
        with pytest.raises(ConfigError, match="spec_json"):
            store.create_study("a", "not json", OBJ2)
        assert store.list_studies() == []

    # -- trials ----------------------------------------------------------------------------------
    def test_start_and_finish_round_trip(
        self, store: Store, make_result: MakeResult, make_candidate: MakeCandidate
    ) -> None:
        self._study(store)
        cand = make_candidate(3, quant={"ffn_bits": 8})
        store.start_trial("s", 0, cand, optuna_trial_id=11)
        running = store.trial("s", 0)
        assert running.state == "RUNNING" and running.candidate == cand and running.result is None
        assert running.candidate_hash == candidate_hash(cand)
        result = make_result(candidate=cand, accuracy=0.91, energy_per_sample_j=2e-3)
        store.finish_trial("s", 0, result, cost=COST)

        view = store.trial("s", 0)
        assert view.state == "COMPLETE" and view.optuna_trial_id == 11
        assert view.result == result
        assert view.cost == COST
        assert view.hardware_fingerprint == "NVIDIA H100 80GB HBM3"
        assert view.started_utc is not None and view.finished_utc is not None
        assert view.finished_utc >= view.started_utc
        values = view.values()
        assert set(values) == set(FILTER_NAMES)
        assert set(result.objectives()) <= set(values) and set(cand.flat()) <= set(values)
        for k, v in result.objectives().items():
            assert values[k] == pytest.approx(v) if v is not None else values[k] is None
        assert values["weight_bits"] == 8 and values["attention"] == "softmax"
        assert values["meter"] == "nvml-counter" and values["is_estimate"] is False

        kinds = {r.kind: r for r in store.readings("s", 0)}
        assert set(kinds) == {"inference:eager", "train"}
        inf = kinds["inference:eager"]
        assert inf.exclusive and inf.energy_per_sample_j == pytest.approx(2e-3)
        assert inf.provenance is not None and inf.provenance["device_name"] == "NVIDIA H100 80GB HBM3"
        assert kinds["train"].energy_j == pytest.approx(5.0)

        info = store.get_study("s")
        assert info.n_trials_complete == 1
        assert info.train_energy_j == pytest.approx(10.0) and info.measure_energy_j == pytest.approx(2.0)
        assert info.co2eq_g == pytest.approx(0.5) and info.gpu_s == pytest.approx(15.0)
        assert info.total_energy_j == pytest.approx(12.0) and not info.cost_includes_estimate

    def test_trial_state_rules(self, store: Store, make_result: MakeResult, make_candidate: MakeCandidate) -> None:
        self._study(store)
        store.start_trial("s", 0, make_candidate(0))
        with pytest.raises(StorageError, match="already recorded"):
            store.start_trial("s", 0, make_candidate(0))
        with pytest.raises(StorageError, match="another candidate"):
            store.finish_trial("s", 0, make_result(candidate=make_candidate(1)), cost=COST)
        store.finish_trial("s", 0, make_result(candidate=make_candidate(0)), cost=COST)
        with pytest.raises(StorageError, match="already COMPLETE"):
            store.finish_trial("s", 0, make_result(candidate=make_candidate(0)), cost=COST)
        with pytest.raises(StorageError, match="already COMPLETE"):
            store.fail_trial("s", 0, "late")
        with pytest.raises(StorageError, match="has no trial 5"):
            store.trial("s", 5)
        # finishing a trial that was never started records it in one go
        store.finish_trial("s", 1, make_result(candidate=make_candidate(1)), cost=COST)
        assert [t.number for t in store.trials("s")] == [0, 1]
        assert store.get_study("s").train_energy_j == pytest.approx(20.0)

    def test_shared_device_energy_is_refused(self, store: Store, make_result: MakeResult) -> None:
        self._study(store)
        with pytest.raises(StorageError, match="exclusive"):
            store.finish_trial("s", 0, make_result(exclusive=False), cost=COST)
        assert store.trials("s") == []  # nothing half-written

    def test_fail_trial_and_failed_hashes(
        self, store: Store, make_result: MakeResult, make_candidate: MakeCandidate
    ) -> None:
        self._study(store)
        c0, c1, c2, c3 = (make_candidate(i) for i in range(4))
        store.start_trial("s", 0, c0)
        store.fail_trial("s", 0, "CUDA out of memory", cost=TrialCost(train_energy_j=1.0, meter="estimate",
                                                                      is_estimate=True))
        store.fail_trial("s", 1, "invalid shapes", candidate=c1)  # never started
        store.start_trial("s", 2, c2)
        store.fail_trial("s", 2, "preempted", kind=FailKind.INTERRUPTED)
        store.finish_trial("s", 3, make_result(candidate=c3, status="FAIL", error="NaN loss at step 4"),
                           cost=COST)
        store.fail_trial("s", 4, "no candidate at all")
        store.fail_trial("s", 5, "invalid candidate: heads", kind=FailKind.INVALID)
        store.fail_trial("s", 6, "not evaluated: a repeat", kind=FailKind.NOT_EVALUATED)
        store.start_trial("s", 7, make_candidate(7))
        store.finish_trial("s", 7, make_result(candidate=make_candidate(7), status="FAIL", error="shared device"),
                           cost=COST, fail_kind=FailKind.DEVICE)

        assert store.failed_candidate_hashes("s") == {candidate_hash(c) for c in (c0, c1, c3)}
        failed = store.trials("s", states=["FAIL"])
        assert [t.number for t in failed] == [0, 1, 2, 3, 4, 5, 6, 7]
        assert failed[0].fail_reason == "CUDA out of memory" and not failed[0].retryable
        assert failed[2].retryable and failed[3].fail_reason == "NaN loss at step 4"
        assert failed[4].candidate is None
        assert [t.fail_kind for t in failed] == [FailKind.CANDIDATE, FailKind.CANDIDATE, FailKind.INTERRUPTED,
                                                 FailKind.CANDIDATE, FailKind.CANDIDATE, FailKind.INVALID,
                                                 FailKind.NOT_EVALUATED, FailKind.DEVICE]
        assert [t.number for t in failed if t.spends_budget] == [0, 1, 3, 4]
        assert failed[7].retryable and not failed[5].retryable
        info = store.get_study("s")
        assert info.n_trials_failed == 8 and info.cost_includes_estimate
        assert info.train_energy_j == pytest.approx(21.0)
        assert store.persisted_front("s") == [] and store.front("s") == []
        with pytest.raises(ConfigError, match="unknown trial state"):
            store.trials("s", states=["DONE"])

    def test_mark_unfinished_failed(self, store: Store, make_result: MakeResult, make_candidate: MakeCandidate) -> None:
        self._study(store)
        for i in range(4):
            store.start_trial("s", i, make_candidate(i))
        store.finish_trial("s", 1, make_result(candidate=make_candidate(1)), cost=COST)
        assert store.mark_unfinished_failed("s", "driver restarted") == [0, 2, 3]
        assert store.mark_unfinished_failed("s", "again") == []
        t = store.trial("s", 2)
        assert t.state == "FAIL" and t.fail_reason == "driver restarted" and t.retryable
        assert t.fail_kind is FailKind.INTERRUPTED and not t.spends_budget
        assert store.failed_candidate_hashes("s") == set()  # interrupted, not the candidate's fault
        assert store.get_study("s").n_trials_failed == 3

    def test_prune_and_cost_from_result(
        self, store: Store, make_result: MakeResult, make_candidate: MakeCandidate
    ) -> None:
        self._study(store)
        store.start_trial("s", 0, make_candidate(0))
        store.prune_trial("s", 0, "stopped by ASHA at step 100", wall_s=4.0)
        t = store.trial("s", 0)
        assert t.state == "PRUNED" and t.fail_reason == "stopped by ASHA at step 100" and t.result is None
        result = make_result(candidate=make_candidate(1))
        cost = TrialCost.from_result(result, wall_s=9.0, gpu_s=4.5)
        # 1e-3 J/sample x (1000/2 samples/s x 3 windows x 1 s)
        assert cost.measure_energy_j == pytest.approx(1.5) and cost.train_energy_j == pytest.approx(5.0)
        assert cost.meter == "nvml-counter" and not cost.is_estimate and cost.total_energy_j == pytest.approx(6.5)
        store.finish_trial("s", 1, result, cost=cost)
        store.finish_trial("s", 2, make_result(candidate=make_candidate(2), status="PRUNED"), cost=cost)
        info = store.get_study("s")
        assert (info.n_trials_pruned, info.n_trials_complete) == (2, 1)
        assert info.wall_s == pytest.approx(22.0) and info.total_energy_j == pytest.approx(13.0)
        assert [t.number for t in store.front("s")] == [1]
        estimate = TrialCost.from_result(make_result(meter="estimate", is_estimate=True))
        assert estimate.is_estimate and estimate.meter == "estimate"

    # -- rungs -----------------------------------------------------------------------------------
    def test_rungs_are_stored_as_they_arrive_whatever_the_end(
        self, store: Store, make_result: MakeResult, make_candidate: MakeCandidate
    ) -> None:
        self._study(store)
        for n, acc in enumerate([0.6, 0.7, 0.8]):
            store.start_trial("s", n, make_candidate(n))
            store.record_rung("s", n, 100, acc)
        store.record_rung("s", 0, 200, 0.70)
        store.record_rung("s", 0, 200, 0.72)  # the same rung again: replaced, not doubled
        store.prune_trial("s", 0, "stopped by ASHA at step 200 (rung accuracy 0.7200)")
        store.fail_trial("s", 1, "worker error: killed")  # its worker died after its first rung
        store.record_rung("s", 2, 200, 0.75)
        result = dataclasses.replace(make_result(candidate=make_candidate(2)), train=dataclasses.replace(
            make_result().train, rung_accuracies=((100, 0.7), (200, 0.75), (300, 0.77))))
        store.finish_trial("s", 2, result, cost=COST)  # the result's rungs join those already stored
        by_number = {t.number: t for t in store.trials("s")}
        assert by_number[0].state == "PRUNED" and by_number[0].rung_accuracies == ((100, 0.6), (200, 0.72))
        assert by_number[1].state == "FAIL" and by_number[1].rung_accuracies == ((100, 0.7),)
        assert by_number[2].rung_accuracies == ((100, 0.7), (200, 0.75), (300, 0.77))
        assert store.trial("s", 0).rung_accuracies == by_number[0].rung_accuracies
        assert [t.rung_accuracies for t in store.front("s")] == [by_number[2].rung_accuracies]
        # a trial that was never started gets its result's rungs in one go
        store.finish_trial("s", 3, make_result(candidate=make_candidate(3)), cost=COST)
        assert store.trial("s", 3).rung_accuracies == ((5, 0.6), (10, 0.7))

    def test_rung_rules(self, store: Store, make_candidate: MakeCandidate) -> None:
        self._study(store)
        store.start_trial("s", 0, make_candidate(0))
        for step, acc in [(0, 0.5), (-100, 0.5), (100, 1.5), (100, -0.1), (100, math.nan)]:
            with pytest.raises(ConfigError):
                store.record_rung("s", 0, step, acc)
        with pytest.raises(StorageError, match="has no trial 9"):
            store.record_rung("s", 9, 100, 0.5)
        with pytest.raises(StorageError, match="unknown study"):
            store.record_rung("nosuch", 0, 100, 0.5)
        store.prune_trial("s", 0, "stopped")
        with pytest.raises(StorageError, match="already PRUNED"):
            store.record_rung("s", 0, 100, 0.5)
        assert store.trial("s", 0).rung_accuracies == ()

    def test_update_study_spec(self, store: Store) -> None:
        store.create_study("s", '{"v": 1}', OBJ2, budget_trials=10, budget_energy_j=5.0)
        info = store.update_study_spec("s", '{"v": 2}', budget_trials=20)
        assert info.spec == {"v": 2} and info.budget_trials == 20 and info.budget_energy_j == 5.0
        assert store.get_study("s").budget_trials == 20
        with pytest.raises(ConfigError, match="spec_json"):
            store.update_study_spec("s", "{")

    def test_nan_and_missing_values(self, store: Store, make_result: MakeResult, make_candidate: MakeCandidate) -> None:
        self._study(store)
        store.finish_trial("s", 0, make_result(candidate=make_candidate(0), energy_per_sample_j=float("nan")),
                           cost=COST)
        store.finish_trial("s", 1, make_result(candidate=make_candidate(1), hardware=None), cost=COST)
        v0, v1 = store.trial("s", 0).values(), store.trial("s", 1).values()
        assert v0["energy_per_sample_j"] is None
        assert v1["hardware"] == "unknown" and v1["energy_per_sample_j"] is None and v1["meter"] is None
        assert store.front("s") == []  # neither has both objectives

    def test_artefacts(self, store: Store, make_result: MakeResult, make_candidate: MakeCandidate,
                       tmp_path: Path) -> None:
        self._study(store)
        weights = tmp_path / "w.safetensors"
        weights.write_bytes(b"x" * 10)
        store.finish_trial("s", 0, make_result(candidate=make_candidate(0), weights_path=str(weights)), cost=COST)
        store.add_artefact("s", 0, "onnx", tmp_path / "m.onnx", sha256="ab" * 32, size_bytes=99)
        arts = store.artefacts("s")
        assert [(a.kind, a.size_bytes) for a in arts] == [("weights", 10), ("onnx", 99)]
        assert store.artefacts("s", 0) == arts and store.artefacts("s", 1) == []
        with pytest.raises(StorageError, match="unknown trial 3"):
            store.add_artefact("s", 3, "onnx", "x")

    # -- fronts ----------------------------------------------------------------------------------
    @pytest.mark.parametrize("objectives", [OBJ2, OBJ3], ids=["2d", "3d"])
    def test_persisted_front_equals_recomputed_and_brute_force(
        self, store: Store, make_result: MakeResult, make_candidate: MakeCandidate,
        objectives: list[tuple[str, str]],
    ) -> None:
        self._study(store, objectives=objectives)
        rng = np.random.default_rng(len(objectives))
        points: dict[str, list[tuple[int, list[float | None]]]] = {"GPU-A": [], "GPU-B": []}
        for i in range(36):
            hw = "GPU-A" if rng.random() < 0.6 else "GPU-B"
            # coarse values make ties and exact duplicates likely
            acc = float(rng.integers(5, 10)) / 10
            energy = None if rng.random() < 0.08 else float(rng.integers(1, 6)) * 1e-3
            lat = float(rng.integers(1, 5))
            r = make_result(candidate=make_candidate(i), accuracy=acc, energy_per_sample_j=energy,
                            latency_p50_ms=lat, hardware=hw)
            store.start_trial("s", i, r.candidate)
            if rng.random() < 0.1:
                store.fail_trial("s", i, "oom")
                continue
            store.finish_trial("s", i, r, cost=COST)
            objs = r.objectives()
            points[hw].append((i, [objs[m] for m, _ in objectives]))
            if i % 6 == 5 or i == 35:
                persisted = store.persisted_front("s")
                recomputed = store.front("s")
                assert [(e.hardware_fingerprint, e.trial_number) for e in persisted] == [
                    (t.hardware_fingerprint, t.number) for t in recomputed]
                for hw_name, pts in points.items():
                    got = {e.trial_number for e in persisted if e.hardware_fingerprint == hw_name}
                    assert got == _brute_front(pts, objectives), hw_name
        entries = store.persisted_front("s", hardware="GPU-A")
        assert [e.position for e in entries] == list(range(len(entries)))
        firsts = [e.values["accuracy"] for e in entries]
        assert firsts == sorted(firsts, reverse=True)  # best first objective first
        assert all(e.objectives_key == store.get_study("s").objectives_key for e in entries)
        assert store.hardware_fingerprints("s") == ["GPU-A", "GPU-B"]
        assert {t.number for t in store.front("s", hardware="GPU-B")} == _brute_front(points["GPU-B"], objectives)
        before = [(e.hardware_fingerprint, e.trial_number, e.position) for e in store.persisted_front("s")]
        store.rebuild_front("s")
        assert [(e.hardware_fingerprint, e.trial_number, e.position) for e in store.persisted_front("s")] == before

    def test_remeasured_readings_give_a_second_machines_front_and_twice_adds_nothing(
        self, store: Store, make_result: MakeResult, make_candidate: MakeCandidate,
    ) -> None:
        """nas remeasure: readings of another machine stand beside the trial's own, on that machine's front."""
        self._study(store)
        energies = {0: 1e-3, 1: 2e-3, 2: 3e-3, 3: 4e-3}
        accuracies = {0: 0.6, 1: 0.7, 2: 0.8, 3: 0.9}  # on CPU-A every trial is on the front
        for i in energies:
            r = make_result(candidate=make_candidate(i), accuracy=accuracies[i], energy_per_sample_j=energies[i],
                            hardware="CPU-A")
            store.start_trial("s", i, r.candidate)
            store.finish_trial("s", i, r, cost=COST)
        # on GPU-B, trial 2 turns out cheaper than trial 1 (which then falls off); trial 3 is not re-measured
        again = {0: 5e-4, 1: 9e-4, 2: 8e-4}
        for i, e in again.items():
            inf = make_result(energy_per_sample_j=e, latency_p50_ms=0.5 + i, hardware="GPU-B").inference
            assert inf is not None
            assert store.add_remeasurement("s", i, [inf]) == [inf.serving_form]
        assert store.hardware_fingerprints("s") == ["CPU-A", "GPU-B"]
        own = store.front("s", hardware="CPU-A")
        assert [t.number for t in own] == [3, 2, 1, 0] and not any(t.remeasured for t in own)
        there = store.front("s", hardware="GPU-B")
        assert [t.number for t in there] == [2, 0]
        assert all(t.remeasured and t.hardware_fingerprint == "GPU-B" for t in there)
        assert [t.flat["energy_per_sample_j"] for t in there] == [8e-4, 5e-4]
        assert [t.result.inference.latency_p50_ms for t in there if t.result and t.result.inference] == [2.5, 0.5]
        assert [t.flat["accuracy"] for t in there] == [0.8, 0.6]  # accuracy is the trial's own
        persisted = store.persisted_front("s")
        assert [(e.hardware_fingerprint, e.trial_number) for e in persisted] == [
            (t.hardware_fingerprint, t.number) for t in store.front("s")]
        readings = store.readings("s", 2)
        assert [(r.origin, r.hardware_fingerprint) for r in readings if r.kind.startswith("inference")] == [
            (None, "CPU-A"), ("remeasure", "GPU-B")]
        # twice: nothing new, nothing lost
        inf = make_result(energy_per_sample_j=1e-9, hardware="GPU-B").inference
        assert inf is not None
        assert store.add_remeasurement("s", 2, [inf]) == []
        assert store.measured_forms("s", 2, "GPU-B") == {inf.serving_form}
        assert len(store.readings("s", 2)) == len(readings)
        assert [t.flat["energy_per_sample_j"] for t in store.front("s", hardware="GPU-B")] == [8e-4, 5e-4]
        store.rebuild_front("s")
        assert [(e.hardware_fingerprint, e.trial_number) for e in store.persisted_front("s")] == [
            (e.hardware_fingerprint, e.trial_number) for e in persisted]
        # a later trial of the search itself still updates its own machine's front incrementally
        r = make_result(candidate=make_candidate(9), accuracy=0.95, energy_per_sample_j=5e-3, hardware="CPU-A")
        store.start_trial("s", 9, r.candidate)
        store.finish_trial("s", 9, r, cost=COST)
        assert [e.trial_number for e in store.persisted_front("s", hardware="CPU-A")] == [9, 3, 2, 1, 0]
        assert [e.trial_number for e in store.persisted_front("s", hardware="GPU-B")] == [2, 0]
        with pytest.raises(StorageError, match="only COMPLETE"):
            store.add_remeasurement("s", 42, [inf])

    def test_a_tie_reading_becomes_the_reading_of_record_counts_in_the_cost_and_settles_the_front(
        self, store: Store, make_result: MakeResult, make_candidate: MakeCandidate,
    ) -> None:
        """front.ties: a tied member measured again with more windows; the old reading stays, the front moves."""
        self._study(store)
        for i, e in {0: 1.00e-3, 1: 1.01e-3}.items():  # 1% apart, CV 2% over 3 windows: tied
            r = make_result(candidate=make_candidate(i), accuracy=0.8, energy_per_sample_j=e, hardware="CPU-A")
            store.start_trial("s", i, r.candidate)
            store.finish_trial("s", i, r, cost=COST)
        assert [(t.number, t.noise) for t in store.front("s")] == [(0, "tied"), (1, "tied")]
        before = store.get_study("s")
        inf = make_result(energy_per_sample_j=1.05e-3, hardware="CPU-A").inference
        assert inf is not None
        inf = dataclasses.replace(inf, n_windows=12, cv=0.01, protocol_energy_j=3.0, protocol_co2eq_g=0.25,
                                  provenance=dataclasses.replace(inf.provenance, n_windows=12, tie_break=True))
        store.add_tie_reading("s", 1, inf)
        # 1.05e-3 +- 0.6% is beyond 1.00e-3 +- 2.3%: trial 0 now surely dominates trial 1, and is clear
        assert [(t.number, t.noise) for t in store.front("s")] == [(0, "clear")]
        assert [e.trial_number for e in store.persisted_front("s")] == [0]
        one = store.trials("s")[1]
        assert one.flat["energy_per_sample_j"] == 1.05e-3
        assert one.result is not None and one.result.inference is not None
        assert one.result.inference.n_windows == 12 and one.result.inference.provenance.tie_break
        assert [(r.origin, r.provenance.get("n_windows")) for r in store.readings("s", 1)
                if r.kind.startswith("inference")] == [(None, 3), ("tie_break", 12)]
        after = store.get_study("s")
        assert after.measure_energy_j == pytest.approx((before.measure_energy_j or 0) + 3.0)
        assert after.co2eq_g == pytest.approx((before.co2eq_g or 0) + 0.25)
        other = dataclasses.replace(inf, provenance=dataclasses.replace(inf.provenance, device_name="GPU-B"))
        with pytest.raises(StorageError, match="own form on its own machine"):
            store.add_tie_reading("s", 0, other)
        with pytest.raises(StorageError, match="missing"):
            store.add_tie_reading("s", 42, inf)

    def test_front_where_filters_before_the_front(
        self, store: Store, make_result: MakeResult, make_candidate: MakeCandidate
    ) -> None:
        self._study(store)
        # trial 0 (32-bit) dominates trial 1 (8-bit); under "weight_bits <= 8" trial 1 is on the front.
        store.finish_trial("s", 0, make_result(candidate=make_candidate(0), accuracy=0.9,
                                               energy_per_sample_j=1e-3), cost=COST)
        store.finish_trial("s", 1, make_result(candidate=make_candidate(1, quant={"ffn_bits": 8}),
                                               accuracy=0.8, energy_per_sample_j=2e-3), cost=COST)
        store.finish_trial("s", 2, make_result(candidate=make_candidate(2, attention={"kind": "linear"}),
                                               accuracy=0.85, energy_per_sample_j=0.5e-3, meter="estimate",
                                               is_estimate=True), cost=COST)
        assert [t.number for t in store.front("s")] == [0, 2]
        assert [t.number for t in store.front("s", where="weight_bits <= 8")] == [1]
        assert [t.number for t in store.front("s", where='attention in ("linear", "local")')] == [2]
        assert [t.number for t in store.front("s", where="not is_estimate")] == [0]
        with pytest.raises(ConfigError, match="allowed names"):
            store.front("s", where="bits < 3")

    def test_test_metrics_are_stored_shown_and_filterable(
        self, store: Store, make_result: MakeResult, make_candidate: MakeCandidate
    ) -> None:
        self._study(store)
        r0 = _scored(make_result(candidate=make_candidate(0), accuracy=0.9), majority=0.5, test_accuracy=0.84,
                     test_macro_f1=0.83)
        store.finish_trial("s", 0, r0, cost=COST)
        store.finish_trial("s", 1, make_result(candidate=make_candidate(1), accuracy=0.8, energy_per_sample_j=0.5e-3),
                           cost=COST)  # a result without test numbers
        view = store.trial("s", 0)
        assert view.result == r0
        v = view.values()
        assert (v["test_accuracy"], v["test_macro_f1"], v["majority_accuracy"]) == (0.84, 0.83, 0.5)
        assert {"test_accuracy", "test_macro_f1", "majority_accuracy"} <= set(FILTER_NAMES)
        assert store.trial("s", 1).values()["test_accuracy"] is None
        assert [t.number for t in store.front("s", where="test_accuracy > 0.8")] == [0]
        assert [t.number for t in store.front("s")] == [0, 1]
        with store.session() as s:  # plain SQL sees the columns
            row = s.execute(text("SELECT accuracy, test_accuracy, test_macro_f1, majority_accuracy FROM nas_trials "
                                 "WHERE trial_number = 0")).one()
        assert tuple(row) == (0.9, 0.84, 0.83, 0.5)
        with pytest.raises(ConfigError, match="unknown metric"):  # nothing may select on test
            store.create_study("t", "{}", [("test_accuracy", "maximize")])

    def test_chance_level_trials_are_kept_off_the_front(
        self, store: Store, make_result: MakeResult, make_candidate: MakeCandidate
    ) -> None:
        self._study(store)
        # 0: chance level on a balanced task and the cheapest; 1: below chance; 2 and 3: real trade-offs
        for i, (acc, energy) in enumerate([(0.5, 0.2e-3), (0.45, 0.1e-3), (0.9, 2e-3), (0.7, 1e-3)]):
            store.finish_trial("s", i, _scored(make_result(candidate=make_candidate(i), accuracy=acc,
                                                           energy_per_sample_j=energy), majority=0.5), cost=COST)
        assert [t.number for t in store.front("s")] == [2, 3]
        assert [e.trial_number for e in store.persisted_front("s")] == [2, 3]
        assert [t.number for t in store.trivial_trials("s")] == [0, 1]
        assert [t.number for t in store.trivial_trials("s", where="energy_per_sample_j > 0.15e-3")] == [0]
        assert [t.number for t in store.front("s", include_trivial=True)] == [2, 3, 0, 1]
        # the persisted front follows the study setting: turning it off (or on) rebuilds it
        store.update_study_spec("s", json.dumps({"task": "builtin:parity", "front": {"require_above_majority": False}}))
        assert not store.get_study("s").require_above_majority
        assert [e.trial_number for e in store.persisted_front("s")] == [2, 3, 0, 1]
        assert [t.number for t in store.front("s")] == [2, 3, 0, 1] and store.trivial_trials("s") == []
        store.finish_trial("s", 4, _scored(make_result(candidate=make_candidate(4), accuracy=0.5,
                                                       energy_per_sample_j=0.05e-3), majority=0.5), cost=COST)
        assert [e.trial_number for e in store.persisted_front("s")] == [2, 3, 4]  # 4 dominates 0 and 1
        store.update_study_spec("s", json.dumps({"task": "builtin:parity"}))
        assert [e.trial_number for e in store.persisted_front("s")] == [2, 3]
        store.finish_trial("s", 5, _scored(make_result(candidate=make_candidate(5), accuracy=0.5,
                                                       energy_per_sample_j=0.01e-3), majority=0.5), cost=COST)
        assert [e.trial_number for e in store.persisted_front("s")] == [2, 3]  # a new chance-level trial stays out

    def test_persisted_front_with_majority_rule_equals_recomputed_and_brute_force(
        self, store: Store, make_result: MakeResult, make_candidate: MakeCandidate
    ) -> None:
        self._study(store)
        rng = np.random.default_rng(7)
        eligible: list[tuple[int, list[float | None]]] = []
        trivial: set[int] = set()
        for i in range(40):
            acc = float(rng.integers(4, 10)) / 10
            # per-trial rates (as if tasks differed), so a trivial trial may dominate an eligible one
            majority = [None, 0.5, 0.6, 0.7][int(rng.integers(0, 4))]
            r = _scored(make_result(candidate=make_candidate(i), accuracy=acc,
                                    energy_per_sample_j=float(rng.integers(1, 6)) * 1e-3), majority=majority)
            store.finish_trial("s", i, r, cost=COST)
            if majority is None or acc > majority:
                eligible.append((i, [acc, r.energy_per_sample_j]))
            else:
                trivial.add(i)
            if i % 5 == 4:
                persisted = [e.trial_number for e in store.persisted_front("s")]
                assert persisted == [t.number for t in store.front("s")]
                assert set(persisted) == _brute_front(eligible, OBJ2)
        assert trivial and {t.number for t in store.trivial_trials("s")} == trivial
        before = [(e.trial_number, e.position) for e in store.persisted_front("s")]
        store.rebuild_front("s")
        assert [(e.trial_number, e.position) for e in store.persisted_front("s")] == before

    # -- the teacher reference -------------------------------------------------------------------
    def test_teacher_reference_round_trip(self, store: Store, make_teacher: MakeTeacher) -> None:
        self._study(store, "s")
        assert store.teacher_reference("s") is None
        before = store.get_study("s").updated_utc
        ref = make_teacher()
        store.put_teacher_reference("s", ref)
        assert store.teacher_reference("s") == ref
        assert store.get_study("s").updated_utc > before  # cached readers (the dashboard) see the change
        with pytest.raises(StorageError, match="unknown study"):
            store.put_teacher_reference("nope", ref)
        with pytest.raises(StorageError, match="unknown study"):
            store.teacher_reference("nope")

    def test_teacher_cost_counts_once_in_the_study_cost(
        self, store: Store, make_result: MakeResult, make_candidate: MakeCandidate, make_teacher: MakeTeacher
    ) -> None:
        self._study(store, "s")
        store.finish_trial("s", 0, make_result(candidate=make_candidate(0)), cost=COST)
        trials_only = store.get_study("s")
        assert trials_only.total_energy_j == pytest.approx(12.0) and trials_only.teacher_energy_j is None
        ref = make_teacher(fine_tune_j=400.0, cache_build_j=50.0, protocol_energy_j=30.0)
        assert ref.search_cost_j == pytest.approx(480.0)
        for _ in range(3):  # a resumed study stores its teacher again: replaced, never added
            store.put_teacher_reference("s", ref)
        info = store.get_study("s")
        assert info.total_energy_j == pytest.approx(12.0 + 480.0)
        assert info.train_energy_j == pytest.approx(10.0 + 450.0) and info.measure_energy_j == pytest.approx(32.0)
        assert info.teacher_energy_j == pytest.approx(480.0)
        assert info.co2eq_g == pytest.approx(0.5 + 480.0 * 1e-4)
        assert not info.cost_includes_estimate
        # a cached teacher (fine-tuned by another study) costs this one its measurement only
        store.put_teacher_reference("s", make_teacher(fine_tune_j=None, cache_build_j=None, is_estimate=True,
                                                      meter="estimate"))
        info = store.get_study("s")
        assert info.total_energy_j == pytest.approx(12.0 + 30.0) and info.cost_includes_estimate
        assert [i.total_energy_j for i in store.list_studies()] == [pytest.approx(42.0)]

    def test_teacher_measured_on_a_shared_device_is_refused(self, store: Store, make_teacher: MakeTeacher) -> None:
        self._study(store, "s")
        ref = make_teacher()
        assert ref.result.inference is not None
        shared = dataclasses.replace(ref, result=dataclasses.replace(
            ref.result, inference=dataclasses.replace(ref.result.inference, exclusive=False)))
        with pytest.raises(StorageError, match="shared the device"):
            store.put_teacher_reference("s", shared)
        assert store.teacher_reference("s") is None

    def test_migration_0004_adds_teacher_references_to_a_0003_database(
        self, db_url: str, make_result: MakeResult, make_teacher: MakeTeacher
    ) -> None:
        assert Store.upgrade(db_url, "0003") == "0003"
        engine = create_engine(store_module.normalize_url(db_url))
        now = datetime.now(timezone.utc)
        try:
            with engine.begin() as conn:
                assert "nas_teacher_references" not in inspect(conn).get_table_names()
                meta = MetaData()
                studies, trials = (Table(n, meta, autoload_with=conn) for n in ("nas_studies", "nas_trials"))
                sid = conn.execute(studies.insert().values(
                    name="old", spec_json="{}", objectives_json=json.dumps([list(o) for o in OBJ2]),
                    status="COMPLETE", created_utc=now, updated_utc=now)).inserted_primary_key[0]
                conn.execute(trials.insert().values(
                    study_id=sid, trial_number=0, state="COMPLETE", cost_train_energy_j=7.0,
                    cost_measure_energy_j=1.0, cost_meter="nvml-counter", cost_is_estimate=False, started_utc=now))
            with pytest.raises(StorageError, match="nas storage upgrade"):
                Store.open(db_url)
            assert Store.upgrade(db_url) == store_module.head_revision() == "0008"
            with Store.open(db_url, create=False) as store:
                assert store.teacher_reference("old") is None
                assert store.get_study("old").total_energy_j == pytest.approx(8.0)
            with Store.open(db_url) as store:
                store.put_teacher_reference("old", make_teacher(fine_tune_j=100.0, cache_build_j=None,
                                                                protocol_energy_j=None))
                assert store.get_study("old").total_energy_j == pytest.approx(108.0)
            with engine.begin() as conn:  # and back: the table goes, every other row stays
                command.downgrade(store_module.alembic_config(conn), "0003")
            with engine.connect() as conn:
                assert "nas_teacher_references" not in inspect(conn).get_table_names()
                assert conn.execute(text("SELECT COUNT(*) FROM nas_trials")).scalar() == 1
        finally:
            engine.dispose()

    def test_migration_0006_keeps_fronts_and_readings_and_its_downgrade_drops_only_remeasurements(
        self, db_url: str, make_result: MakeResult, make_candidate: MakeCandidate,
    ) -> None:
        assert Store.upgrade(db_url, "0005") == "0005"
        engine = create_engine(store_module.normalize_url(db_url))
        try:
            now = datetime.now(timezone.utc)
            with engine.begin() as conn:  # a study written by a 0005 build
                assert "origin" not in {c["name"] for c in inspect(conn).get_columns("nas_energy_readings")}
                studies = Table("nas_studies", MetaData(), autoload_with=conn)
                conn.execute(studies.insert().values(
                    name="s", spec_json=json.dumps({"task": "builtin:parity"}),
                    objectives_json=json.dumps([list(o) for o in OBJ2]), status="RUNNING", created_utc=now,
                    updated_utc=now))
            assert Store.upgrade(db_url) == store_module.head_revision()
            with Store.open(db_url, create=False) as store:
                for i, hw in enumerate(["CPU-A", "CPU-A"]):
                    r = make_result(candidate=make_candidate(i), accuracy=0.6 + 0.1 * i,
                                    energy_per_sample_j=1e-3 * (i + 1), hardware=hw)
                    store.start_trial("s", i, r.candidate)
                    store.finish_trial("s", i, r, cost=COST)
                inf = make_result(energy_per_sample_j=5e-4, hardware="GPU-B").inference
                assert inf is not None
                store.add_remeasurement("s", 0, [inf])
                assert len(store.persisted_front("s")) == 3  # trial 0 stands on both machines' fronts
            with engine.begin() as conn:  # and back: only the re-measured readings and their front rows go
                command.downgrade(store_module.alembic_config(conn), "0005")
            with engine.connect() as conn:
                assert conn.execute(text("SELECT COUNT(*) FROM nas_pareto_front")).scalar() == 2
                kinds = conn.execute(text("SELECT hardware_fingerprint FROM nas_energy_readings "
                                          "WHERE kind LIKE 'inference%'")).scalars().all()
                assert sorted(kinds) == ["CPU-A", "CPU-A"]
                assert "origin" not in {c["name"] for c in inspect(conn).get_columns("nas_energy_readings")}
        finally:
            engine.dispose()

    def test_migration_0005_fills_rungs_from_older_rows(self, db_url: str, make_result: MakeResult) -> None:
        assert Store.upgrade(db_url, "0004") == "0004"
        engine = create_engine(store_module.normalize_url(db_url))
        now = datetime.now(timezone.utc)
        complete = make_result(accuracy=0.8)  # train.rung_accuracies: (5, 0.6), (10, 0.7)
        try:
            with engine.begin() as conn:
                meta = MetaData()
                studies, trials = (Table(n, meta, autoload_with=conn) for n in ("nas_studies", "nas_trials"))
                sid = conn.execute(studies.insert().values(
                    name="old", spec_json="{}", objectives_json=json.dumps([list(o) for o in OBJ2]),
                    status="COMPLETE", created_utc=now, updated_utc=now)).inserted_primary_key[0]
                rows = [dict(state="COMPLETE", result_json=json.dumps(complete.to_dict()), accuracy=0.8),
                        dict(state="PRUNED", fail_reason="stopped by ASHA at step 5 (rung accuracy 0.5123)"),
                        dict(state="PRUNED", fail_reason="stopped by the scheduler before its first rung"),
                        dict(state="FAIL", fail_reason="worker error: killed", fail_kind="candidate"),
                        dict(state="FAIL", result_json="{not json", fail_kind="candidate")]
                for n, row in enumerate(rows):
                    conn.execute(trials.insert().values(study_id=sid, trial_number=n, started_utc=now, **row))
            assert Store.upgrade(db_url) == store_module.head_revision() == "0008"
            with engine.connect() as conn:
                assert conn.execute(text("SELECT COUNT(*) FROM nas_trial_rungs")).scalar() == 3
            with Store.open(db_url, create=False) as store:
                got = {t.number: t.rung_accuracies for t in store.trials("old", states=["COMPLETE", "PRUNED"])}
            assert got == {0: ((5, 0.6), (10, 0.7)), 1: ((5, 0.5123),), 2: ()}
            with engine.begin() as conn:  # and back: the table goes, every other row stays
                command.downgrade(store_module.alembic_config(conn), "0004")
            with engine.connect() as conn:
                assert "nas_trial_rungs" not in inspect(conn).get_table_names()
                assert conn.execute(text("SELECT COUNT(*) FROM nas_trials")).scalar() == 5
        finally:
            engine.dispose()

    # -- schema ----------------------------------------------------------------------------------
    def test_schema_is_at_head_and_matches_models(self, store: Store, db_url: str) -> None:
        assert store.schema_revision() == store_module.head_revision()
        engine = create_engine(store_module.normalize_url(db_url))
        try:
            with engine.connect() as conn:
                ctx = MigrationContext.configure(conn, opts={
                    "include_name": lambda name, type_, parents: type_ != "table" or (
                        name.startswith("nas_") and name != VERSION_TABLE),
                    "compare_type": True})
                diffs = compare_metadata(ctx, Base.metadata)
        finally:
            engine.dispose()
        assert diffs == [], f"models and migrations disagree: {diffs}"

    def test_schema_behind_names_the_upgrade_command(
        self, store: Store, db_url: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        store.close()
        current = store_module.head_revision()
        monkeypatch.setattr(schema_module, "head_revision", lambda: "0999")  # as if this build were newer
        monkeypatch.setattr(schema_module, "raise_if_unknown_revision", lambda c, u: None)
        with pytest.raises(StorageError) as err:
            Store.open(db_url)
        msg = str(err.value)
        assert "nas storage upgrade --db" in msg and current in msg and "0999" in msg

    def test_migration_0002_from_a_0001_database_keeps_data(self, db_url: str, make_result: MakeResult) -> None:
        assert Store.upgrade(db_url, "0001") == "0001"
        with pytest.raises(StorageError, match="nas storage upgrade"):
            Store.open(db_url)
        old = make_result(accuracy=0.8).to_dict()  # a result_json as revision 0001 stored it: no test fields
        old["metrics"] = {"accuracy": 0.8, "macro_f1": 0.8, "n_examples": 100}
        for k in ("test_accuracy", "test_macro_f1", "majority_accuracy"):
            old.pop(k)
        engine = create_engine(store_module.normalize_url(db_url))
        now = datetime.now(timezone.utc)
        try:
            with engine.begin() as conn:
                meta = MetaData()
                studies, trials, front = (Table(n, meta, autoload_with=conn)
                                          for n in ("nas_studies", "nas_trials", "nas_pareto_front"))
                assert "test_accuracy" not in trials.c
                zeros = dict.fromkeys(("train_energy_j", "measure_energy_j", "co2eq_g", "wall_s", "gpu_s"), 0.0)
                sid = conn.execute(studies.insert().values(
                    name="old", spec_json="{}", objectives_json=json.dumps([list(o) for o in OBJ2]), status="COMPLETE",
                    created_utc=now, updated_utc=now, cost_includes_estimate=False, n_trials_complete=1,
                    n_trials_failed=0, n_trials_pruned=0, **zeros)).inserted_primary_key[0]
                tid = conn.execute(trials.insert().values(
                    study_id=sid, trial_number=0, state="COMPLETE", retryable=False,
                    candidate_json=Candidate().to_json(), result_json=json.dumps(old), accuracy=0.8, macro_f1=0.8,
                    energy_per_sample_j=1e-3, hardware_fingerprint="NVIDIA H100 80GB HBM3",
                    started_utc=now, finished_utc=now)).inserted_primary_key[0]
                conn.execute(front.insert().values(
                    study_id=sid, hardware_fingerprint="NVIDIA H100 80GB HBM3",
                    objectives_key="accuracy:maximize,energy_per_sample_j:minimize", trial_id=tid, trial_number=0,
                    position=0, values_json='{"accuracy":0.8,"energy_per_sample_j":0.001}', updated_utc=now))
            assert Store.upgrade(db_url, "0002") == "0002"
            assert Store.upgrade(db_url) == store_module.head_revision() == "0008"
            with Store.open(db_url, create=False) as store:
                view = store.trial("old", 0)
                assert view.result is not None and view.result.metrics is not None
                assert view.result.metrics.accuracy == 0.8 and view.result.metrics.test_accuracy is None
                values = view.values()
                assert values["accuracy"] == 0.8
                assert values["test_accuracy"] is values["test_macro_f1"] is values["majority_accuracy"] is None
                assert [t.number for t in store.front("old")] == [0]  # no majority rate recorded: not judged
                assert [e.trial_number for e in store.persisted_front("old")] == [0]
            # and back: the downgrade drops the three columns and keeps every row
            with engine.begin() as conn:
                command.downgrade(store_module.alembic_config(conn), "0001")
            with engine.connect() as conn:
                assert not {"test_accuracy", "test_macro_f1", "majority_accuracy"} & {
                    c["name"] for c in inspect(conn).get_columns("nas_trials")}
                assert conn.execute(select(Table("nas_trials", MetaData(), autoload_with=conn).c.accuracy)).scalar() == 0.8
                assert conn.execute(text("SELECT COUNT(*) FROM nas_pareto_front")).scalar() == 1
        finally:
            engine.dispose()

    def test_migration_0003_backfills_fail_kinds_and_derives_study_totals(self, db_url: str) -> None:
        assert Store.upgrade(db_url, "0002") == "0002"
        engine = create_engine(store_module.normalize_url(db_url))
        now = datetime.now(timezone.utc)
        # (state, fail_reason, retryable, candidate hash, train joules) as revision 0002 stored them
        rows = [("COMPLETE", None, False, "h0", 5.0), ("FAIL", "NaN loss at step 3", False, "h1", 2.0),
                ("FAIL", "interrupted: the driver stopped before this trial finished", True, "h2", None),
                ("FAIL", "other work ran on cpu during all 3 measurement attempts", True, "h3", 1.0),
                ("FAIL", "not evaluated: identical to trial 0", False, None, None),
                ("FAIL", "invalid candidate: n_heads", False, None, None), ("PRUNED", "stopped by ASHA", False, "h6", 0.5),
                ("RUNNING", None, False, "h7", None)]
        try:
            with engine.begin() as conn:
                meta = MetaData()
                studies, trials = (Table(n, meta, autoload_with=conn) for n in ("nas_studies", "nas_trials"))
                sid = conn.execute(studies.insert().values(
                    name="old", spec_json="{}", objectives_json=json.dumps([list(o) for o in OBJ2]), status="STOPPED",
                    created_utc=now, updated_utc=now, cost_includes_estimate=False, n_trials_complete=1,
                    n_trials_failed=5, n_trials_pruned=1, train_energy_j=8.5, measure_energy_j=0.0, co2eq_g=0.0,
                    wall_s=0.0, gpu_s=0.0)).inserted_primary_key[0]
                for i, (state, reason, retryable, h, joules) in enumerate(rows):
                    conn.execute(trials.insert().values(
                        study_id=sid, trial_number=i, state=state, fail_reason=reason, retryable=retryable,
                        candidate_hash=h, cost_train_energy_j=joules, cost_meter=None if joules is None else "estimate",
                        cost_is_estimate=joules is not None, started_utc=now))
            assert Store.upgrade(db_url) == store_module.head_revision()
            with Store.open(db_url, create=False) as store:
                views = store.trials("old")
                assert [v.fail_kind for v in views] == [None, FailKind.CANDIDATE, FailKind.INTERRUPTED, FailKind.DEVICE,
                                                        FailKind.NOT_EVALUATED, FailKind.INVALID, None, None]
                assert [v.number for v in views if v.spends_budget] == [0, 1, 6]
                assert store.failed_candidate_hashes("old") == {"h1"}
                info = store.get_study("old")
                assert (info.n_trials_complete, info.n_trials_failed, info.n_trials_pruned) == (1, 5, 1)
                assert info.train_energy_j == pytest.approx(8.5) and info.cost_includes_estimate
            with engine.connect() as conn:
                assert "retryable" not in {c["name"] for c in inspect(conn).get_columns("nas_trials")}
                assert "n_trials_failed" not in {c["name"] for c in inspect(conn).get_columns("nas_studies")}
            with engine.begin() as conn:  # and back: retryable and the study columns come from the trials
                command.downgrade(store_module.alembic_config(conn), "0002")
            with engine.connect() as conn:
                got = conn.execute(text("SELECT retryable FROM nas_trials ORDER BY trial_number")).scalars().all()
                assert [bool(r) for r in got] == [False, False, True, True, False, False, False, False]
                study = conn.execute(text("SELECT n_trials_complete, n_trials_failed, n_trials_pruned, train_energy_j, "
                                          "cost_includes_estimate FROM nas_studies")).one()
                assert tuple(study[:3]) == (1, 5, 1) and study[3] == pytest.approx(8.5) and bool(study[4])
        finally:
            engine.dispose()

    def test_schema_newer_than_build(self, store: Store, db_url: str) -> None:
        with store.session(write=True) as s:
            s.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = 'ffff'"))
        store.close()
        with pytest.raises(StorageError, match="newer energy-nas"):
            Store.open(db_url)

    def test_create_false_on_empty_database(self, db_url: str) -> None:
        with pytest.raises(StorageError, match="nas storage upgrade --db"):
            Store.open(db_url, create=False)
        assert Store.upgrade(db_url) == store_module.head_revision()
        assert Store.upgrade(db_url) == store_module.head_revision()  # idempotent
        Store.open(db_url, create=False).close()

    def test_session_rolls_back_and_wraps_errors(self, store: Store) -> None:
        self._study(store, "a")
        with pytest.raises(StorageError, match="database error") as err, store.session(write=True) as s:
            s.execute(update(StudyRow).where(StudyRow.name == "a").values(status="COMPLETE"))
            s.execute(text("SELECT * FROM no_such_table"))
        assert err.value.__cause__ is not None
        assert store.get_study("a").status == "RUNNING"  # rolled back

    # -- concurrency -----------------------------------------------------------------------------
    def test_reader_process_reads_while_writer_holds_a_write_transaction(self, store: Store, db_url: str) -> None:
        self._study(store, "a")
        reader = textwrap.dedent(f"""
            from storage import Store
            s = Store.open({db_url!r}, create=False)
            print([(i.name, i.status) for i in s.list_studies()])
        """)
        with store.session(write=True) as s:
            s.execute(update(StudyRow).where(StudyRow.name == "a").values(status="STOPPED"))
            s.flush()
            t0 = time.monotonic()
            out = subprocess.run([sys.executable, "-c", reader], capture_output=True, text=True, cwd=ROOT,
                                 timeout=60)
            waited_s = time.monotonic() - t0
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "[('a', 'RUNNING')]"  # the last committed state, not blocked
        assert waited_s < 20
        assert store.get_study("a").status == "STOPPED"

    def test_second_engine_reads_during_write(self, store: Store, db_url: str) -> None:
        self._study(store, "a")
        other = Store.open(db_url)
        try:
            with store.session(write=True) as s:
                s.execute(update(StudyRow).values(status="STOPPED"))
                s.flush()
                t0 = time.monotonic()
                assert [i.status for i in other.list_studies()] == ["RUNNING"]
                assert time.monotonic() - t0 < 5
            assert [i.status for i in other.list_studies()] == ["STOPPED"]
        finally:
            other.close()

    # -- Optuna in the same database -------------------------------------------------------------
    def test_optuna_first_then_store(self, db_url: str) -> None:
        optuna = pytest.importorskip("optuna")
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(storage=db_url, study_name="s", directions=["maximize", "minimize"])
        trial = study.ask()
        trial.suggest_int("n_layers", 1, 4)
        study.tell(trial, [0.9, 1e-3])
        self._check_coexistence(optuna, db_url, study)

    def test_store_first_then_optuna(self, db_url: str) -> None:
        optuna = pytest.importorskip("optuna")
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        Store.open(db_url).close()
        study = optuna.create_study(storage=db_url, study_name="s", directions=["maximize", "minimize"])
        study.enqueue_trial({"x": 1})
        self._check_coexistence(optuna, db_url, study)

    def _check_coexistence(self, optuna: Any, db_url: str, study: Any) -> None:
        assert Store.upgrade(db_url) == store_module.head_revision()
        with Store.open(db_url, create=False) as store:
            info = store.create_study("s", "{}", OBJ2, optuna_study_id=study._study_id)
            assert info.optuna_study_id == study._study_id
            # the driver's way of opening Optuna on the store's database
            rdb = optuna.storages.RDBStorage(store.url, engine_kwargs=store.optuna_engine_kwargs())
            assert rdb.get_study_id_from_name("s") == study._study_id
            rdb.engine.dispose()
        engine = create_engine(store_module.normalize_url(db_url))
        try:
            with engine.connect() as conn:
                tables = set(inspect(conn).get_table_names())
                optuna_rev = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
                ours = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()
        finally:
            engine.dispose()
        assert {"alembic_version", VERSION_TABLE, "studies", "trials", "nas_studies", "nas_trials"} <= tables
        assert ours == store_module.head_revision() and optuna_rev != ours
        loaded = optuna.load_study(study_name="s", storage=db_url)
        assert len(loaded.trials) == len(study.trials)
