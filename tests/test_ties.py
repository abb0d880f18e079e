"""Ties within noise re-measured with more windows before a search ends (``front.ties``, issue #16 item 3).

The rule itself is tested on synthetic readings in tests/test_noise.py. Here: which members a round
re-measures, that the new reading becomes the one of record and settles the front, that the budget and
the rounds bound it, and one real re-measurement of stored weights on this CPU.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from evaluators.pipeline import run_trial
from evaluators.remeasure import this_hardware
from nas.config import Candidate, MeasureConfig, TrainConfig
from nas.records import InferenceEnergy, TrialResult
from nas.runner.ties import involved, settle_ties
from nas.spec import StudySpec
from storage import Store, TrialCost
from tests.conftest import dashboard_client, fake_trial_result, run_cli
from tests.test_search import small_spec

HERE = this_hardware("cpu")
COST = TrialCost(train_energy_j=100.0, measure_energy_j=2.0, co2eq_g=None, wall_s=1.0, gpu_s=0.0,
                 meter="estimate", is_estimate=True)
OBJ = [("accuracy", "maximize"), ("energy_per_sample_j", "minimize")]


def _noisy(result: TrialResult, energy: float | None = None, cv: float = 0.07,
           protocol_j: float | None = 1.0) -> TrialResult:
    """``result`` measured here with a CV of ``cv`` over its windows (J/sample ``energy``; the protocol's
    joules ``protocol_j``, None: its own)."""
    inf = result.inference
    assert inf is not None
    prov = dataclasses.replace(inf.provenance, device_name=HERE)
    e = inf.energy_per_sample_j if energy is None else energy
    return dataclasses.replace(result, inference=dataclasses.replace(
        inf, cv=cv, energy_per_sample_j=e, provenance=prov,
        protocol_energy_j=inf.protocol_energy_j if protocol_j is None else protocol_j))


def _spec(db: Path, **front: Any) -> StudySpec:
    return StudySpec.model_validate(small_spec("ties", db, trials=3, front={"require_above_majority": False, **front}))


def _study(db: Path, spec: StudySpec, trials: dict[int, tuple[float, float]]) -> Store:
    """A study whose trials ``{number: (accuracy, J/sample)}`` were measured here with a 7% CV over 3 windows."""
    store = Store.open(db)
    store.create_study(spec.name, spec.model_dump_json(), OBJ)
    for n, (acc, e) in trials.items():
        r = _noisy(fake_trial_result(candidate=Candidate(n_layers=1 + n), accuracy=acc, hardware=HERE,
                                     meter="estimate", is_estimate=True), e)
        store.start_trial(spec.name, n, r.candidate)
        store.finish_trial(spec.name, n, r, cost=COST)
    return store


class FakeMeasure:
    """Measures trial ``n`` at its true J/sample ``truth[n]``, with a 1% CV over the windows asked for."""

    def __init__(self, store: Store, truth: dict[int, float]) -> None:
        self.store, self.truth, self.calls = store, truth, []

    def __call__(self, study: str, number: int, db: str, cfg: MeasureConfig, device: str) -> InferenceEnergy:
        self.calls.append((number, cfg.n_windows))
        inf = self.store.trials(study)[number].result.inference  # type: ignore[union-attr]
        return dataclasses.replace(inf, energy_per_sample_j=self.truth[number], cv=0.01, n_windows=cfg.n_windows,
                                   protocol_energy_j=4.0,
                                   provenance=dataclasses.replace(inf.provenance, n_windows=cfg.n_windows,
                                                                  tie_break=True))


def test_a_round_remeasures_the_tied_members_and_those_that_may_dominate_them(tmp_path: Path) -> None:
    spec = _spec(tmp_path / "nas.db")
    # 0 and 1: 1% apart, tied; 2: clearly dearer and less accurate (off); 3: more accurate, dearer: clear
    store = _study(tmp_path / "nas.db", spec, {0: (0.8, 1.00e-3), 1: (0.8, 1.01e-3), 2: (0.7, 2e-3),
                                               3: (0.9, 3e-3)})
    front = store.front("ties")
    assert [(t.number, t.noise) for t in front] == [(3, "clear"), (0, "tied"), (1, "tied")]
    assert [t.number for t in involved(front, OBJ)] == [0, 1]
    fake = FakeMeasure(store, {0: 1.00e-3, 1: 1.10e-3})
    report = settle_ties(store, spec, str(tmp_path / "nas.db"), device="cpu", measure=fake)
    assert report is not None and report.hardware == HERE
    assert fake.calls == [(0, 12), (1, 12)]  # windows_factor 4 times the reading's 3 windows
    assert [(t.number, t.noise) for t in store.front("ties")] == [(3, "clear"), (0, "clear")]
    assert report.still_tied == () and report.rounds == 1 and report.spent_j == 8.0
    assert store.get_study("ties").measure_energy_j == pytest.approx(4 * 2.0 + 8.0)  # the settling is search cost
    assert "2 front member(s) re-measured" in report.describe() and "none left" in report.describe()
    store.close()


def test_a_clear_member_keeps_its_place_and_ties_that_stay_are_reported(tmp_path: Path) -> None:
    spec = _spec(tmp_path / "nas.db", ties={"rounds": 2})
    store = _study(tmp_path / "nas.db", spec, {0: (0.8, 1.00e-3), 1: (0.8, 1.01e-3), 2: (0.9, 3e-3)})
    fake = FakeMeasure(store, {0: 1.00e-3, 1: 1.001e-3, 2: 3.02e-3})  # 0 and 1 truly the same
    report = settle_ties(store, spec, str(tmp_path / "nas.db"), device="cpu", measure=fake)
    assert report is not None and report.rounds == 2 and report.still_tied == (0, 1)
    assert fake.calls == [(0, 12), (1, 12), (0, 48), (1, 48)]  # trial 2 was clear: never re-measured
    assert [t.number for t in store.front("ties")][0] == 2
    assert "still tied: #0, #1" in report.describe()
    store.close()


def test_the_budget_bounds_the_settling_and_off_means_off(tmp_path: Path) -> None:
    db = tmp_path / "nas.db"
    spec = _spec(db, ties={"budget_fraction": 0.01})  # 1% of 204 J; a re-measurement needs 4 x 1 J
    store = _study(db, spec, {0: (0.8, 1.00e-3), 1: (0.8, 1.01e-3)})
    fake = FakeMeasure(store, {0: 1.00e-3, 1: 1.10e-3})
    report = settle_ties(store, spec, str(db), device="cpu", measure=fake)
    assert report is not None and fake.calls == [] and report.still_tied == (0, 1)
    assert [b.skipped for b in report.breaks] == ["budget (4.0 J needed, 2.0 J left)"] * 2
    assert settle_ties(store, _spec(db, ties={"rounds": 0}), str(db), measure=fake) is None
    assert settle_ties(store, _spec(db, noise="ignore"), str(db), measure=fake) is None
    assert fake.calls == []
    store.close()


def test_stored_weights_are_measured_again_here_with_more_windows(tmp_path: Path) -> None:
    """The real path: weights kept by a trial, loaded and measured on this CPU with 4x the windows."""
    db = tmp_path / "nas.db"
    spec = _spec(db, ties={"budget_fraction": 1.0})
    cand = Candidate(n_layers=1, d_model=16, n_heads=2, d_ffn=32, max_len=32)
    result = run_trial(cand, "builtin:sentiment", train_cfg=TrainConfig(steps=5, batch_size=16),
                       measure_cfg=spec.measure, weights_out=tmp_path / "w0")
    assert result.weights_path is not None and result.inference is not None
    store = Store.open(db)
    store.create_study("ties", spec.model_dump_json(), OBJ)
    e = result.inference.energy_per_sample_j
    assert e is not None
    for n, energy in ((0, e), (1, e * 1.01)):  # the same model twice, 1% apart: tied at a 7% CV
        store.start_trial("ties", n, cand)
        store.finish_trial("ties", n, _noisy(result, energy, protocol_j=None),
                           cost=dataclasses.replace(COST, train_energy_j=1e4))
        store.add_artefact("ties", n, "weights", result.weights_path)
    assert [t.noise for t in store.front("ties")] == ["tied", "tied"]
    report = settle_ties(store, spec, str(db), device="cpu")
    assert report is not None and [b.number for b in report.breaks if b.after is not None] == [0, 1]
    for n in (0, 1):
        inf = store.trials("ties")[n].result.inference  # type: ignore[union-attr]
        assert inf is not None and inf.n_windows == 8 and inf.provenance.tie_break and inf.is_estimate
        assert [r.origin for r in store.readings("ties", n) if r.kind.startswith("inference")] == [None, "tie_break"]
    assert report.spent_j > 0 and report.is_estimate
    assert set(report.still_tied) == {t.number for t in store.front("ties") if t.noise == "tied"}
    store.close()


def test_nas_pareto_and_the_dashboard_mark_ties_and_show_the_noise(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "nas.db"
    store = _study(db, _spec(db), {0: (0.8, 1.00e-3), 1: (0.8, 1.01e-3), 2: (0.9, 3e-3)})
    store.close()
    code, out, _ = run_cli(["pareto", "ties", "--db", str(db), "--json"], capsys)
    assert code == 0
    assert {t["number"]: t["noise"] for t in json.loads(out)} == {2: "clear", 0: "tied", 1: "tied"}
    with dashboard_client(str(db), tmp_path / "artefacts") as client:
        d = client.get("/api/studies/ties/dashboard").json()
        detail = client.get("/api/studies/ties/trials/1").json()
    assert {r["number"]: r.get("noise") for r in d["trials"]} == {0: "tied", 1: "tied", 2: "clear"}
    assert detail["noise"] == "tied" and detail["on_front"]
    front = [t for t in d["figures"]["front"]["data"] if t.get("meta", {}).get("role") == "front"]
    hovers = {c[0]: c[4] for t in front for c in t["customdata"]}
    assert hovers == {0: "on the Pareto front, tied within noise", 1: "on the Pareto front, tied within noise",
                      2: "on the Pareto front"}
    bars = {c[0]: e for t in front for c, e in zip(t["customdata"], t["error_x"]["array"], strict=True)}
    assert bars[0] == pytest.approx(1.00e-3 * 1.96 * 0.07 / 3 ** 0.5)  # the 95% interval of a 3-window mean
