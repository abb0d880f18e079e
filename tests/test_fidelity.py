"""The service reports its own fidelity: how well the early rungs rank candidates.

Every rung a trial reaches is stored as its report arrives (a stopped trial and a dead worker's too), and
Spearman's rho between consecutive rungs is shown by ``nas show STUDY``, the HTTP API and the dashboard,
with a warning below 0.6. The storage contract (``tests/storage_contract.py``) covers ``record_rung`` and
the migration on every backend.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from typer.testing import CliRunner

from nas.cli import app
from nas.config import Candidate
from nas.fidelity import MIN_TRIALS, WARN_BELOW, FidelityReport, average_ranks, rung_correlations, spearman
from nas.records import RungReport, TrialResult
from nas.runner.protocol import TrialConfig, TrialReport
from nas.runner.writer import StoreHandle, StoreWriter
from nas.spec import default_spec
from storage import Store, TrialCost, candidate_hash, study_fidelity
from tests.conftest import dashboard_client, fake_trial_result

OBJ2 = [("accuracy", "maximize"), ("energy_per_sample_j", "minimize")]
RUNGS = [100, 200, 400]
#: (accuracy at 100, at 200, final dev accuracy) per trial; None: never got there. Rung 100 ranks the
#: five trials that reached 200 almost backwards (rho -0.5); 200 ranks the three finishers exactly (1.0).
WEAK = [(0.50, 0.80, 0.85), (0.55, 0.60, None), (0.60, 0.75, 0.78), (0.65, 0.58, None), (0.70, None, None),
        (0.75, 0.62, 0.70)]
#: The same trials with rungs that agree: no warning.
GOOD = [(0.50, 0.55, 0.60), (0.55, 0.60, None), (0.60, 0.66, 0.70), (0.65, 0.70, 0.75), (0.70, None, None)]


# --- the computation -------------------------------------------------------------------------------
def test_spearman_known_values_ties_and_undefined() -> None:
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(8 / 95 ** 0.5)  # ranks 1, 2, 3.5, 5, 3.5
    assert average_ranks([0.5, 0.7, 0.5, 0.9]) == [1.5, 3.0, 1.5, 4.0]
    assert spearman([0.7, 0.7, 0.7], [0.1, 0.2, 0.3]) is None  # constant: undefined, never a number
    assert spearman([0.1], [0.2]) is None and spearman([], []) is None
    with pytest.raises(ValueError, match="paired"):
        spearman([1, 2], [1])


def test_spearman_agrees_with_scipy_on_tied_data() -> None:
    stats = pytest.importorskip("scipy.stats")
    rng = random.Random(0)
    for n in (3, 5, 12, 40):
        xs = [rng.choice([0.5, 0.6, 0.7, 0.8]) for _ in range(n)]
        ys = [round(x + rng.uniform(-0.2, 0.2), 1) for x in xs]
        expected = float(stats.spearmanr(xs, ys)[0])
        got = spearman(xs, ys)
        assert (got is None) == (expected != expected) and (got is None or got == pytest.approx(expected))


def _maps(rows: list[tuple[float | None, ...]]) -> list[dict[int, float]]:
    return [{s: a for s, a in zip(RUNGS, row, strict=True) if a is not None} for row in rows]


def test_rung_correlations_per_consecutive_pair_with_a_warning_below_the_bar() -> None:
    report = rung_correlations(_maps(WEAK), rungs=RUNGS)
    assert report.shown and report.steps == (100, 200, 400) and report.final_step == 400
    low, high = report.pairs
    assert (low.low_step, low.high_step, low.n_trials, low.high_is_final) == (100, 200, 5, False)
    assert low.rho == pytest.approx(-0.5) and low.weak
    assert (high.n_trials, high.high_is_final, high.weak) == (3, True, False) and high.rho == pytest.approx(1.0)
    assert low.text() == "rung 100 -> 200: Spearman -0.50 over 5 trials"
    assert high.text() == "rung 200 -> 400 (final): Spearman 1.00 over 3 trials"
    warning = report.warning()
    assert warning is not None and f"below {WARN_BELOW}" in warning and "100 -> 200: -0.50" in warning
    assert "rank candidates poorly" in warning and "ASHA stops the wrong ones" in warning
    assert "`fidelity.rungs: [200, 400]`" in warning and "`fidelity.enabled: false`" in warning
    assert report.lines() == [low.text(), high.text(), warning]
    assert "rung 400 is each trial's final dev accuracy, after compression" in report.note()
    data = json.loads(json.dumps(report.to_dict()))
    assert data["pairs"][0]["spearman"] == pytest.approx(-0.5) and data["suggested_rungs"] == [200, 400]
    good = rung_correlations(_maps(GOOD), rungs=RUNGS)
    assert good.shown and good.warning() is None and not good.weak_pairs


def test_too_few_constant_one_rung_and_a_weak_last_pair() -> None:
    few = rung_correlations([{100: 0.5, 200: 0.6}, {100: 0.6, 200: 0.7}, {100: 0.7}], rungs=RUNGS)
    [pair] = few.pairs
    assert pair.n_trials == 2 < MIN_TRIALS and pair.rho is None and not pair.enough and not pair.weak
    assert pair.text() == "rung 100 -> 200: too few trials with both (2; needs 3)" and few.warning() is None
    flat = rung_correlations([{100: 0.5, 200: 0.6}, {100: 0.5, 200: 0.7}, {100: 0.5, 200: 0.8}], rungs=RUNGS)
    assert flat.pairs[0].rho is None and "same accuracy" in flat.pairs[0].text()
    one = rung_correlations([{400: 0.8}, {400: 0.7}, {400: 0.9}], rungs=RUNGS)  # no early stopping: nothing shown
    assert not one.shown and one.lines() == [] and rung_correlations([], rungs=RUNGS).to_dict()["shown"] is False
    # exactly at the bar is not below it
    at_bar = FidelityReport(pairs=(dataclasses.replace(few.pairs[0], n_trials=5, rho=WARN_BELOW),), rungs=(100, 200))
    assert at_bar.warning() is None
    # the last pair is weak: a first rung halfway to the last one
    late = rung_correlations([{100: a, 200: a + 0.1, 400: f} for a, f in [(0.5, 0.9), (0.6, 0.7), (0.7, 0.8),
                                                                          (0.8, 0.6)]], rungs=RUNGS)
    assert late.pairs[0].rho == pytest.approx(1.0) and late.pairs[1].weak
    assert late.suggested_rungs() == [300, 400]


# --- storage: every rung kept, however the trial ends ------------------------------------------------
def _tune_trial(number: int, cand: Candidate, last: dict[str, Any] | None) -> Any:
    cfg = TrialConfig(candidate=cand, number=number, candidate_hash=candidate_hash(cand)).to_tune()
    return SimpleNamespace(trial_id=f"t{number}", config=cfg, last_result=last, placement_group_factory=None,
                           error_msg="ray.exceptions.ActorDiedError: the actor died unexpectedly")


def _rung_report(step: int, accuracy: float) -> dict[str, Any]:
    rung = RungReport(step=step, accuracy=accuracy, train_energy_j=1.0 * step, co2eq_g=None, wall_s=1.0,
                      meter="estimate", is_estimate=True)
    return TrialReport(status="RUNNING", step=step, rung=rung).to_tune()


def test_the_writer_stores_each_rung_as_it_arrives(tmp_path: Path, make_candidate: Any) -> None:
    store = Store.open(str(tmp_path / "nas.db"))
    store.create_study("s", default_spec().with_overrides(name="s").model_dump_json(), OBJ2)
    writer = StoreWriter(StoreHandle(store, "s"), set())
    pruned, died = _tune_trial(0, make_candidate(0), None), _tune_trial(1, make_candidate(1), None)
    for t in (pruned, died):
        writer.on_trial_start(0, [], t)
    for t, reports in ((pruned, [_rung_report(100, 0.61), _rung_report(200, 0.64)]), (died, [_rung_report(100, 0.7)])):
        for r in reports:
            writer.on_trial_result(0, [], t, r)
            t.last_result = r
        assert store.trial("s", t.config["optuna_number"]).state == "RUNNING"  # already stored, mid-run
    assert store.trial("s", 0).rung_accuracies == ((100, 0.61), (200, 0.64))
    writer.on_trial_complete(0, [], pruned)  # ASHA stopped it at 200
    writer.on_trial_error(0, [], died)  # its worker died after rung 100
    assert writer.fatal is None
    views = {v.number: v for v in store.trials("s")}
    assert views[0].state == "PRUNED" and views[0].rung_accuracies == ((100, 0.61), (200, 0.64))
    assert views[1].state == "FAIL" and views[1].rung_accuracies == ((100, 0.7),)
    # a final report is not a rung: nothing is recorded from it, nothing fails
    final = TrialReport(status="FAIL", step=400, error="boom").to_tune()
    writer.on_trial_result(0, [], pruned, final)
    assert writer.fatal is None
    store.close()


def _result(cand: Candidate, r100: float | None, r200: float | None, final: float) -> TrialResult:
    base = fake_trial_result(candidate=cand, accuracy=final)
    assert base.train is not None
    done = tuple((s, a) for s, a in ((100, r100), (200, r200)) if a is not None)
    return dataclasses.replace(base, train=dataclasses.replace(base.train, rung_accuracies=done))


def _write_study(store: Store, name: str, rows: list[tuple[float | None, ...]], rungs: list[int]) -> None:
    spec = default_spec().with_overrides(name=name, **{"fidelity.rungs": rungs, "fidelity.enabled": True})
    store.create_study(name, spec.model_dump_json(), OBJ2)
    for n, (r100, r200, final) in enumerate(rows):
        cand = Candidate(d_ffn=8 + n)
        store.start_trial(name, n, cand)
        for step, acc in ((100, r100), (200, r200)):
            if acc is not None:
                store.record_rung(name, n, step, acc)
        if final is not None:
            result = _result(cand, r100, r200, final)
            store.finish_trial(name, n, result, cost=TrialCost.from_result(result))
        else:
            last = 200 if r200 is not None else 100
            store.prune_trial(name, n, f"stopped by ASHA at step {last}", cost=TrialCost(wall_s=1.0))


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = str(tmp_path_factory.mktemp("fidelity") / "nas.db")
    with Store.open(path) as store:
        _write_study(store, "weak", WEAK, RUNGS)
        _write_study(store, "good", GOOD, RUNGS)
        store.create_study("plain", default_spec().with_overrides(name="plain").model_dump_json(), OBJ2)
        for n, acc in enumerate([0.7, 0.8, 0.9]):  # fidelity disabled: only final accuracies
            r = fake_trial_result(candidate=Candidate(d_ffn=8 + n), accuracy=acc)
            assert r.train is not None
            r = dataclasses.replace(r, train=dataclasses.replace(r.train, rung_accuracies=()))
            store.finish_trial("plain", n, r, cost=TrialCost.from_result(r))
    return path


def test_study_fidelity_reads_the_stored_rungs_and_final_accuracies(db: str) -> None:
    with Store.open(db, create=False) as store:
        info, trials = store.get_study("weak"), store.trials("weak")
        plain = study_fidelity(store.get_study("plain"), store.trials("plain"))
    assert info.fidelity_rungs == (100, 200, 400)
    assert [t.rung_accuracies for t in trials if t.state == "PRUNED"] == [((100, 0.55), (200, 0.60)),
                                                                         ((100, 0.65), (200, 0.58)), ((100, 0.70),)]
    report = study_fidelity(info, trials)
    assert report == rung_correlations(_maps(WEAK), rungs=RUNGS)  # the same numbers as the pure function
    assert not plain.shown


# --- nas show STUDY ----------------------------------------------------------------------------------
def _cli(*args: str) -> str:
    res = CliRunner().invoke(app, list(args))
    assert res.exit_code == 0, res.output
    return res.stdout


def test_show_study_prints_the_fidelity_section_and_warns(db: str) -> None:
    text = _cli("show", "weak", "--db", db)
    assert "Study weak" in text and "Fidelity" in text and "rung 400 is each trial's final dev accuracy" in text
    assert "rung 100 -> 200: Spearman -0.50 over 5 trials" in text
    assert "rung 200 -> 400 (final): Spearman 1.00 over 3 trials" in text
    assert "WARNING: rank correlation below 0.6" in text and "ASHA stops the wrong ones" in text
    assert "fidelity.rungs: [200, 400]" in text and "fidelity.enabled: false" in text
    good = _cli("show", "good", "--db", db)
    assert "rung 100 -> 200: Spearman 1.00 over 4 trials" in good and "WARNING" not in good
    plain = _cli("show", "plain", "--db", db)
    assert "Study plain" in plain and "Fidelity" not in plain


def test_show_study_json_has_the_fidelity_report(db: str) -> None:
    data = json.loads(_cli("show", "weak", "--db", db, "--json"))
    assert data["name"] == "weak" and data["n_trials_pruned"] == 3
    fid = data["fidelity"]
    assert fid["shown"] and fid["final_step"] == 400 and fid["warn_below"] == WARN_BELOW
    assert [(p["low_step"], p["high_step"], p["n_trials"]) for p in fid["pairs"]] == [(100, 200, 5), (200, 400, 3)]
    assert fid["pairs"][0]["spearman"] == pytest.approx(-0.5) and fid["pairs"][0]["weak"]
    assert "ASHA stops the wrong ones" in fid["warning"]
    assert json.loads(_cli("show", "plain", "--db", db, "--json"))["fidelity"]["shown"] is False


def test_show_trial_lists_its_rungs(db: str) -> None:
    assert "dev accuracy at rungs" in _cli("show", "weak", "1", "--db", db)
    assert "step 100: 0.5500, step 200: 0.6000" in _cli("show", "weak", "1", "--db", db)
    assert json.loads(_cli("show", "weak", "1", "--db", db, "--json"))["rung_accuracies"] == [[100, 0.55], [200, 0.6]]


# --- the HTTP API and the dashboard ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def client(db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with dashboard_client(db, tmp_path_factory.mktemp("artefacts")) as c:
        yield c


def test_api_and_dashboard_give_the_same_report_as_the_cli(client: Any, db: str) -> None:
    cli = json.loads(_cli("show", "weak", "--db", db, "--json"))["fidelity"]
    study = client.get("/api/studies/weak").json()
    board = client.get("/api/studies/weak/dashboard").json()
    assert study["fidelity"] == board["fidelity"] == cli
    assert board["fidelity"]["warning"].startswith("WARNING")
    assert client.get("/api/studies/good/dashboard").json()["fidelity"]["warning"] is None
    assert client.get("/api/studies/plain").json()["fidelity"]["shown"] is False
    trial = client.get("/api/studies/weak/trials/3").json()
    assert trial["rung_accuracies"] == [{"step": 100, "accuracy": 0.65}, {"step": 200, "accuracy": 0.58}]


def test_study_page_has_the_fidelity_card_and_warning_style(client: Any) -> None:
    page = client.get("/studies/weak").text
    assert 'id="fidelity-card"' in page and 'data-role="fidelity"' in page
    script = client.get("/static/app.js").text
    assert "renderFidelity(d.fidelity)" in script and 'class="warning"' in script
    assert ".warning {" in client.get("/static/style.css").text
