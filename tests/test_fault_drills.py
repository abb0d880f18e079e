"""Fault drills, end to end (slow: each starts local Ray): the cost of every trial is counted however
it ends, a killed driver leaves nothing running and never replays a candidate on resume, a database
deleted mid-search stops the search loudly, and a failing write leaves Optuna and our tables agreeing."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from storage import Store
from tests.test_search import ROOT, nas_cli, small_spec, write_spec

pytestmark = pytest.mark.slow


@pytest.fixture
def tmp_path(tmp_path: Path) -> Any:
    """A short private folder (Ray's socket paths must stay under 108 bytes) with a ``tmp/`` inside."""
    short = Path(tempfile.mkdtemp(prefix="nasd-", dir="/tmp"))
    (short / "tmp").mkdir()
    yield short
    shutil.rmtree(short, ignore_errors=True)


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A private temp dir (to see what a search leaves there) and Ray registry."""
    return {"TMPDIR": str(tmp_path / "tmp"), "NAS_RAY_REGISTRY": str(tmp_path / "registry"), **extra}


def _optuna_states(db: Path, study: str) -> dict[int, str]:
    import optuna

    ot = optuna.load_study(study_name=study, storage=f"sqlite:///{db}")
    return {t.number: t.state.name for t in ot.trials}


def _assert_consistent(db: Path, study: str) -> None:
    """Our trial states and Optuna's agree: COMPLETE in one is COMPLETE in the other."""
    ours = {v.number: v.state for v in Store.open(str(db), create=False).trials(study)}
    theirs = _optuna_states(db, study)
    for n, state in theirs.items():
        if state == "COMPLETE":
            assert ours.get(n) == "COMPLETE", (n, ours.get(n))
        if state == "RUNNING":
            pytest.fail(f"Optuna trial {n} left RUNNING")
    for n, state in ours.items():
        assert state != "RUNNING", n
        if state == "COMPLETE":
            assert theirs.get(n) == "COMPLETE", (n, theirs.get(n))


def test_asha_and_a_failing_candidate_every_joule_counted(tmp_path: Path) -> None:
    """The acceptance drill: the study's training joules equal the sum of every trial's, stopped and
    failed ones included, and each of those is metered."""
    db = tmp_path / "nas.db"
    spec = small_spec("cost", db, trials=8, fidelity={"rungs": [40, 80, 160], "reduction_factor": 2})
    path = write_spec(tmp_path, spec)
    res = nas_cli("search", str(path), "--quiet", "--db", str(db),
                  env=_env(tmp_path, NAS_FAIL_IF="d_model == 16 and d_ffn == 16"))
    assert res.returncode == 0, res.stderr[-3000:]
    store = Store.open(str(db), create=False)
    views = store.trials("cost")
    ran = [v for v in views if v.cost is not None]
    states = {v.state for v in ran}
    assert "PRUNED" in states and "COMPLETE" in states, [(v.number, v.state, v.fail_reason) for v in views]
    failed = [v for v in ran if v.state == "FAIL"]
    assert failed and all("injected fault" in (v.fail_reason or "") for v in failed)
    for v in ran:  # every trial that trained has its training joules metered
        assert v.cost.train_energy_j is not None and v.cost.train_energy_j > 0, (v.number, v.state)
    for v in failed + [v for v in ran if v.state == "COMPLETE"]:
        readings = [r for r in store.readings("cost", v.number) if r.kind in ("train", "teacher-train", "teacher-cache")]
        assert v.cost.train_energy_j == pytest.approx(sum(r.energy_j for r in readings))
        assert readings[0].hardware_fingerprint != "cpu" and readings[0].provenance["host_id"]
    # every rung a trial reached is stored as it arrived: a stopped trial's end with the rung it stopped at
    for v in (v for v in ran if v.state == "PRUNED"):
        assert v.rung_accuracies and f"at step {v.rung_accuracies[-1][0]} " in (v.fail_reason or ""), v
    assert all([s for s, _ in v.rung_accuracies] == [40, 80] for v in ran if v.state == "COMPLETE")
    fidelity = json.loads(nas_cli("show", "cost", "--json", "--db", str(db)).stdout)["fidelity"]
    assert fidelity["shown"] and fidelity["pairs"][0]["low_step"] == 40 and fidelity["final_step"] == 160
    info = store.get_study("cost")
    assert info.train_energy_j == pytest.approx(sum(v.cost.train_energy_j for v in ran))
    assert info.n_trials_unmetered == 0 and info.co2eq_g is None  # the estimate meter gives no CO2
    _assert_consistent(db, "cost")
    assert not list((tmp_path / "tmp").glob("nas-tune-*")), "the search left its Tune folder behind"
    assert not (db.parent / "nas_artefacts" / "cost" / ".staging").exists() or \
        not list((db.parent / "nas_artefacts" / "cost" / ".staging").iterdir())


def _ray_pids(registry: Path) -> list[tuple[int, float]]:
    out = []
    for f in registry.glob("*.json"):
        out += [(int(p), float(c)) for p, c in json.loads(f.read_text())["processes"]]
    return out


def _alive(pid: int, created: float) -> bool:
    try:
        p = psutil.Process(pid)
        return abs(p.create_time() - created) < 1e-3 and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@pytest.mark.parametrize("kind", ["tpe", "gp", "evolution"])
def test_kill_9_of_the_driver_then_resume(tmp_path: Path, kind: str) -> None:
    """Nothing lost or duplicated, the budget finished, no Ray process left, nothing in the temp dir, Optuna
    and our tables agree; the resumed GP proposes again; the resumed evolution breeds from the stored trials."""
    db = tmp_path / "nas.db"
    spec = small_spec("k9", db, trials=6)
    spec["sampler"] = ({"kind": kind, "seed": 0, "population": 3, "sample_size": 2} if kind == "evolution" else
                       {"kind": kind, "seed": 0, "n_startup_trials": 3 if kind == "tpe" else 2})
    path = write_spec(tmp_path, spec)
    env = {**os.environ, **_env(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "nas", "search", str(path), "--quiet", "--db", str(db)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline:
        time.sleep(1.0)
        try:
            views = Store.open(str(db), create=False).trials("k9")
        except Exception:
            continue
        if sum(v.state == "COMPLETE" for v in views) >= 2 and any(v.state == "RUNNING" for v in views):
            break
    ray_procs = _ray_pids(tmp_path / "registry")
    assert ray_procs, "the search recorded no Ray processes"
    proc.send_signal(signal.SIGKILL)  # the driver alone: its Ray processes are orphaned
    proc.wait(timeout=30)
    asked_before_kill = max(_optuna_states(db, "k9"))
    before = {v.number: v.state for v in Store.open(str(db), create=False).trials("k9")}

    res = nas_cli("search", "--resume", "k9", "--quiet", "--db", str(db), env=_env(tmp_path))
    assert res.returncode == 0, res.stderr[-3000:]
    left = [p for p in ray_procs if _alive(*p)]
    assert not left, f"Ray processes of the killed driver still run: {left}"
    assert not list((tmp_path / "registry").glob("*.json"))
    views = Store.open(str(db), create=False).trials("k9")
    numbers = [v.number for v in views]
    assert len(numbers) == len(set(numbers)), "a trial was duplicated"
    by_number = {v.number: v for v in views}
    for n, state in before.items():  # nothing lost: every earlier trial is still there, COMPLETE stays so
        assert n in by_number and (state != "COMPLETE" or by_number[n].state == "COMPLETE"), (n, state)
    interrupted = [by_number[n] for n, state in before.items() if state == "RUNNING"]
    assert all(v.state == "FAIL" and v.retryable and "interrupted" in v.fail_reason for v in interrupted)
    complete = [v.candidate_hash for v in views if v.state == "COMPLETE"]
    assert len(complete) == 6 and len(set(complete)) == 6, "a candidate was evaluated twice"
    _assert_consistent(db, "k9")
    assert not list((tmp_path / "tmp").glob("nas-tune-*"))
    if kind == "gp":  # the resumed driver's GP fitted the stored history and proposed the new candidates
        import optuna

        resumed = [t for t in optuna.load_study(study_name="k9", storage=f"sqlite:///{db}").trials
                   if t.number > asked_before_kill]
        assert resumed and any(k.startswith("gp:relative_params") for t in resumed for k in t.system_attrs)
    if kind == "evolution":  # the resumed driver's sampler read the population from the database
        import optuna

        from nas.runner.evolution import PARENT_KEY

        trials = optuna.load_study(study_name="k9", storage=f"sqlite:///{db}").trials
        complete = {t.number for t in trials if t.state == optuna.trial.TrialState.COMPLETE}
        children = [t for t in trials if t.number > asked_before_kill and PARENT_KEY in t.system_attrs]
        assert children and all(t.system_attrs[PARENT_KEY] in complete for t in children)


def test_rerunning_the_same_spec_draws_new_candidates(tmp_path: Path) -> None:
    """Regression: re-running a finished spec replayed the sampler's sequence."""
    db = tmp_path / "nas.db"
    path = write_spec(tmp_path, small_spec("again", db, trials=3))
    for budget in ("3", "6"):
        res = nas_cli("search", str(path), "--quiet", "--db", str(db), "--trials", budget, env=_env(tmp_path))
        assert res.returncode == 0, res.stderr[-3000:]
    complete = [v.candidate_hash for v in Store.open(str(db), create=False).trials("again") if v.state == "COMPLETE"]
    assert len(complete) == 6 and len(set(complete)) == 6


def test_database_deleted_mid_search_stops_loudly(tmp_path: Path) -> None:
    db = tmp_path / "nas.db"
    path = write_spec(tmp_path, small_spec("gone", db, trials=8))
    env = {**os.environ, **_env(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "nas", "search", str(path), "--quiet", "--db", str(db)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline:
        time.sleep(0.5)
        try:
            if any(v.state == "COMPLETE" for v in Store.open(str(db), create=False).trials("gone")):
                break
        except Exception:
            continue
    db.unlink()
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, (out[-2000:], err[-3000:])
    last = [ln for ln in err.splitlines() if ln.strip()][-1]
    assert "was deleted while this process was writing" in last and "rescued" in last
    rescued = next(tmp_path.glob("nas.db.rescued-*"))
    views = Store.open(str(rescued), create=False).trials("gone")
    assert any(v.state == "COMPLETE" for v in views)
    assert not list((tmp_path / "tmp").glob("nas-tune-*"))


def test_a_failing_write_stops_the_search_with_optuna_and_ours_consistent(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: on a full disk a trial was FAIL in our tables and COMPLETE in Optuna's."""
    import nas
    from nas.errors import StorageError
    from nas.spec import StudySpec

    db = tmp_path / "nas.db"
    for k, v in _env(tmp_path).items():
        monkeypatch.setenv(k, v)
    real = Store.finish_trial
    calls: list[int] = []

    def full_disk(self: Store, study: str, number: int, result: Any, **kw: Any) -> None:
        calls.append(number)
        if len(calls) == 2:
            raise StorageError("database error on nas.db: OperationalError: database or disk is full")
        real(self, study, number, result, **kw)

    monkeypatch.setattr(Store, "finish_trial", full_disk)
    with pytest.raises(StorageError, match="disk is full"):
        nas.search(StudySpec.model_validate(small_spec("full", db, trials=5)), db=str(db))
    monkeypatch.setattr(Store, "finish_trial", real)
    _assert_consistent(db, "full")
    views = Store.open(str(db), create=False).trials("full")
    assert sum(v.state == "COMPLETE" for v in views) >= 1
    assert Store.open(str(db), create=False).get_study("full").status != "RUNNING"
