"""The teacher as the reference everywhere: its record, the ratios, and every display of them.

A study with a measured teacher shows the teacher's point and each front member's dev-accuracy ratio and
J/sample ratio to it in ``nas pareto`` (table, ``--json``, ``--csv``), ``nas show``, ``nas.pareto()``,
the HTTP API and the dashboard, and the export card. A J/sample ratio is made only between numbers of the
same meter. The storage side (round trip, the cost counted once, the migration) is in the storage
contract (``tests/storage_contract.py``).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from collections.abc import Iterator
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

import nas
from nas.cli import app
from nas.cli.render import front_table, teacher_line, trial_view
from nas.config import Candidate
from nas.records import TrialResult
from nas.reference import TeacherReference, ratio_text, ratios_to_teacher
from nas.spec import default_spec
from storage import Store, TrialCost
from tests.conftest import dashboard_client, fake_teacher_reference, fake_trial_result

STUDY = "distil"
PLAIN = "plain"
OBJ2 = [("accuracy", "maximize"), ("energy_per_sample_j", "minimize")]
#: The teacher: dev accuracy 0.9 at 1e-2 J/sample (nvml-counter).
TEACHER_ACC, TEACHER_J = 0.9, 1e-2
#: (dev accuracy, J/sample, meter): trials 0-2 are the front; 3 is dominated by 1. Trial 2, the most
#: accurate, was measured by another meter, so its J/sample cannot be compared with the teacher's.
TRIALS = [(0.882, 1.8e-3, "nvml-counter"), (0.81, 9e-4, "nvml-counter"), (0.95, 5e-2, "codecarbon"),
          (0.80, 1e-3, "nvml-counter")]
FRONT = [0, 1, 2]


def _teacher(**kw: Any) -> TeacherReference:
    return fake_teacher_reference(accuracy=TEACHER_ACC, energy_per_sample_j=TEACHER_J, **kw)


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = str(tmp_path_factory.mktemp("teacher") / "nas.db")
    with Store.open(path) as store:
        for name in (STUDY, PLAIN):
            store.create_study(name, default_spec().with_overrides(name=name).model_dump_json(), OBJ2)
            for i, (acc, joules, meter) in enumerate(TRIALS):
                r = fake_trial_result(candidate=Candidate(d_ffn=8 + i), accuracy=acc, energy_per_sample_j=joules,
                                      meter=meter)
                store.finish_trial(name, i, r, cost=TrialCost.from_result(r))
        store.put_teacher_reference(STUDY, _teacher())
    return path


def _cli(*args: str) -> str:
    res = CliRunner().invoke(app, list(args))
    assert res.exit_code == 0, res.output
    return res.stdout


# --- the record and the ratios ---------------------------------------------------------------------
def test_record_round_trips_through_json_and_sums_its_cost() -> None:
    ref = fake_teacher_reference(fine_tune_j=400.0, cache_build_j=50.0, protocol_energy_j=30.0)
    again = TeacherReference.from_dict(json.loads(json.dumps(ref.to_dict())))
    assert again == ref
    assert (ref.train_energy_j, ref.measure_energy_j, ref.search_cost_j) == (450.0, 30.0, 480.0)
    assert ref.search_co2eq_g == pytest.approx(480.0 * 1e-4)
    cached = fake_teacher_reference(fine_tune_j=None, cache_build_j=None, protocol_energy_j=None)
    assert cached.train_energy_j is None and cached.search_cost_j is None  # nothing known: not read as 0
    assert fake_teacher_reference(fine_tune_j=None, cache_build_j=7.0, protocol_energy_j=None).search_cost_j == 7.0


def test_ratios_need_the_same_meter_hardware_and_protocol() -> None:
    ref = _teacher()
    same = ratios_to_teacher(0.882, 1.8e-3, "nvml-counter", ref)
    assert same.accuracy_ratio == pytest.approx(0.98) and same.energy_ratio == pytest.approx(0.18)
    assert same.note == ""
    other = ratios_to_teacher(0.95, 5e-2, "codecarbon", ref)
    assert other.accuracy_ratio == pytest.approx(0.95 / 0.9) and other.energy_ratio is None
    assert other.note == "different meters: codecarbon vs nvml-counter"
    hw = ratios_to_teacher(0.8, 1e-3, "nvml-counter", ref, hardware="NVIDIA A100")
    assert hw.energy_ratio is None and hw.note == "different hardware: NVIDIA A100 vs NVIDIA H100 80GB HBM3"
    shape = ratios_to_teacher(0.8, 1e-3, "nvml-counter", ref, batch_size=32, seq_len=128)
    assert shape.energy_ratio is None and "different protocol" in shape.note
    none = ratios_to_teacher(None, None, None, ref)
    assert none.accuracy_ratio is None and none.energy_ratio is None and "no dev accuracy" in none.note
    unmeasured = ratios_to_teacher(0.8, 1e-3, "nvml-counter", _teacher(hardware=None))
    assert unmeasured.energy_ratio is None and "teacher's J/sample was not measured" in unmeasured.note
    assert [ratio_text(v) for v in (0.97, 0.18, 0.034, None)] == ["0.97x", "0.18x", "0.034x", "-"]


# --- nas pareto, nas show, nas.pareto() ----------------------------------------------------------------
def test_pareto_json_adds_ratios_and_the_teacher_to_each_row(db: str) -> None:
    rows = {r["number"]: r for r in json.loads(_cli("pareto", STUDY, "--db", db, "--json"))}
    assert sorted(rows) == FRONT
    assert rows[0]["accuracy_ratio_to_teacher"] == pytest.approx(0.882 / TEACHER_ACC)
    assert rows[0]["energy_ratio_to_teacher"] == pytest.approx(1.8e-3 / TEACHER_J)
    assert rows[1]["energy_ratio_to_teacher"] == pytest.approx(9e-4 / TEACHER_J)
    assert rows[2]["energy_ratio_to_teacher"] is None
    assert rows[2]["teacher_ratio_note"] == "different meters: codecarbon vs nvml-counter"
    assert rows[0]["teacher"] == {"name": "/models/bert-tiny", "accuracy": TEACHER_ACC, "test_accuracy": 0.88,
                                  "energy_per_sample_j": TEACHER_J, "meter": "nvml-counter", "is_estimate": False,
                                  "hardware": "NVIDIA H100 80GB HBM3"}
    plain = json.loads(_cli("pareto", PLAIN, "--db", db, "--json"))  # no teacher: rows as before
    assert sorted(r["number"] for r in plain) == FRONT
    assert not {"teacher", "accuracy_ratio_to_teacher", "energy_ratio_to_teacher"} & set(plain[0])


def test_pareto_csv_has_the_ratio_columns(db: str) -> None:
    rows = {int(r["number"]): r for r in csv.DictReader(io.StringIO(_cli("pareto", STUDY, "--db", db, "--csv")))}
    assert float(rows[1]["energy_ratio_to_teacher"]) == pytest.approx(0.09)
    assert float(rows[1]["accuracy_ratio_to_teacher"]) == pytest.approx(0.9)
    assert rows[2]["energy_ratio_to_teacher"] == "" and rows[1]["teacher_meter"] == "nvml-counter"
    header = _cli("pareto", PLAIN, "--db", db, "--csv").splitlines()[0]
    assert "teacher" not in header


def test_pareto_table_shows_the_teacher_line_and_ratio_columns(db: str) -> None:
    out = _cli("pareto", STUDY, "--db", db)
    assert "teacher /models/bert-tiny" in out and "J/sample 0.01 J (meter nvml-counter, measured)" in out
    front = nas.pareto(STUDY, db=db)
    console = Console(width=250, record=True, file=io.StringIO())
    console.print(front_table(front.trials, front.objectives, teacher=front.teacher))
    table = console.export_text()
    assert "acc/teacher" in table and "J/teacher" in table
    lines = {line.split()[1]: line for line in table.splitlines() if line.split()[1:2] in (["0"], ["1"], ["2"])}
    assert "0.98x" in lines["0"] and "0.18x" in lines["0"]
    assert "0.90x" in lines["1"] and "0.09" in lines["1"]
    assert "1.06x" in lines["2"] and " - " in lines["2"]  # another meter: no J/sample ratio
    assert "acc/teacher" not in _cli("pareto", PLAIN, "--db", db)


def test_an_estimated_teacher_is_labelled_estimate() -> None:
    line = teacher_line(_teacher(meter="estimate", is_estimate=True))
    assert "meter estimate, ESTIMATE" in line and line.endswith("(ESTIMATE)")


def test_python_api_front_exposes_the_teacher_and_ratios(db: str) -> None:
    front = nas.pareto(STUDY, db=db)
    assert front.teacher == _teacher()
    assert sorted(front.ratios) == FRONT
    assert front.ratios[1].energy_ratio == pytest.approx(0.09)
    assert front.ratios[2].energy_ratio is None
    plain = nas.pareto(PLAIN, db=db)
    assert plain.teacher is None and plain.ratios == {}


def test_show_has_a_teacher_section(db: str) -> None:
    data = json.loads(_cli("show", STUDY, "0", "--db", db, "--json"))
    assert data["accuracy_ratio_to_teacher"] == pytest.approx(0.98)
    assert data["energy_ratio_to_teacher"] == pytest.approx(0.18)
    assert data["teacher"]["meter"] == "nvml-counter"
    with Store.open(db, create=False) as store:
        view, ref = store.trial(STUDY, 2), store.teacher_reference(STUDY)
    console = Console(width=250, record=True, file=io.StringIO())
    console.print(trial_view(view, ref))
    text = console.export_text()
    assert "teacher (reference)" in text and "dev accuracy / teacher's" in text and "1.06x" in text
    assert "different meters: codecarbon vs nvml-counter" in text
    plain = json.loads(_cli("show", PLAIN, "0", "--db", db, "--json"))  # no teacher: as before
    assert not {"teacher", "accuracy_ratio_to_teacher", "energy_ratio_to_teacher"} & set(plain)


# --- the dashboard -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def client(db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with dashboard_client(db, tmp_path_factory.mktemp("artefacts")) as c:
        yield c


def test_api_teacher_route(client: Any) -> None:
    body = client.get(f"/api/studies/{STUDY}/teacher").json()
    assert body["teacher"]["accuracy"] == TEACHER_ACC and body["teacher"]["energy_per_sample_j"] == TEACHER_J
    assert body["teacher"]["energy_label"] == "measured (nvml-counter)"
    assert body["teacher"]["search_cost_j"] == pytest.approx(480.0)
    assert TeacherReference.from_dict(body["record"]) == _teacher()
    ratios = {r["number"]: r for r in body["front"]}
    assert sorted(ratios) == FRONT and ratios[0]["energy_ratio_to_teacher"] == pytest.approx(0.18)
    assert client.get(f"/api/studies/{PLAIN}/teacher").json() == {"study": PLAIN, "teacher": None, "record": None,
                                                                  "front": []}
    assert client.get("/api/studies/nope/teacher").status_code == 404


def test_dashboard_draws_the_teacher_and_gives_each_row_its_ratios(client: Any) -> None:
    d = client.get(f"/api/studies/{STUDY}/dashboard").json()
    stars = [t for t in d["figures"]["front"]["data"] if t.get("meta", {}).get("role") == "teacher"]
    assert len(stars) == 1 and stars[0]["x"] == [TEACHER_J] and stars[0]["y"] == [TEACHER_ACC]
    assert stars[0]["text"] == ["teacher"] and "measured (nvml-counter)" in stars[0]["customdata"][0][2]
    rows = {r["number"]: r for r in d["trials"]}
    assert rows[1]["teacher_ratios"]["energy_ratio_to_teacher"] == pytest.approx(0.09)
    assert rows[3]["teacher_ratios"]["accuracy_ratio_to_teacher"] == pytest.approx(0.8 / 0.9)
    assert d["teacher"]["name"] == "/models/bert-tiny"
    assert d["summary"]["cost"]["teacher_energy_j"] == pytest.approx(480.0)
    pareto = client.get(f"/api/studies/{STUDY}/pareto").json()
    assert pareto["teacher"]["meter"] == "nvml-counter"
    assert {t["number"]: t["teacher_ratios"]["energy_ratio_to_teacher"] for t in pareto["trials"]}[2] is None
    trial = client.get(f"/api/studies/{STUDY}/trials/0").json()
    assert trial["teacher"]["accuracy"] == TEACHER_ACC
    assert trial["teacher_ratios"]["accuracy_ratio_to_teacher"] == pytest.approx(0.98)
    plain = client.get(f"/api/studies/{PLAIN}/dashboard").json()
    assert plain["teacher"] is None and plain["trials"][0]["teacher_ratios"] is None
    assert not [t for t in plain["figures"]["front"]["data"] if t.get("meta", {}).get("role") == "teacher"]


# --- the export card ---------------------------------------------------------------------------------
def _card_inputs(db: str, teacher: TeacherReference | None, final: TrialResult | None = None) -> Any:
    from nas.export.card import CardInputs

    with Store.open(db, create=False) as store:
        info, view = store.get_study(STUDY), store.trial(STUDY, 1)
    assert view.result is not None
    return CardInputs(study=info, trial=1, task=view.result.task, search=view.result, final=final, retrain_steps=None,
                      readings=(), parity=(), files=(), command="nas export", weights_source="saved",
                      labels=("neg", "pos"), teacher=teacher)


def test_card_has_a_teacher_reference_section(db: str) -> None:
    from nas.export.card import metrics_json, render_card
    from nas.export.source import open_trial

    src = open_trial(STUDY, 1, db)
    assert src.teacher == _teacher()
    card = render_card(_card_inputs(db, src.teacher))
    section = card.split("## Teacher reference", 1)[1].split("\n## ", 1)[0]
    assert "teacher dev accuracy: 0.9; test accuracy: 0.88" in section
    assert "teacher energy per sample: 0.01 J (meter nvml-counter, measured)" in section
    assert f"| search (database) | 0.90x | {ratio_text(0.09)} | - |" in section
    doc = json.loads(metrics_json(_card_inputs(db, src.teacher)))
    assert doc["teacher"]["ratios"]["search"]["energy_ratio_to_teacher"] == pytest.approx(0.09)
    assert doc["study_cost"]["teacher_energy_j"] == pytest.approx(480.0)
    assert "Teacher reference" not in render_card(_card_inputs(db, None))


def test_card_labels_an_estimated_teacher_and_refuses_a_cross_meter_ratio(db: str) -> None:
    from nas.export.card import render_card

    ref = _teacher(meter="estimate", is_estimate=True)
    final = dataclasses.replace(fake_trial_result(accuracy=0.85, energy_per_sample_j=2e-3, meter="estimate",
                                                  is_estimate=True), task="builtin:parity")
    section = render_card(_card_inputs(db, ref, final)).split("## Teacher reference", 1)[1].split("\n## ", 1)[0]
    assert "(meter estimate, ESTIMATE (not a measurement))" in section
    assert "| search (database) | 0.90x | - | different meters: nvml-counter vs estimate |" in section
    assert f"| final (after --retrain) | {ratio_text(0.85 / 0.9)} | 0.20x | - |" in section
