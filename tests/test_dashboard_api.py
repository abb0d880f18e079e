"""The HTTP API of ``nas serve`` through FastAPI's test client: every endpoint, auth on and off, bad ids,
malicious filters, oversized and invalid specs, exports that must stay in the artefact folder, and the
optuna-dashboard compatibility of the database."""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from dashboards import launch as launch_mod  # noqa: E402
from dashboards import server  # noqa: E402
from dashboards.plots import front_figure  # noqa: E402
from dashboards.server import create_app, is_loopback  # noqa: E402
from nas.config import AttentionConfig, Candidate, QuantConfig  # noqa: E402
from nas.errors import ConfigError, ExportError  # noqa: E402
from nas.records import TrialResult  # noqa: E402
from nas.spec import default_spec  # noqa: E402
from storage import Store, TrialCost  # noqa: E402
from tests.conftest import fake_trial_result  # noqa: E402

STUDY = "demo"
TOKEN = "s3cret-token-for-tests"
#: The address the test client pretends to reach: a loopback Host, as the app requires by default.
BASE_URL = "http://127.0.0.1:8000"
#: State-changing requests must be JSON-typed, even without a body (a guard against cross-site forms).
JSON = {"Content-Type": "application/json"}
OBJECTIVES = [("accuracy", "maximize"), ("energy_per_sample_j", "minimize")]
_ATTENTIONS = [AttentionConfig(), AttentionConfig(kind="local", window=8), AttentionConfig(kind="linear"),
               AttentionConfig(kind="lowrank", k=16)]


def demo_candidate(i: int) -> Candidate:
    """A distinct candidate per ``i``, cycling attention types and bit-widths."""
    bits = (32, 8, 4)[i % 3]
    return Candidate(n_layers=1 + i % 4, d_ffn=8 + i, attention=_ATTENTIONS[i % 4],
                     quant=QuantConfig(embedding_bits=bits, attention_bits=bits, ffn_bits=bits))


def build_study(
    db: str,
    make_result: Callable[..., TrialResult],
    *,
    name: str = STUDY,
    n_complete: int = 8,
    n_failed: int = 1,
    running: bool = True,
    budget: int = 12,
) -> Store:
    """A study written through the Store API with fake results: ``n_complete`` trials on a staircase
    front with some dominated ones (every third trial's energy is an ESTIMATE), failures, one running."""
    store = Store.open(db)
    spec = default_spec().with_overrides(name=name, **{"budget.trials": budget})
    store.create_study(name, spec.model_dump_json(), OBJECTIVES, budget_trials=budget)
    number = 0
    for i in range(n_complete):
        cand = demo_candidate(i)
        store.start_trial(name, number, cand)
        energy = 1e-4 * (1.6 ** i)
        # Even trials sit on a rising staircase; odd ones are worse than their left neighbour.
        accuracy = 0.6 + 0.04 * i if i % 2 == 0 else 0.55 + 0.03 * i
        estimate = i % 3 == 2
        result = make_result(candidate=cand, accuracy=accuracy, energy_per_sample_j=energy,
                             meter="estimate" if estimate else "nvml-counter", is_estimate=estimate,
                             train_energy_j=10.0 + i)
        store.finish_trial(name, number, result, cost=TrialCost.from_result(result, wall_s=2.0))
        number += 1
    for _ in range(n_failed):
        cand = demo_candidate(100 + number)
        store.start_trial(name, number, cand)
        store.fail_trial(name, number, "NaN loss at step 40", candidate=cand,
                         cost=TrialCost(train_energy_j=1.5, wall_s=1.0, meter="estimate", is_estimate=True))
        number += 1
    if running:
        store.start_trial(name, number, demo_candidate(200 + number))
    return store


@pytest.fixture(scope="module")
def template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo study, built once per module (migrations and writes take about half a second)."""
    path = tmp_path_factory.mktemp("template") / "nas.db"
    build_study(str(path), fake_trial_result).close()
    return path


@pytest.fixture
def db(tmp_path: Path, template_db: Path) -> str:
    """A private copy of the demo study for one test."""
    target = tmp_path / "nas.db"
    for suffix in ("", "-wal", "-shm"):
        src = Path(str(template_db) + suffix)
        if src.exists():
            shutil.copyfile(src, str(target) + suffix)
    return str(target)


@pytest.fixture
def artefacts(tmp_path: Path) -> Path:
    return tmp_path / "artefacts"


@pytest.fixture
def client(db: str, artefacts: Path) -> Iterator[TestClient]:
    with TestClient(create_app(db, artefacts=artefacts), base_url=BASE_URL) as c:
        yield c


@pytest.fixture
def secured(db: str, artefacts: Path) -> Iterator[TestClient]:
    with TestClient(create_app(db, token=TOKEN, artefacts=artefacts, require_token=True), base_url=BASE_URL) as c:
        yield c


# ------------------------------------------------------------------------------------------ reading
def test_list_studies_reports_progress_cost_meter_and_estimate(client: TestClient) -> None:
    r = client.get("/api/studies")
    assert r.status_code == 200
    [s] = r.json()
    assert s["name"] == STUDY and s["status"] == "RUNNING"
    assert s["budget"]["trials"] == 12
    assert s["trials"] == {"done": 9, "complete": 8, "failed": 1, "pruned": 0, "running": 1, "total": 10,
                           "progress": pytest.approx(9 / 12)}
    cost = s["cost"]
    assert cost["total_energy_j"] > 0 and cost["train_energy_j"] > 0
    assert cost["meters"] == ["estimate", "nvml-counter"]
    assert cost["is_estimate"] is True and cost["label"].startswith("ESTIMATE")


def test_get_study_and_dashboard(client: TestClient) -> None:
    s = client.get(f"/api/studies/{STUDY}").json()
    assert s["spec"]["name"] == STUDY
    assert s["objectives"] == [{"metric": m, "direction": d} for m, d in OBJECTIVES]
    d = client.get(f"/api/studies/{STUDY}/dashboard").json()
    assert set(d["figures"]) == {"front", "hv_trials", "hv_joules", "cost", "machines"}
    assert d["front"] == s["front"]
    assert len(d["trials"]) == 10
    front_layout = d["figures"]["front"]["layout"]
    assert front_layout["xaxis"]["type"] == "log"
    hv = d["figures"]["hv_trials"]["data"][0]["y"]
    assert hv == sorted(hv) and 0 < hv[-1] <= 1  # never decreases, normalised to the reference box
    assert d["version"] == client.get(f"/api/studies/{STUDY}/dashboard").json()["version"]


def test_trials_endpoint_filters_by_where_and_state(client: TestClient, db: str) -> None:
    rows = client.get(f"/api/studies/{STUDY}/trials").json()
    assert [r["number"] for r in rows] == list(range(10))
    front = {t.number for t in Store.open(db, create=False).front(STUDY)}
    assert {r["number"] for r in rows if r["on_front"]} == front
    est = [r for r in rows if r["is_estimate"]]
    assert est and all(r["meter"] == "estimate" and r["energy_label"].startswith("ESTIMATE") for r in est)
    low_bits = client.get(f"/api/studies/{STUDY}/trials", params={"where": "weight_bits <= 8"}).json()
    assert low_bits and all(r["values"]["weight_bits"] <= 8 for r in low_bits)
    failed = client.get(f"/api/studies/{STUDY}/trials", params={"state": "FAIL"}).json()
    assert [r["state"] for r in failed] == ["FAIL"] and failed[0]["fail_reason"] == "NaN loss at step 40"
    assert client.get(f"/api/studies/{STUDY}/trials", params={"state": "BOGUS"}).status_code == 422


def test_pareto_matches_the_store_and_the_front_plot(client: TestClient, db: str) -> None:
    store = Store.open(db, create=False)
    body = client.get(f"/api/studies/{STUDY}/pareto").json()
    assert [t["number"] for t in body["trials"]] == [t.number for t in store.front(STUDY)]
    assert body["count"] == len(body["trials"]) >= 3
    where = "weight_bits <= 8 and not is_estimate"
    filtered = client.get(f"/api/studies/{STUDY}/pareto", params={"where": where}).json()
    assert [t["number"] for t in filtered["trials"]] == [t.number for t in store.front(STUDY, where=where)]
    fig = front_figure(store.trials(STUDY), {t.number for t in store.front(STUDY)})
    by_role: dict[str, int] = {}
    for trace in fig["data"]:
        by_role[trace["meta"]["role"]] = by_role.get(trace["meta"]["role"], 0) + len(trace.get("x", []))
    assert by_role["front"] == body["count"]
    assert by_role["dominated"] == 8 - body["count"]


def test_trial_detail_has_every_reading_with_meter_and_provenance(client: TestClient) -> None:
    t = client.get(f"/api/studies/{STUDY}/trials/2").json()  # trial 2 was metered by an estimate
    assert t["number"] == 2 and t["state"] == "COMPLETE"
    assert t["candidate"]["attention"]["kind"] == "linear"
    kinds = {r["kind"].split(":")[0] for r in t["readings"]}
    assert {"inference", "train"} <= kinds
    for r in t["readings"]:
        assert r["meter"] == "estimate" and r["is_estimate"] is True and r["label"] == "ESTIMATE"
    inference = next(r for r in t["readings"] if r["kind"].startswith("inference"))
    assert inference["provenance"]["device_name"] == "NVIDIA H100 80GB HBM3"
    measured = client.get(f"/api/studies/{STUDY}/trials/0").json()
    assert all(r["label"] == "measured" and r["meter"] == "nvml-counter" for r in measured["readings"])
    running = client.get(f"/api/studies/{STUDY}/trials/9").json()
    assert running["state"] == "RUNNING" and running["readings"] == []


@pytest.mark.parametrize("url, status", [
    ("/api/studies/no-such-study", 404),
    ("/api/studies/no-such-study/trials", 404),
    ("/api/studies/no-such-study/pareto", 404),
    ("/api/studies/bad%20name!", 422),
    ("/api/studies/%2E%2E/trials", 422),
    ("/api/studies/" + "x" * 101, 422),
    ("/api/studies/a%2Fb/trials", 404),  # a slash is never part of a name: no such route
    (f"/api/studies/{STUDY}/trials/999", 404),
    (f"/api/studies/{STUDY}/trials/-1", 422),
    (f"/api/studies/{STUDY}/trials/abc", 422),
    (f"/api/studies/{STUDY}/trials/1.5", 422),
    (f"/api/studies/{STUDY}/trials/99999999999999999999", 422),
])
def test_bad_ids_are_rejected(client: TestClient, url: str, status: int) -> None:
    r = client.get(url)
    assert r.status_code == status, r.text
    assert "detail" in r.json()


@pytest.mark.parametrize("where", [
    "__import__('os').system('touch {marker}')",
    "open('{marker}', 'w')",
    "accuracy.__class__",
    "[x for x in ()]",
    "accuracy > 0.5; import os",
    "lambda: 1",
    "no_such_field > 1",
])
def test_malicious_where_is_a_400_and_runs_nothing(client: TestClient, tmp_path: Path, where: str) -> None:
    marker = tmp_path / "pwned"
    expr = where.format(marker=marker)
    for path in (f"/api/studies/{STUDY}/pareto", f"/api/studies/{STUDY}/trials"):
        r = client.get(path, params={"where": expr})
        assert r.status_code == 400, r.text
        assert r.json()["detail"].startswith("where:")
    assert not marker.exists()
    too_long = client.get(f"/api/studies/{STUDY}/pareto", params={"where": "accuracy > 0.5 " + "x" * 600})
    assert too_long.status_code == 422


# ---------------------------------------------------------------------------------------------- auth
def test_without_token_everything_is_open(client: TestClient) -> None:
    for path in ("/", f"/studies/{STUDY}", f"/studies/{STUDY}/trials/0", "/api/studies", "/openapi.json",
                 "/static/plotly.min.js", "/static/app.js"):
        assert client.get(path).status_code == 200, path


def test_token_is_required_on_every_request(secured: TestClient) -> None:
    for path in ("/api/studies", f"/api/studies/{STUDY}/pareto", "/openapi.json", "/static/plotly.min.js"):
        r = secured.get(path)
        assert r.status_code == 401, path
        assert r.headers["www-authenticate"] == "Bearer"
        assert secured.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert secured.get(path, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert secured.get(path, params={"token": TOKEN}).status_code == 200
    post = secured.post("/api/studies", json={"name": "x"})
    assert post.status_code == 401
    export = secured.post(f"/api/studies/{STUDY}/trials/0/export", headers=JSON)
    assert export.status_code == 401


def test_page_token_moves_into_a_cookie(secured: TestClient) -> None:
    html = {"Accept": "text/html"}
    login = secured.get(f"/studies/{STUDY}", headers=html)
    assert login.status_code == 401 and 'name="token"' in login.text
    r = secured.get(f"/studies/{STUDY}", params={"token": TOKEN}, headers=html, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == f"/studies/{STUDY}"
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert secured.get(f"/studies/{STUDY}", headers=html).status_code == 200  # the client kept the cookie
    assert secured.get("/api/studies").status_code == 200
    secured.cookies.clear()
    assert secured.get("/api/studies").status_code == 401


def test_run_refuses_a_public_bind_without_token(monkeypatch: pytest.MonkeyPatch, db: str, tmp_path: Path) -> None:
    import uvicorn

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append(kw))
    monkeypatch.delenv("NAS_TOKEN", raising=False)
    with pytest.raises(ConfigError) as err:
        server.run(db=db, host="0.0.0.0", port=8123, token=None, artefacts=tmp_path)
    assert "--token" in str(err.value) and "NAS_TOKEN" in str(err.value)
    assert calls == []
    server.run(db=db, host="0.0.0.0", port=8123, token="t0k3n-long-enough-16", artefacts=tmp_path)
    monkeypatch.setenv("NAS_TOKEN", "from-env-long-enough-16")
    server.run(db=db, host="192.168.1.5", port=8124, artefacts=tmp_path)
    monkeypatch.delenv("NAS_TOKEN")
    server.run(db=db, host="127.0.0.1", port=8125, artefacts=tmp_path)  # loopback: no token needed
    assert [c["host"] for c in calls] == ["0.0.0.0", "192.168.1.5", "127.0.0.1"]
    with pytest.raises(ConfigError, match="--token"):
        create_app(db, require_token=True)


def test_is_loopback() -> None:
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.5", "example.org", ""))


def test_security_headers_and_no_cdn(client: TestClient) -> None:
    page = client.get(f"/studies/{STUDY}")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"
    assert '<script src="/static/plotly.min.js"' in page.text
    assert "http://" not in page.text and "https://" not in page.text
    assert "<script>" not in page.text  # no inline script
    js = client.get("/static/plotly.min.js")
    assert js.headers["content-type"].startswith("application/javascript") and len(js.content) > 1_000_000
    assert b"plotly" in js.content[:2000].lower()


def test_openapi_schema_lists_every_endpoint(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert set(paths) >= {
        "/api/studies", "/api/studies/{study}", "/api/studies/{study}/trials", "/api/studies/{study}/pareto",
        "/api/studies/{study}/trials/{trial}", "/api/studies/{study}/trials/{trial}/export",
        "/api/studies/{study}/dashboard",
    }
    assert "post" in paths["/api/studies"] and "requestBody" in paths["/api/studies"]["post"]


def test_pages_render_and_unknown_ones_are_404(client: TestClient) -> None:
    assert 'data-page="studies"' in client.get("/").text
    assert 'data-study="demo"' in client.get(f"/studies/{STUDY}").text
    assert 'data-trial="3"' in client.get(f"/studies/{STUDY}/trials/3").text
    assert client.get("/studies/nope").status_code == 404
    assert client.get(f"/studies/{STUDY}/trials/77").status_code == 404
    assert client.get("/studies/bad%20name").status_code == 422
    evil = client.get("/studies/%3Cscript%3E")
    assert evil.status_code == 422 and "<script>" not in evil.text


def test_missing_database_is_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "later.db"
    with TestClient(create_app(str(missing), artefacts=tmp_path / "a"), base_url=BASE_URL) as c:
        assert c.get("/api/studies").json() == []
        assert c.get("/").status_code == 200
        assert c.get(f"/api/studies/{STUDY}").status_code == 404
    assert not missing.exists()


# --------------------------------------------------------------------------------------- launching
@pytest.fixture
def fake_search(monkeypatch: pytest.MonkeyPatch) -> None:
    """Launches run a tiny script that records its argv instead of a real search."""
    # written under a temporary name, then renamed: the test never reads a half-written file
    script = ("import json, os, sys; p = sys.argv[1] + '.argv.json'; open(p + '.tmp', 'w').write("
              "json.dumps(sys.argv[1:])); os.replace(p + '.tmp', p)")
    monkeypatch.setattr(launch_mod, "search_command",
                        lambda spec_path, db: [sys.executable, "-c", script, str(spec_path), "--db", db])


def _wait_for(path: Path, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_post_study_launches_a_search_subprocess(client: TestClient, db: str, artefacts: Path,
                                                 fake_search: None) -> None:
    import yaml

    body = {"name": "launched", "budget": {"trials": 3}, "constraints": ["weight_bits <= 8"]}
    r = client.post("/api/studies", json=body)
    assert r.status_code == 202, r.text
    out = r.json()
    assert out["id"] == out["study"] == "launched" and out["links"]["page"] == "/studies/launched"
    spec_files = list((artefacts / "specs").glob("launched-*.yaml"))
    assert len(spec_files) == 1
    _wait_for(Path(str(spec_files[0]) + ".argv.json"))
    argv = json.loads(Path(str(spec_files[0]) + ".argv.json").read_text())
    assert argv == [str(spec_files[0]), "--db", db]
    written = yaml.safe_load(spec_files[0].read_text())
    assert written["storage"]["url"] == db and written["budget"]["trials"] == 3
    assert Path(written["storage"]["artefacts_dir"]).is_relative_to(artefacts.resolve())


@pytest.mark.parametrize("body, status, fragment", [
    ({"name": STUDY}, 409, "already exists"),
    ({"name": "x", "bogus_key": 1}, 422, "bogus_key"),
    ({"name": "bad name!"}, 422, "name"),
    ({"name": "x", "budget": {"trials": 0}}, 422, "trials"),
    ({"name": "x", "task": "/etc/passwd"}, 422, "task"),
    ({"name": "x", "task": "../../secrets.tsv"}, 422, "task"),
    ({"name": "x", "teacher": "/home/someone/model"}, 422, "teacher"),
    ({"name": "x", "storage": {"url": "sqlite:////tmp/other.db"}}, 422, "storage.url"),
    ({"name": "x", "storage": {"artefacts_dir": "/etc"}}, 422, "storage.artefacts_dir"),
    ({"name": "x", "constraints": ["__import__('os').system('id')"]}, 422, "constraints[0]"),
    ([1, 2, 3], 422, ""),
])
def test_post_study_rejects_bad_specs(client: TestClient, fake_search: None, body: Any, status: int,
                                      fragment: str) -> None:
    r = client.post("/api/studies", json=body)
    assert r.status_code == status, r.text
    assert fragment in json.dumps(r.json()["detail"])


def test_post_study_rejects_non_json_and_empty(client: TestClient, fake_search: None) -> None:
    assert client.post("/api/studies", content=b"name: x", headers={"Content-Type": "application/json"}
                       ).status_code == 422
    assert client.post("/api/studies", content=b"", headers=JSON).status_code == 422
    assert client.post("/api/studies", content=b"").status_code == 415  # not JSON-typed


def test_oversized_spec_is_413(client: TestClient, artefacts: Path, fake_search: None) -> None:
    big = {"name": "big", "constraints": ["accuracy > 0.5"] * 10_000}
    r = client.post("/api/studies", json=big)
    assert r.status_code == 413 and "larger than" in r.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the cap applies while the body streams in
        yield b'{"name": "big", "constraints": ['
        for _ in range(10_000):
            yield b'"accuracy > 0.5",'
        yield b'"accuracy > 0.5"]}'

    streamed = client.post("/api/studies", content=chunks(), headers={"Content-Type": "application/json"})
    assert streamed.status_code == 413
    assert not (artefacts / "specs").exists() or not list((artefacts / "specs").glob("big-*"))


# ------------------------------------------------------------------------------------------- export
@pytest.fixture
def fake_export(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[dict[str, Any]]:
    """Replace ``nas.export.export_trial`` with one that writes a small folder (and a hostile symlink)."""
    import nas.export

    calls: list[dict[str, Any]] = []
    secret = tmp_path / "outside-secret.txt"
    secret.write_text("do not ship")

    def export_trial(study: str, trial: int, out_dir: Path, *, fmt: str = "all", db: str = "nas.db",
                     force: bool = False, **_: Any) -> object:
        calls.append({"study": study, "trial": trial, "out_dir": Path(out_dir), "fmt": fmt, "db": db,
                      "force": force})
        if trial == 4:
            raise ExportError("ONNX parity check failed", fix="re-export with --format torchscript")
        out = Path(out_dir)
        (out / "hf").mkdir(parents=True, exist_ok=True)
        (out / "model.onnx").write_bytes(b"onnx-bytes")
        (out / "hf" / "config.json").write_text("{}")
        (out / "MODEL_CARD.md").write_text("# card")
        (out / "leak.txt").symlink_to(secret)
        return object()

    monkeypatch.setattr(nas.export, "export_trial", export_trial, raising=False)
    return calls


def test_export_returns_a_zip_from_inside_the_artefact_folder(
    client: TestClient, db: str, artefacts: Path, fake_export: list[dict[str, Any]]
) -> None:
    r = client.post(f"/api/studies/{STUDY}/trials/0/export", params={"format": "onnx"}, headers=JSON)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/zip"
    assert 'filename="demo-trial0-onnx.zip"' in r.headers["content-disposition"]
    names = sorted(zipfile.ZipFile(io.BytesIO(r.content)).namelist())
    assert names == ["demo-trial0-onnx/MODEL_CARD.md", "demo-trial0-onnx/hf/config.json",
                     "demo-trial0-onnx/model.onnx"]  # the symlink to a file outside is left out
    [call] = fake_export
    assert call["out_dir"].resolve().is_relative_to(artefacts.resolve())
    assert call == {**call, "study": STUDY, "trial": 0, "fmt": "onnx", "db": db, "force": True}


@pytest.mark.parametrize("url, status", [
    (f"/api/studies/{STUDY}/trials/8/export", 409),       # FAIL trial
    (f"/api/studies/{STUDY}/trials/9/export", 409),       # RUNNING trial
    (f"/api/studies/{STUDY}/trials/77/export", 404),
    ("/api/studies/nope/trials/0/export", 404),
    ("/api/studies/%2E%2E/trials/0/export", 422),
    (f"/api/studies/{STUDY}/trials/0/export?format=exe", 422),
    (f"/api/studies/{STUDY}/trials/4/export", 422),       # the exporter raised ExportError
])
def test_export_errors(client: TestClient, fake_export: list[dict[str, Any]], url: str, status: int) -> None:
    r = client.post(url, headers=JSON)
    assert r.status_code == status, r.text


# ------------------------------------------------------------------------------------------- optuna
def test_optuna_can_load_the_study_from_the_same_url(tmp_path: Path, make_result: Callable[..., TrialResult]) -> None:
    optuna = pytest.importorskip("optuna")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = f"sqlite:///{tmp_path / 'nas.db'}"
    store = build_study(url, make_result, running=False)
    ot_storage = optuna.storages.RDBStorage(store.url, engine_kwargs=store.optuna_engine_kwargs())
    created = optuna.create_study(storage=ot_storage, study_name=STUDY, directions=["maximize", "minimize"])
    created.add_trial(optuna.trial.create_trial(values=[0.8, 1e-3], params={}, distributions={}))
    store.link_optuna_study(STUDY, created._study_id)
    store.close()

    loaded = optuna.load_study(study_name=STUDY, storage=url)  # what optuna-dashboard does
    assert loaded.directions == [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]
    assert len(loaded.trials) == 1
    with TestClient(create_app(url, artefacts=tmp_path / "a"), base_url=BASE_URL) as c:
        [s] = c.get("/api/studies").json()
        assert s["name"] == STUDY and s["optuna_study_id"] == created._study_id
        assert c.get(f"/api/studies/{STUDY}/pareto").json()["count"] >= 3
    assert os.path.exists(tmp_path / "nas.db")
