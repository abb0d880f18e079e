"""The learned cost model (nas.cost_model, nas.cost_study, nas predict-cost): fit, predict, infeasibility, CLI."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from nas.config import AttentionConfig, Candidate
from nas.cost_model import (
    FEATURE_NAMES,
    TARGETS,
    CostInputs,
    CostModel,
    CostModelError,
    CostObservation,
    CostPrediction,
    cross_validate,
    features,
    predicted_infeasible,
)
from nas.records import TrialResult
from storage import Store, TrialCost
from tests.conftest import dashboard_client, fake_trial_result, run_cli

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("softmax", "linear", "local")


@pytest.fixture(autouse=True, scope="module")
def _own_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Profiles are cached on disk: in a folder of this module's own, not the user's cache.

    The in-memory cache is emptied on the way in and out, so that a module that uses this fixture
    (tests/test_cost_gate.py) and this one each write their own folder.
    """
    from nas.cost_inputs import _profile

    _profile.cache_clear()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NAS_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        yield
    _profile.cache_clear()


def _candidate(i: int) -> Candidate:
    kind = KINDS[i % 3]
    attn = AttentionConfig(kind=kind, window=8 if kind == "local" else None)
    return Candidate(n_layers=1 + i % 3, d_model=(32, 64, 96)[i // 3 % 3], n_heads=2, d_ffn=64 + 16 * (i % 5),
                     max_len=64, attention=attn)


def _law(x: CostInputs) -> dict[str, float]:
    """A known log-linear law: J/sample ~ FLOPs^0.7 x ops^0.3; latency ~ FLOPs^0.5 x ops^0.4 x 1.25 per layer."""
    layers = len(x.candidate.kept_layers)
    return {"energy_per_sample_j": 1e-7 * x.flops_per_sample ** 0.7 * x.aten_ops ** 0.3,
            "latency_p50_ms": 2e-3 * x.flops_per_sample ** 0.5 * x.aten_ops ** 0.4 * 1.25 ** layers}


def _measured(x: CostInputs, rng: np.random.Generator, noise: float) -> dict[str, float | None]:
    return {k: v * math.exp(rng.normal(0, noise)) for k, v in _law(x).items()}


def _observations(n: int, seed: int = 0, noise: float = 0.02) -> list[CostObservation]:
    """Synthetic profiles (no torch): FLOPs 1e6 to 1e8, 30 to 900 operators, measured by :func:`_law`."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        flops = float(10 ** rng.uniform(6, 8))
        x = CostInputs(candidate=_candidate(i), flops_per_sample=flops, batch_size=32, seq_len=64,
                       aten_ops=int(rng.uniform(30, 900)), elements_per_sample=flops / 10 * rng.uniform(0.5, 2))
        out.append(CostObservation(inputs=x, measured=_measured(x, rng, noise), trial=i))
    return out


def _fit(rows: list[CostObservation]) -> CostModel:
    return CostModel.fit(rows, hardware="AMD EPYC", meter="estimate", is_estimate=True)


def test_every_feature_has_a_name() -> None:
    assert len(features(_observations(1)[0].inputs)) == len(FEATURE_NAMES) == len(set(FEATURE_NAMES))


def test_a_known_log_linear_law_is_recovered_on_held_out_candidates() -> None:
    rows = _observations(90)
    model = _fit(rows[:60])
    preds = model.predict_many([r.inputs for r in rows[60:]])
    for target in TARGETS:
        errs = [abs(p[target].median - r.measured[target]) / r.measured[target]  # type: ignore[operator]
                for p, r in zip(preds, rows[60:], strict=True)]
        assert float(np.median(errs)) < 0.05, (target, np.median(errs))
        inside = [p[target].low <= r.measured[target] <= p[target].high  # type: ignore[operator]
                  for p, r in zip(preds, rows[60:], strict=True)]
        assert np.mean(inside) >= 0.6, (target, np.mean(inside))  # the 10%-90% interval holds most of them


def test_cross_validation_reports_the_median_error_against_a_baseline() -> None:
    cv = cross_validate(_observations(40), hardware="AMD EPYC", meter="estimate", is_estimate=True, folds=5)
    assert {h.trial for h in cv.held_out} == set(range(40))
    for target in TARGETS:
        s = cv.summary[target]
        assert s["n"] == 40
        assert s["median_abs_pct_error"] < 0.1 < s["baseline_median_abs_pct_error"]
    assert "ESTIMATE" in cv.describe() and "held-out MdAPE" in cv.describe()
    json.dumps(cv.to_dict())


def test_too_few_trials_say_how_many_are_needed() -> None:
    with pytest.raises(CostModelError, match="5 measured trial.*needs at least 8.*run 3 or more trials"):
        _fit(_observations(5))


def _fixed(monkeypatch: pytest.MonkeyPatch, energy: tuple[float, float, float], latency: tuple[float, float, float]) -> None:
    def predict(self: CostModel, inputs: CostInputs, *, confidence: float = 0.9) -> dict[str, CostPrediction]:
        return {t: CostPrediction(metric=t, low=lo, median=mid, high=hi, confidence=confidence, log_std=0.1)
                for t, (lo, mid, hi) in zip(TARGETS, (energy, latency), strict=True)}

    monkeypatch.setattr(CostModel, "predict", predict)


@pytest.mark.parametrize(("constraint", "infeasible"), [
    ("energy_per_sample_j < 0.002", True),             # even the 10% quantile (0.003) breaks it
    ("energy_per_sample_j < 0.0035", False),           # the median breaks it, the 10% quantile does not
    ("energy_per_sample_j < 0.01", False),
    ("latency_p50_ms <= 5 and attention == 'softmax'", True),
    ("latency_p50_ms <= 5 and attention == 'linear'", True),  # the candidate field alone breaks it
    ("latency_p50_ms <= 5 or n_layers == 1", False),   # met by the candidate's shape
    ("accuracy > 0.9", False),                         # not known before training: not judged
    ("throughput_samples_s > 1e6", False),             # measured, not predicted: not judged
    ("n_layers > 3", False),                           # the cost model has nothing to add
])
def test_infeasible_only_when_the_whole_interval_breaks_the_constraint(
        monkeypatch: pytest.MonkeyPatch, constraint: str, infeasible: bool) -> None:
    model = _fit(_observations(10))
    _fixed(monkeypatch, energy=(0.003, 0.004, 0.006), latency=(6.0, 8.0, 11.0))
    inputs = CostInputs(candidate=Candidate(n_layers=1), flops_per_sample=1e6, batch_size=32, seq_len=64,
                        aten_ops=50, elements_per_sample=1e5)
    reason = predicted_infeasible(model, inputs, [constraint])
    assert (reason is not None) == infeasible, reason
    if reason:
        assert constraint in reason and "90% confidence" in reason and "ESTIMATE" in reason


def test_the_model_imports_neither_torch_nor_storage() -> None:
    code = "import sys, nas.cost_model; print(sorted({'torch', 'sqlalchemy', 'storage'} & set(sys.modules)))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert res.stdout.strip() == "[]"


def test_the_profile_counts_flops_as_the_trial_does_and_sees_the_attention() -> None:
    from nas.cost_inputs import _profile, candidate_inputs

    softmax = candidate_inputs(_candidate(0), batch_size=32, seq_len=64)
    local = candidate_inputs(_candidate(2), batch_size=32, seq_len=64)  # the same shape, local attention
    assert softmax.aten_ops > 10 and softmax.elements_per_sample > 0
    assert local.aten_ops != softmax.aten_ops
    assert candidate_inputs(_candidate(0), batch_size=32, seq_len=64) == softmax  # cached, deterministic
    _profile.cache_clear()  # the disk cache answers the same
    assert candidate_inputs(_candidate(0), batch_size=32, seq_len=64) == softmax
    assert len(list((Path(os.environ["NAS_CACHE_DIR"]) / "cost_profiles").glob("*.json"))) >= 2


# --------------------------------------------------------------------------------------- a stored study
SPEC = {"name": "s", "measure": {"batch_size": 32, "seq_len": 64}, "constraints": ["energy_per_sample_j < 1e-5"]}


def _store_study(db: Path, n: int, make_result: Callable[..., TrialResult]) -> None:
    """A study of ``n`` COMPLETE trials whose readings follow :func:`_law` of their real profiles."""
    from nas.cost_inputs import candidate_inputs

    rng = np.random.default_rng(0)
    with Store.open(db) as store:
        store.create_study("s", json.dumps(SPEC), [("accuracy", "maximize"), ("energy_per_sample_j", "minimize")])
        for i in range(n):
            x = candidate_inputs(_candidate(i), batch_size=32, seq_len=64)
            measured = _measured(x, rng, 0.02)
            base = make_result(candidate=x.candidate, hardware="AMD EPYC", meter="estimate", is_estimate=True,
                               energy_per_sample_j=measured["energy_per_sample_j"],
                               latency_p50_ms=measured["latency_p50_ms"])
            store.finish_trial("s", i, dataclasses.replace(base, flops_per_sample=x.flops_per_sample),
                               cost=TrialCost())


@pytest.fixture(scope="module")
def study_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("cost") / "nas.db"
    _store_study(db, 24, fake_trial_result)
    return db


def test_a_stored_trial_is_checked_against_a_model_of_the_others(study_db: Path) -> None:
    from nas.cost_study import fit_study, trial_check

    with Store.open(study_db, create=False, read_only=True) as store:
        model = fit_study(store, "s")
        assert (model.hardware, model.meter, model.is_estimate) == ("AMD EPYC", "estimate", True)
        assert dict(model.n_trials) == dict.fromkeys(TARGETS, 24)
        check = trial_check(store, "s", 5)
    assert check is not None and 5 not in check.model.trials and len(check.model.trials) == 23
    for target in TARGETS:
        assert abs(check.error(target) or 1.0) < 0.2, (target, check.error(target))


@pytest.mark.slow
def test_predict_cost_json_on_a_stored_study(study_db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cand = tmp_path / "cand.yaml"
    cand.write_text("n_layers: 2\nd_model: 64\nn_heads: 2\nd_ffn: 96\nmax_len: 64\n")
    code, out, err = run_cli(["predict-cost", str(cand), "--study", "s", "--db", str(study_db), "--json"], capsys)
    assert code == 0, err
    got = json.loads(out)
    assert got["hardware"] == "AMD EPYC" and got["is_estimate"] is True and got["meter"] == "estimate"
    assert got["flops_per_sample"] > 0 and (got["batch_size"], got["seq_len"]) == (32, 64)
    from nas.cost_inputs import candidate_inputs

    law = _law(candidate_inputs(Candidate(n_layers=2, d_model=64, n_heads=2, d_ffn=96, max_len=64), batch_size=32,
                                seq_len=64))
    for target in TARGETS:
        p = got["predictions"][target]
        assert p["low"] < p["median"] < p["high"]
        assert abs(p["median"] / law[target] - 1) < 0.3, (target, p, law[target])
        assert got["held_out"][target]["median_abs_pct_error"] < 0.15
    assert "energy_per_sample_j < 1e-5" in got["predicted_infeasible"]  # the study's constraint, far below


def test_predict_cost_with_too_few_trials_is_one_line_exit_2(tmp_path: Path, make_result: Callable[..., TrialResult],
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "nas.db"
    _store_study(db, 3, make_result)
    cand = tmp_path / "cand.yaml"
    cand.write_text("n_layers: 1\nmax_len: 64\n")
    code, _, err = run_cli(["predict-cost", str(cand), "--study", "s", "--db", str(db)], capsys)
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "3 measured trial(s)" in lines[0] and "needs at least 8" in lines[0], err
    code, _, err = run_cli(["predict-cost", str(cand), "--study", "s", "--db", str(db), "--hardware", "H100"], capsys)
    assert code == 2 and "no COMPLETE trial on hardware 'H100'" in err and "AMD EPYC" in err


def test_predict_cost_with_a_bad_candidate_file_is_one_line_exit_2(study_db: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("n_layers: 0\n")
    code, _, err = run_cli(["predict-cost", str(bad), "--study", "s", "--db", str(study_db)], capsys)
    assert code == 2 and "n_layers" in err and len(err.strip().splitlines()) == 1, err
    code, _, err = run_cli(["predict-cost", str(tmp_path / "none.yaml"), "--study", "s", "--db", str(study_db)], capsys)
    assert code == 2 and "file not found" in err, err


def test_show_prints_predicted_vs_measured(study_db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["show", "s", "3", "--db", str(study_db)], capsys)
    assert code == 0, err
    assert "Predicted vs measured" in out and "other 23 trials" in out and "ESTIMATE" in out
    assert "energy_per_sample_j" in out and "latency_p50_ms" in out


def test_dashboard_route_gives_held_out_errors_and_the_figure(study_db: Path, tmp_path: Path) -> None:
    with dashboard_client(str(study_db), tmp_path / "artefacts") as client:
        r = client.get("/api/studies/s/cost-model")
        assert r.status_code == 200, r.text
        got = r.json()
        assert client.get("/api/studies/s/cost-model").json() == got  # cached until the study changes
        assert client.get("/api/studies/nosuch/cost-model").status_code == 404
        page = client.get("/studies/s").text
    (hw,) = got["hardware"]
    assert (hw["hardware"], hw["energy_label"], got["folds"]) == ("AMD EPYC", "ESTIMATE (estimate)", 5)
    for target in TARGETS:
        assert hw["summary"][target]["n"] == 24 and hw["summary"][target]["median_abs_pct_error"] < 0.15
    roles = {t["meta"]["role"] for t in got["figure"]["data"]}
    assert roles == {"held-out", "diagonal"}
    assert 'data-role="cost-model-plot"' in page and got["note"] is None
