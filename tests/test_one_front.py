"""One front: the study's constraints apply wherever a front is read.

``nas pareto --json``, ``nas.pareto()``, ``GET /api/studies/{s}/pareto``, the dashboard (its front list
and the front trace of its figure) and the persisted ``nas_pareto_front`` table must name the same
trials. Regression: only ``nas pareto`` applied ``StudySpec.constraints``, so the dashboard and the
persisted table showed a trial that the study's constraints rule out.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

import nas
from nas.config import Candidate
from nas.records import TrialResult
from nas.spec import default_spec
from storage import Store, TrialCost

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from dashboards.server import create_app  # noqa: E402
from nas.cli import app  # noqa: E402

STUDY = "one"
BASE_URL = "http://127.0.0.1:8000"
#: (dev accuracy, J/sample): without the constraint the front is 0, 2, 1 (best accuracy first); trial
#: 1, the cheapest, fails ``accuracy >= 0.7``. Trials 3 and 4 are dominated either way.
POINTS = [(0.9, 1e-2), (0.65, 1e-4), (0.75, 1e-3), (0.72, 2e-3), (0.8, 2e-2)]
EXPECTED = [0, 2]


@pytest.fixture
def db(tmp_path: Path, make_result: Callable[..., TrialResult], make_candidate: Callable[..., Candidate]) -> str:
    path = str(tmp_path / "nas.db")
    spec = default_spec().with_overrides(name=STUDY, constraints=["accuracy >= 0.7"])
    with Store.open(path) as store:
        store.create_study(STUDY, spec.model_dump_json(), [(o.metric, o.resolved_direction) for o in spec.objectives])
        for i, (acc, energy) in enumerate(POINTS):
            result = make_result(candidate=make_candidate(i), accuracy=acc, energy_per_sample_j=energy)
            store.start_trial(STUDY, i, result.candidate)
            store.finish_trial(STUDY, i, result, cost=TrialCost.from_result(result))
    return path


def _figure_front(figure: dict[str, object]) -> list[int]:
    traces = figure["data"]
    assert isinstance(traces, list)
    return sorted(int(point[0]) for trace in traces if trace.get("meta", {}).get("role") == "front"
                  for point in trace["customdata"])


def test_every_reader_sees_the_same_constrained_front(db: str, tmp_path: Path) -> None:
    cli = CliRunner().invoke(app, ["pareto", STUDY, "--db", db, "--json"])
    assert cli.exit_code == 0, cli.output
    from_cli = sorted(t["number"] for t in json.loads(cli.stdout))

    from_python = sorted(t.number for t in nas.pareto(STUDY, db=db).trials)

    with TestClient(create_app(db, artefacts=tmp_path / "artefacts"), base_url=BASE_URL) as client:
        r = client.get(f"/api/studies/{STUDY}/pareto")
        assert r.status_code == 200, r.text
        from_api = sorted(t["number"] for t in r.json()["trials"])
        d = client.get(f"/api/studies/{STUDY}/dashboard")
        assert d.status_code == 200, d.text
        dashboard = d.json()
    from_dashboard = sorted(dashboard["front"])
    from_figure = _figure_front(dashboard["figures"]["front"])

    with Store.open(db, create=False) as store:
        persisted = sorted(e.trial_number for e in store.persisted_front(STUDY))
        store.rebuild_front(STUDY)
        rebuilt = sorted(e.trial_number for e in store.persisted_front(STUDY))

    assert from_cli == EXPECTED
    assert from_python == EXPECTED
    assert from_api == EXPECTED
    assert from_dashboard == EXPECTED
    assert from_figure == EXPECTED
    assert persisted == rebuilt == EXPECTED


def test_a_where_narrows_within_the_constraints(db: str) -> None:
    with Store.open(db, create=False) as store:
        assert [t.number for t in store.front(STUDY, where="energy_per_sample_j < 0.005")] == [2]
        assert store.trivial_trials(STUDY) == []


def test_changing_the_constraints_rebuilds_the_persisted_front(db: str) -> None:
    with Store.open(db) as store:
        spec = default_spec().with_overrides(name=STUDY)  # without the constraint trial 1 is on the front
        store.update_study_spec(STUDY, spec.model_dump_json())
        assert [t.number for t in store.front(STUDY)] == [0, 2, 1]
        assert [e.trial_number for e in store.persisted_front(STUDY)] == [0, 2, 1]
