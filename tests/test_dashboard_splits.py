"""The dashboard reports test accuracy beside dev, and its front keeps chance-level trials out."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from dashboards.plots import front_figure  # noqa: E402
from dashboards.server import create_app  # noqa: E402
from nas.config import Candidate  # noqa: E402
from nas.spec import StudySpec  # noqa: E402
from storage import Store, TrialCost  # noqa: E402
from tests.conftest import fake_trial_result  # noqa: E402

STUDY = "splits"
#: (dev accuracy, J/sample, test accuracy); trial 0 is chance level and the cheapest, trial 3 is old
TRIALS = [(0.5, 1e-4, 0.48), (0.9, 2e-3, 0.87), (0.75, 1e-3, 0.72), (0.8, 1.5e-3, None)]


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    db = str(tmp_path / "nas.db")
    with Store.open(db) as store:
        store.create_study(STUDY, StudySpec(name=STUDY).model_dump_json(),
                           [("accuracy", "maximize"), ("energy_per_sample_j", "minimize")])
        for i, (acc, energy, test) in enumerate(TRIALS):
            r = fake_trial_result(candidate=Candidate(d_ffn=8 + i), accuracy=acc, energy_per_sample_j=energy)
            if test is not None:
                assert r.metrics is not None
                r = dataclasses.replace(r, metrics=dataclasses.replace(
                    r.metrics, test_accuracy=test, test_macro_f1=test, n_test_examples=500, majority_accuracy=0.5))
            store.finish_trial(STUDY, i, r, cost=TrialCost.from_result(r))
    with TestClient(create_app(db, artefacts=tmp_path / "artefacts"), base_url="http://127.0.0.1:8000") as c:
        yield c


def test_trial_json_has_test_beside_dev(client: TestClient) -> None:
    body = client.get(f"/api/studies/{STUDY}/trials/1").json()
    v = body["values"]
    assert (v["accuracy"], v["test_accuracy"], v["test_macro_f1"], v["majority_accuracy"]) == (0.9, 0.87, 0.87, 0.5)
    assert body["result"]["metrics"]["test_accuracy"] == 0.87 and body["on_front"]
    old = client.get(f"/api/studies/{STUDY}/trials/3").json()["values"]
    assert old["test_accuracy"] is None and old["majority_accuracy"] is None  # stored without them


def test_front_keeps_chance_level_out_everywhere(client: TestClient) -> None:
    front = client.get(f"/api/studies/{STUDY}/pareto").json()
    assert [t["number"] for t in front["trials"]] == [1, 3, 2]
    assert [t["values"]["test_accuracy"] for t in front["trials"]] == [0.87, None, 0.72]
    rows = {t["number"]: t for t in client.get(f"/api/studies/{STUDY}/trials").json()}
    assert not rows[0]["on_front"] and rows[0]["values"]["test_accuracy"] == 0.48
    dash = client.get(f"/api/studies/{STUDY}/dashboard").json()
    assert sorted(t["number"] for t in dash["trials"] if t["on_front"]) == [1, 2, 3]


def test_front_plot_hover_shows_test_accuracy(client: TestClient, tmp_path: Path) -> None:
    with Store.open(str(tmp_path / "nas.db"), create=False) as store:
        trials, front = store.trials(STUDY), {t.number for t in store.front(STUDY)}
    fig = front_figure(trials, front)
    points = [t for t in fig["data"] if t["meta"]["role"] in ("front", "dominated")]
    shown = {row[0]: row[5] for t in points for row in t["customdata"]}
    assert shown == {0: "0.4800", 1: "0.8700", 2: "0.7200", 3: "not measured"}
    assert all("test accuracy %{customdata[5]}" in t["hovertemplate"] for t in points)
    assert {row[0] for t in points if t["meta"]["role"] == "dominated" for row in t["customdata"]} == {0}
    assert fig["layout"]["yaxis"]["title"]["text"].startswith("dev accuracy")
    js = client.get("/static/app.js").text  # the trial table and trial page read the same values
    assert "r.values.test_accuracy" in js and "v.test_accuracy" in js and "v.majority_accuracy" in js
