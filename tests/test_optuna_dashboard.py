"""optuna-dashboard (#15 item 6): a real search's database is an Optuna study under the same URL.

The search runner keeps Optuna's own tables (RDBStorage) in the study database beside ours (``nas_*``), so
``optuna.load_study`` and ``optuna-dashboard sqlite:///nas.db`` read the same trials, with the same numbers
and objective values as ``nas pareto``/``nas show``. One small search (2 trials) is shared by the tests.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any
from wsgiref.util import setup_testing_defaults

import pytest

from tests.test_search import nas_cli, small_spec, write_spec

pytestmark = pytest.mark.slow

STUDY = "dash"


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A finished 2-trial search: its database and our view of its trials."""
    root = tmp_path_factory.mktemp("optuna-dashboard")
    db = root / "nas.db"
    spec = small_spec(STUDY, db, trials=2)
    spec["space"]["overrides"].update({"d_model": [16], "ffn_ratio": [1], "attention": ["softmax", "local"],
                                       "window": [2]})
    res = nas_cli("search", str(write_spec(root, spec)), "--quiet", "--db", str(db))
    assert res.returncode == 0, res.stderr[-3000:]
    from storage import Store

    store = Store.open(str(db), create=False)
    views = {v.number: v for v in store.trials(STUDY)}
    info = store.get_study(STUDY)
    store.close()
    assert sum(v.state == "COMPLETE" for v in views.values()) == 2
    return {"db": db, "url": f"sqlite:///{db}", "views": views, "info": info}


def test_optuna_tables_and_ours_are_one_database(searched: dict[str, Any]) -> None:
    tables = {r[0] for r in sqlite3.connect(searched["db"]).execute("select name from sqlite_master where type='table'")}
    assert {"studies", "trials", "trial_values", "trial_params", "alembic_version"} <= tables  # Optuna's
    assert {"nas_studies", "nas_trials", "nas_alembic_version"} <= tables  # ours, prefixed so they never clash


def test_optuna_load_study_reads_the_same_trials_and_values(searched: dict[str, Any]) -> None:
    import optuna

    study = optuna.load_study(study_name=STUDY, storage=searched["url"])  # the URL the docs give
    assert searched["info"].optuna_study_id == study._study_id  # the search links our study row to Optuna's
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    complete = {t.number: t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE}
    ours = {n: v for n, v in searched["views"].items() if v.state == "COMPLETE"}
    assert set(complete) == set(ours)
    for n, t in complete.items():
        flat = ours[n].values()
        assert t.values == pytest.approx([flat["accuracy"], flat["energy_per_sample_j"]])
        assert t.params and t.params["d_model"] == ours[n].candidate.d_model


def _wsgi_get(app: Any, path: str) -> tuple[str, Any]:
    environ: dict[str, Any] = {}
    setup_testing_defaults(environ)
    environ.update({"PATH_INFO": path, "REQUEST_METHOD": "GET"})
    status: list[str] = []
    body = b"".join(app(environ, lambda s, headers, exc_info=None: status.append(s)))
    return status[0], json.loads(body)


def test_optuna_dashboard_api_lists_the_study_and_its_trials(searched: dict[str, Any]) -> None:
    optuna_dashboard = pytest.importorskip("optuna_dashboard")
    app = optuna_dashboard.wsgi(searched["url"])
    status, listed = _wsgi_get(app, "/api/studies")
    assert status.startswith("200")
    [summary] = [s for s in listed["study_summaries"] if s["study_name"] == STUDY]
    assert summary["directions"] == ["maximize", "minimize"]
    status, detail = _wsgi_get(app, f"/api/studies/{summary['study_id']}")
    assert status.startswith("200")
    shown = {t["number"]: t for t in detail["trials"]}
    for n, v in searched["views"].items():
        if v.state == "COMPLETE":
            assert shown[n]["state"] == "Complete"
            assert shown[n]["values"] == pytest.approx([v.values()["accuracy"], v.values()["energy_per_sample_j"]])
    assert {t["number"] for t in detail["best_trials"]} <= set(shown)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_documented_command_serves_the_study(searched: dict[str, Any]) -> None:
    """``optuna-dashboard sqlite:///nas.db`` (docs/tracking.md), on loopback, answers with the study."""
    pytest.importorskip("optuna_dashboard")
    exe = Path(sys.executable).parent / "optuna-dashboard"
    if not exe.exists():
        pytest.skip("the optuna-dashboard command is not installed beside this Python")
    port = _free_port()
    proc = subprocess.Popen([str(exe), searched["url"], "--host", "127.0.0.1", "--port", str(port), "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline, listed = time.time() + 60, None
        while time.time() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as r:
                    listed = json.loads(r.read())
                break
            except OSError:
                time.sleep(0.5)
        assert listed is not None, proc.stderr.read() if proc.poll() is not None else "no answer in 60 s"
        assert STUDY in [s["study_name"] for s in listed["study_summaries"]]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
