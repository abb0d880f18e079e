"""``nas remeasure``: a finished study's stored models measured again on another machine (issue #15 item 3).

The study is built in the test: one candidate really trained (briefly) with its weights kept, stored as if
its search had run on another machine (``OTHER``), one trial without weights and one failure. Measuring it
here, on this CPU, is then a second machine; under the fake-GPU harness (tests/fakegpu) a third.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from evaluators.pipeline import run_trial
from evaluators.remeasure import this_hardware
from nas.cli import main
from nas.config import Candidate, TrainConfig
from nas.errors import ConfigError
from nas.records import TrialResult
from nas.runner.remeasure import remeasure
from nas.spec import StudySpec
from storage import Store, TrialCost
from tests.conftest import dashboard_client, fake_trial_result
from tests.fakegpu.nas_fake_gpu import NAME
from tests.test_multi_gpu import fake_gpu_env
from tests.test_search import ROOT, small_spec

OTHER = "OTHER-MACHINE 9000 (where the search ran)"
COST = TrialCost(train_energy_j=1.0, measure_energy_j=0.1, co2eq_g=None, wall_s=1.0, gpu_s=0.0,
                 meter="estimate", is_estimate=True)


def _elsewhere(result: TrialResult) -> TrialResult:
    """``result`` as if measured on the machine ``OTHER``."""
    inf = result.inference
    assert inf is not None
    prov = dataclasses.replace(inf.provenance, device_name=OTHER)
    return dataclasses.replace(result, inference=dataclasses.replace(inf, provenance=prov))


@pytest.fixture(scope="module")
def study_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stored study: trial 0 trained with weights kept, trial 1 without weights, trial 2 failed."""
    tmp = tmp_path_factory.mktemp("remeasure")
    # 5 training steps leave trial 0 near chance: the majority rule would keep it off every front
    spec = StudySpec.model_validate(small_spec("rm", tmp / "nas.db", trials=3, front={"require_above_majority": False}))
    cand = Candidate(n_layers=1, d_model=16, n_heads=2, d_ffn=32, max_len=32)
    result = run_trial(cand, "builtin:sentiment", train_cfg=TrainConfig(steps=5, batch_size=16),
                       measure_cfg=spec.measure, weights_out=tmp / "w0")
    assert result.weights_path is not None
    store = Store.open(tmp / "nas.db")
    store.create_study("rm", spec.model_dump_json(), [("accuracy", "maximize"), ("energy_per_sample_j", "minimize")])
    store.start_trial("rm", 0, cand)
    store.finish_trial("rm", 0, _elsewhere(result), cost=COST)
    store.add_artefact("rm", 0, "weights", result.weights_path)
    cheap = fake_trial_result(candidate=Candidate(n_layers=2, max_len=32), accuracy=0.01, energy_per_sample_j=1e-9,
                              hardware=OTHER, meter="estimate", is_estimate=True)
    store.start_trial("rm", 1, cheap.candidate)
    store.finish_trial("rm", 1, cheap, cost=COST)
    store.start_trial("rm", 2, Candidate(n_layers=3))
    store.fail_trial("rm", 2, "out of memory")
    store.close()
    return tmp / "nas.db"


def _readings(db: Path) -> list[tuple[int, str, str | None]]:
    with Store.open(db, create=False, read_only=True) as s:
        return [(n, r.hardware_fingerprint or "", r.origin) for n in (0, 1) for r in s.readings("rm", n)
                if r.kind.startswith("inference")]


def test_remeasure_adds_this_machines_front_and_twice_adds_nothing(study_db: Path) -> None:
    here = this_hardware("cpu")
    assert here != OTHER
    report = remeasure("rm", db=str(study_db), device="cpu")  # default: the front members, 0 and 1
    assert [t.number for t in report.trials] == [0, 1] and report.hardware == here and report.measured == 1
    t0, t1 = report.trials
    assert t0.skipped is None and [r.serving_form for r in t0.readings] == ["eager"]
    reading = t0.readings[0]
    assert reading.provenance.hardware_fingerprint == here and reading.meter == "estimate" and reading.is_estimate
    assert reading.energy_per_sample_j is not None and reading.energy_per_sample_j > 0
    assert t1.readings == () and t1.skipped is not None and "no weights" in t1.skipped
    with Store.open(study_db, create=False, read_only=True) as store:
        assert store.hardware_fingerprints("rm") == sorted([OTHER, here])
        mine = store.front("rm", hardware=here)
        assert [(t.number, t.remeasured, t.hardware_fingerprint) for t in mine] == [(0, True, here)]
        assert mine[0].flat["energy_per_sample_j"] == reading.energy_per_sample_j
        assert [t.number for t in store.front("rm", hardware=OTHER)] == [0, 1]  # the search's own front stands
        persisted = [(e.hardware_fingerprint, e.trial_number) for e in store.persisted_front("rm")]
        assert persisted == [(t.hardware_fingerprint, t.number) for t in store.front("rm")]
    before = _readings(study_db)
    assert before.count((0, here, "remeasure")) == 1
    again = remeasure("rm", db=str(study_db), device="cpu", trials=[0])
    assert again.measured == 0 and again.trials[0].skipped is not None
    assert again.trials[0].skipped.startswith(f"already measured on {here}")
    assert _readings(study_db) == before  # nothing new, nothing lost


def test_pareto_shows_one_table_per_machine(study_db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    remeasure("rm", db=str(study_db), device="cpu", trials=[0])
    main(["pareto", "rm", "--db", str(study_db)])
    shown = capsys.readouterr().out
    assert f"on {OTHER}" in shown and f"on {this_hardware('cpu')}" in shown and "re-measured" in shown
    main(["pareto", "rm", "--db", str(study_db), "--json", "--hardware", this_hardware("cpu")])
    rows = json.loads(capsys.readouterr().out)
    assert [(r["number"], r["hardware"], r["remeasured"]) for r in rows] == [(0, this_hardware("cpu"), True)]


@pytest.mark.parametrize(("args", "message"), [
    (["--trials", "2"], "only COMPLETE trials can be re-measured; not: 2 (FAIL)"),
    (["--trials", "0,7"], "not: 7 (missing)"),
    (["--trials", "two"], "--trials takes trial numbers separated by commas"),
    (["--front", "--trials", "0"], "--front and --trials both choose the trials"),
    (["--serving-form", "cuda_graph", "--device", "cpu"], "serving form 'cuda_graph' cannot be measured on cpu"),
    (["--serving-form", "tensorflow"], "--serving-form"),
])
def test_bad_requests_fail_in_one_line_before_measuring(study_db: Path, capsys: pytest.CaptureFixture[str],
                                                        args: list[str], message: str) -> None:
    before = _readings(study_db)
    with pytest.raises(SystemExit) as e:
        main(["remeasure", "rm", "--db", str(study_db), *args])
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in " ".join(err.split()) and len(err.strip().splitlines()) == 1
    assert _readings(study_db) == before


def test_unknown_study_is_a_clear_error(study_db: Path) -> None:
    with pytest.raises(Exception, match="nope"):
        remeasure("nope", db=str(study_db))
    with pytest.raises(ConfigError, match="only COMPLETE"):
        remeasure("rm", db=str(study_db), trials=[2])


@pytest.mark.slow
def test_a_gpu_machine_gets_its_own_front_beside_the_searchs(study_db: Path, tmp_path: Path) -> None:
    """On a (fake) GPU node: the readings carry the board's name, and `nas pareto --hardware` shows its front."""
    cmd = [sys.executable, "-m", "nas", "remeasure", "rm", "--db", str(study_db), "--device", "cuda:0",
           "--trials", "0", "--json"]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=fake_gpu_env(tmp_path, 1), timeout=300)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["hardware"] == NAME and [len(t["readings"]) for t in report["trials"]] == [1]
    assert report["trials"][0]["readings"][0]["provenance"]["device_name"] == NAME
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=fake_gpu_env(tmp_path, 1), timeout=300)
    assert res.returncode == 0 and json.loads(res.stdout)["trials"][0]["readings"] == []  # twice: nothing new
    with Store.open(study_db, create=False, read_only=True) as store:
        assert NAME in store.hardware_fingerprints("rm") and OTHER in store.hardware_fingerprints("rm")
        assert [(t.number, t.hardware_fingerprint) for t in store.front("rm", hardware=NAME)] == [(0, NAME)]


def test_the_dashboard_shows_each_machines_front_side_by_side(study_db: Path) -> None:
    """The study page's `machines` figure: one panel per machine, front members solid on each."""
    remeasure("rm", db=str(study_db), device="cpu", trials=[0])
    with dashboard_client(str(study_db), study_db.parent / "artefacts") as client:
        d = client.get("/api/studies/rm/dashboard").json()
        pareto = client.get("/api/studies/rm/pareto").json()
        detail = client.get("/api/studies/rm/trials/0").json()
    fig = d["figures"]["machines"]
    with Store.open(study_db, create=False, read_only=True) as store:
        machines = store.hardware_fingerprints("rm")  # the fake GPU's too when the slow test ran first
    panels = {t["meta"]["hardware"]: t.get("xaxis") for t in fig["data"]}
    assert set(panels) == set(machines) and this_hardware("cpu") in panels
    assert panels[OTHER] == "x" and len(set(panels.values())) == len(machines)  # the search's machine first
    assert {k for k in fig["layout"] if k.startswith("xaxis")} == {"xaxis", *(f"xaxis{i}" for i in
                                                                              range(2, len(machines) + 1))}
    here = [t for t in fig["data"] if t["meta"]["hardware"] == this_hardware("cpu") and t["meta"]["role"] == "front"]
    assert [p[0] for t in here for p in t["customdata"]] == [0]
    assert d["front"] == [0, 1]  # the search's own front; the re-measured one is not mixed in
    assert sorted((t["number"], t["remeasured"]) for t in pareto["trials"]) == sorted(
        [(0, False), (1, False)] + [(0, True)] * (len(machines) - 1))  # trial 0 on each machine's front
    assert [r["origin"] for r in detail["readings"] if r["kind"].startswith("inference")] == [None] + [
        "remeasure"] * (len(machines) - 1)


def test_nas_show_lists_the_readings_taken_elsewhere(study_db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    remeasure("rm", db=str(study_db), device="cpu", trials=[0])
    main(["show", "rm", "0", "--db", str(study_db)])
    shown = " ".join(capsys.readouterr().out.split())
    assert "re-measured on" in shown and "ESTIMATE" in shown.split("re-measured on")[1]  # the table wraps names


def test_a_database_copied_with_its_artefacts_folder_finds_its_weights(study_db: Path, tmp_path: Path) -> None:
    """Another machine gets `nas.db` and `nas_artefacts/` copied: the recorded absolute path no longer exists."""
    import shutil
    import sqlite3

    from nas.export.source import open_trial

    shutil.copy(study_db, tmp_path / "nas.db")
    with Store.open(study_db, create=False, read_only=True) as s:
        weights = Path(next(a.path for a in s.artefacts("rm", 0) if a.kind == "weights"))
    shutil.copytree(weights, tmp_path / "nas_artefacts" / "rm" / weights.name)
    con = sqlite3.connect(tmp_path / "nas.db")
    with con:
        con.execute("UPDATE nas_artefacts SET path = ? WHERE kind = 'weights'", (f"/gone/nas_artefacts/rm/{weights.name}",))
    con.close()
    src = open_trial("rm", 0, str(tmp_path / "nas.db"))
    assert src.weights == tmp_path / "nas_artefacts" / "rm" / weights.name and src.weights_problem is None
    (tmp_path / "nas_artefacts" / "rm" / weights.name / "model.safetensors").unlink()
    src = open_trial("rm", 0, str(tmp_path / "nas.db"))
    assert src.weights is None and "gone from disk" in (src.weights_problem or "")
