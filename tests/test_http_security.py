"""The security review of ``nas serve``: cross-site requests, DNS rebinding (the Host header), path
traversal through study names, tokens (strength, redaction from the access log, bad tokens) and caps on
searches launched over HTTP. Every test drives the real app through FastAPI's ``TestClient``, except the
access-log test, which runs a real uvicorn server."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from dashboards import launch as launch_mod  # noqa: E402
from dashboards import server  # noqa: E402
from dashboards.launch import SearchLauncher, inside  # noqa: E402
from dashboards.server import create_app  # noqa: E402
from nas.config import validate  # noqa: E402
from nas.errors import ConfigError, ExportError  # noqa: E402
from nas.spec import StudySpec, load_spec  # noqa: E402
from tests.conftest import fake_trial_result  # noqa: E402
from tests.test_dashboard_api import STUDY, build_study  # noqa: E402

TOKEN = "s3cret-token-for-tests"
BASE = "http://127.0.0.1:8000"
JSON = {"Content-Type": "application/json"}
EXPORT = f"/api/studies/{STUDY}/trials/0/export"


@pytest.fixture(scope="module")
def template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("security") / "nas.db"
    build_study(str(path), fake_trial_result).close()
    return path


@pytest.fixture
def db(tmp_path: Path, template_db: Path) -> str:
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
    with TestClient(create_app(db, artefacts=artefacts), base_url=BASE) as c:
        yield c


@pytest.fixture
def launched(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Launches run a stand-in that sleeps (so it stays "running"); yields the pids, killed afterwards."""
    pids: list[int] = []
    original = SearchLauncher.launch

    def launch(self: SearchLauncher, spec: StudySpec) -> Any:
        out = original(self, spec)
        pids.append(out.process.pid)
        return out

    monkeypatch.setattr(launch_mod, "search_command",
                        lambda spec_path, db: [sys.executable, "-c", "import time; time.sleep(60)"])
    monkeypatch.setattr(SearchLauncher, "launch", launch)
    yield pids
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def fake_export(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """``nas.export.export_trial`` replaced by one that writes one file; returns the folders written."""
    import nas.export

    written: list[Path] = []

    def export_trial(study: str, trial: int, out_dir: Path, **_: Any) -> object:
        if trial == 4:
            raise ExportError("parity check failed")
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "model.onnx").write_bytes(b"onnx")
        written.append(Path(out_dir))
        return object()

    monkeypatch.setattr(nas.export, "export_trial", export_trial, raising=False)
    return written


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


# ------------------------------------------------------------------------------------------ traversal
@pytest.mark.parametrize("name", ["..", ".", ".hidden", "...", ".git"])
def test_study_spec_refuses_dot_names(name: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="dot"):
        StudySpec(name=name)
    with pytest.raises(ConfigError) as err:
        validate(StudySpec, {"name": name}, source="study.yaml")
    message = str(err.value)
    assert message.startswith("study.yaml: name:") and repr(name) in message and "rename" in message
    spec_file = tmp_path / "study.yaml"
    spec_file.write_text(f"name: '{name}'\n")
    with pytest.raises(ConfigError, match="name"):
        load_spec(spec_file)


def test_study_name_rule_is_one_function() -> None:
    from nas.spec import study_name_problem

    for good in ("default", "a.b", "x..y", "my-study_2", "a" * 100):
        assert study_name_problem(good) is None
        assert StudySpec(name=good).name == good
    for bad in ("", "a" * 101, "a/b", "bad name", "..", ".", ".x", "ü"):
        assert study_name_problem(bad) is not None, bad


def test_cli_search_refuses_a_dot_name_before_writing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    import nas.runner.api
    from nas.cli import main

    def no_store(*_: Any, **__: Any) -> None:
        raise AssertionError("the search reached the database")

    monkeypatch.setattr(nas.runner.api, "open_store", no_store)
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "nas.db"
    with pytest.raises(SystemExit) as exc:
        main(["search", "--name", "..", "--db", str(db), "--quiet"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "name" in err and "'..'" in err and "dot" in err
    assert list(tmp_path.iterdir()) == []  # no database, no artefacts


@pytest.mark.parametrize("name", ["..", ".", ".hidden"])
def test_http_refuses_dot_names(client: TestClient, artefacts: Path, launched: list[int], name: str) -> None:
    r = client.post("/api/studies", json={"name": name, "budget": {"trials": 1}})
    assert r.status_code == 422, r.text
    assert "name" in str(r.json()["detail"]) and "dot" in str(r.json()["detail"])
    assert launched == [] and _files(artefacts) == []
    quoted = name.replace(".", "%2E")
    for url in (f"/api/studies/{quoted}", f"/api/studies/{quoted}/trials", f"/api/studies/{quoted}/pareto"):
        got = client.get(url)
        assert got.status_code == 422 and "dot" in got.json()["detail"], url
    assert client.post(f"/api/studies/{quoted}/trials/0/export", headers=JSON).status_code == 422
    assert client.get(f"/studies/{quoted}").status_code == 422


def test_path_under_keeps_paths_inside_their_root(tmp_path: Path) -> None:
    from dashboards.launch import path_under

    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "outside").mkdir()
    (root / "link").symlink_to(tmp_path / "outside")
    assert path_under(root, "studies", "demo", field="name") == root / "studies" / "demo"
    for parts in (("..",), ("studies", "..", ".."), ("/etc/passwd",), ("link", "x")):
        with pytest.raises(ConfigError) as err:
            path_under(root, *parts, field="name")
        assert str(err.value).startswith("name:") and str(root) in str(err.value)
    assert inside(root, root / "a" / "b") and not inside(root, root / "link")


def test_launcher_refuses_a_name_that_bypassed_validation(tmp_path: Path, launched: list[int]) -> None:
    """Defence in depth: even a spec built without validation cannot place files outside the folder."""
    root = tmp_path / "artefacts"
    launcher = SearchLauncher("nas.db", root)
    evil = StudySpec().model_copy(update={"name": "../../escaped"})
    with pytest.raises(ConfigError, match="name"):
        launcher.launch(evil)
    assert launched == []
    assert not (tmp_path / "escaped").exists() and not any(tmp_path.rglob("escaped*"))


# ---------------------------------------------------------------------------------------- Host header
@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "localhost.evil.example",
                                  "127.0.0.1.evil.example", "192.168.1.5:8000", "[::2]:8000", "bad host"])
def test_loopback_server_refuses_foreign_host(client: TestClient, host: str) -> None:
    for path in ("/api/studies", "/", "/healthz"):
        r = client.get(path, headers={"Host": host})
        assert r.status_code == 421, (host, path, r.status_code)
        assert "Host" in r.json()["detail"] and "--allowed-host" in r.json()["detail"]


@pytest.mark.parametrize("host", ["localhost", "localhost:8000", "LOCALHOST:8000", "127.0.0.1", "127.0.0.1:8000",
                                  "127.1.2.3:9", "[::1]", "[::1]:8000"])
def test_loopback_server_accepts_loopback_hosts(client: TestClient, host: str) -> None:
    assert client.get("/api/studies", headers={"Host": host}).status_code == 200


def test_allowed_hosts_off_loopback(db: str, artefacts: Path) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with TestClient(create_app(db, token=TOKEN, artefacts=artefacts, host="0.0.0.0")) as open_host:
        assert open_host.get("/api/studies", headers={**auth, "Host": "anything.example"}).status_code == 200
    app = create_app(db, token=TOKEN, artefacts=artefacts, host="0.0.0.0", allowed_hosts=["NAS.example.com"])
    with TestClient(app) as listed:
        assert listed.get("/api/studies", headers={**auth, "Host": "nas.example.com:8443"}).status_code == 200
        assert listed.get("/api/studies", headers={**auth, "Host": "localhost:8000"}).status_code == 200
        assert listed.get("/api/studies", headers={**auth, "Host": "evil.example"}).status_code == 421


# --------------------------------------------------------------------------------- cross-site requests
def test_cross_site_text_plain_post_starts_no_search(client: TestClient, artefacts: Path,
                                                     launched: list[int]) -> None:
    body = b'{"name": "csrf", "budget": {"trials": 1}}'
    for headers in ({"Content-Type": "text/plain", "Origin": "https://evil.example"},
                    {"Content-Type": "text/plain"},
                    {"Content-Type": "application/json", "Origin": "https://evil.example"},
                    {"Content-Type": "application/json", "Origin": "null"},
                    {"Content-Type": "application/json", "Referer": "https://evil.example/attack.html"},
                    {"Content-Type": "application/json", "Origin": "http://127.0.0.1:9999"},
                    {"Content-Type": "application/json", "Origin": "http://localhost:8000"}):
        r = client.post("/api/studies", content=body, headers=headers)
        expected = 415 if "Origin" not in headers and "Referer" not in headers else 403
        assert r.status_code == expected, (headers, r.text)
        detail = r.json()["detail"]
        assert ("application/json" in detail) if expected == 415 else ("Host" in detail and "same" in detail)
    assert launched == [] and _files(artefacts) == []


@pytest.mark.parametrize("kind", ["form", "multipart", "no body", "text/plain", "foreign origin"])
def test_cross_site_export_writes_nothing(client: TestClient, artefacts: Path, fake_export: list[Path],
                                          kind: str) -> None:
    kwargs: dict[str, Any] = {
        "form": {"data": {"format": "onnx"}, "headers": {"Origin": "https://evil.example"}},
        "multipart": {"files": {"f": ("a.txt", b"x")}},
        "no body": {},
        "text/plain": {"content": b"x", "headers": {"Content-Type": "text/plain"}},
        "foreign origin": {"headers": {**JSON, "Origin": "https://evil.example"}},
    }[kind]
    r = client.post(EXPORT, **kwargs)
    assert r.status_code in (403, 415), r.text
    assert fake_export == [] and _files(artefacts) == []


def test_same_origin_json_posts_still_work(client: TestClient, artefacts: Path, launched: list[int],
                                           fake_export: list[Path]) -> None:
    same = {**JSON, "Origin": BASE}
    r = client.post("/api/studies", json={"name": "fine", "budget": {"trials": 1}}, headers={"Origin": BASE})
    assert r.status_code == 202, r.text
    assert len(launched) == 1
    exported = client.post(EXPORT, headers=same)
    assert exported.status_code == 200 and exported.headers["content-type"] == "application/zip"
    referred = client.post(EXPORT, headers={**JSON, "Referer": f"{BASE}/studies/{STUDY}/trials/0"})
    assert referred.status_code == 200
    scripted = client.post(EXPORT, headers={"Content-Type": "application/json; charset=utf-8"})  # curl, no Origin
    assert scripted.status_code == 200
    assert len(fake_export) == 3


def test_reads_need_no_json_type(client: TestClient) -> None:
    assert client.get("/api/studies", headers={"Origin": "https://evil.example"}).status_code == 200


# --------------------------------------------------------------------------------------------- tokens
@pytest.mark.parametrize("weak", ["short", "x", "sixteen chars ok", "tab\tin-the-middle-token", "tökén-long-enough-1234",
                                  "€" * 20])
def test_weak_tokens_are_refused(db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, weak: str) -> None:
    import uvicorn

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append(kw))
    monkeypatch.delenv("NAS_TOKEN", raising=False)
    with pytest.raises(ConfigError) as err:
        server.run(db=db, host="0.0.0.0", port=8123, token=weak, artefacts=tmp_path)
    message = str(err.value)
    assert "--token" in message and "NAS_TOKEN" in message and "secrets.token_urlsafe" in message
    assert repr(weak) not in message  # a secret is never echoed
    monkeypatch.setenv("NAS_TOKEN", weak)
    with pytest.raises(ConfigError, match="NAS_TOKEN"):
        server.run(db=db, host="0.0.0.0", port=8123, artefacts=tmp_path)
    with pytest.raises(ConfigError, match="--token"):
        create_app(db, token=weak, artefacts=tmp_path)
    assert calls == []


def test_strong_token_is_accepted(db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append(kw))
    server.run(db=db, host="0.0.0.0", port=8123, token="A" * 16, artefacts=tmp_path)
    assert [c["host"] for c in calls] == ["0.0.0.0"]


def test_non_ascii_tokens_get_401(db: str, artefacts: Path) -> None:
    bad = "tökén€"
    with TestClient(create_app(db, token=TOKEN, artefacts=artefacts), base_url=BASE,
                    raise_server_exceptions=False) as c:
        assert c.get("/api/studies", headers={"Authorization": f"Bearer {bad}".encode()}).status_code == 401
        assert c.get("/api/studies", params={"token": bad}).status_code == 401
        page = c.get(f"/studies/{STUDY}", params={"token": bad}, headers={"Accept": "text/html"},
                     follow_redirects=False)
        assert page.status_code == 401
        assert c.get("/api/studies", headers={"Cookie": f"nas_token={bad}".encode()}).status_code == 401
        assert c.get("/api/studies", headers={"Cookie": b"nas_token=\xff\xfe"}).status_code == 401
        assert c.get("/api/studies?token=%FF%FE").status_code == 401
        assert c.get("/api/studies", params={"token": TOKEN}).status_code == 200


def test_redact_tokens_filter() -> None:
    from dashboards.security import RedactTokens

    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:5", "GET", f"/studies/x?a=1&token={TOKEN}&%74oken={TOKEN}&b=2", "1.1", 303),
                               None)
    assert RedactTokens().filter(record)
    message = record.getMessage()
    assert TOKEN not in message
    assert "/studies/x?a=1&token=***&%74oken=***&b=2" in message


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_access_log_of_a_real_server_hides_the_token(db: str, artefacts: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """``run()`` itself configures uvicorn so that its access log never holds a token."""
    import httpx
    import uvicorn

    servers: list[uvicorn.Server] = []

    def serve(app: Any, **kw: Any) -> None:  # uvicorn.run, minus signal handling, so a thread can run it
        servers.append(uvicorn.Server(uvicorn.Config(app, **kw)))
        servers[-1].run()

    monkeypatch.setattr(uvicorn, "run", serve)
    port = _free_port()
    thread = threading.Thread(target=server.run, daemon=True,
                              kwargs={"db": db, "port": port, "token": TOKEN, "artefacts": artefacts})
    thread.start()
    deadline = time.monotonic() + 30
    while not (servers and servers[0].started):
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    access = logging.getLogger("uvicorn.access")
    access.addHandler(handler)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", follow_redirects=True) as http:
            assert http.get("/api/studies", params={"token": TOKEN}).status_code == 200
            page = http.get(f"/studies/{STUDY}?token={TOKEN}", headers={"Accept": "text/html"})
            assert page.status_code == 200 and page.history[0].status_code == 303
    finally:
        access.removeHandler(handler)
        servers[0].should_exit = True
        thread.join(timeout=10)
    messages = [r.getMessage() for r in records]
    assert len(messages) >= 3 and any("token=***" in m for m in messages), messages
    assert not any(TOKEN in m for m in messages), messages


# ------------------------------------------------------------------------------------------ launch caps
def test_concurrent_launches_are_capped(db: str, artefacts: Path, launched: list[int]) -> None:
    from dashboards.launch import LaunchLimits

    with TestClient(create_app(db, artefacts=artefacts, limits=LaunchLimits(max_running=1)),
                    base_url=BASE) as c:
        first = c.post("/api/studies", json={"name": "one", "budget": {"trials": 1}})
        assert first.status_code == 202, first.text
        second = c.post("/api/studies", json={"name": "two", "budget": {"trials": 1}})
        assert second.status_code == 429, second.text
        detail = second.json()["detail"]
        assert "1" in detail and "--max-launches" in detail and "one" in detail
        assert len(launched) == 1 and not list((artefacts / "specs").glob("two-*"))
        os.kill(launched[0], signal.SIGKILL)
        deadline = time.monotonic() + 10
        while c.app.state.ctx.launcher.running("one"):  # type: ignore[attr-defined]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert c.post("/api/studies", json={"name": "two", "budget": {"trials": 1}}).status_code == 202


@pytest.mark.parametrize("body, field, option", [
    ({"resources": {"max_concurrent": 64}}, "resources.max_concurrent", "--max-trial-concurrency"),
    ({"resources": {"cpus_per_trial": 32}}, "resources.cpus_per_trial", "--max-cpus-per-trial"),
    ({"resources": {"gpus_per_trial": 8}}, "resources.gpus_per_trial", "--max-gpus-per-trial"),
    ({"resources": {"torch_threads": 64}}, "resources.torch_threads", "--max-cpus-per-trial"),
    ({"budget": {"trials": 100000}}, "budget.trials", "--max-trials"),
])
def test_launch_resources_are_capped(client: TestClient, artefacts: Path, launched: list[int],
                                     body: dict[str, Any], field: str, option: str) -> None:
    r = client.post("/api/studies", json={"name": "greedy", **body})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    value = next(iter(next(iter(body.values())).values()))
    assert field in detail and repr(value) in detail and option in detail
    assert launched == [] and _files(artefacts) == []


def test_raised_caps_allow_bigger_launches(db: str, artefacts: Path, launched: list[int]) -> None:
    from dashboards.launch import LaunchLimits

    limits = LaunchLimits(max_running=2, max_concurrent=8, max_cpus_per_trial=4, max_gpus_per_trial=2,
                          max_trials=500)
    with TestClient(create_app(db, artefacts=artefacts, limits=limits), base_url=BASE) as c:
        body = {"name": "big", "budget": {"trials": 500},
                "resources": {"max_concurrent": 8, "cpus_per_trial": 4, "gpus_per_trial": 2, "torch_threads": 4}}
        assert c.post("/api/studies", json=body).status_code == 202
        assert c.post("/api/studies", json={**body, "name": "big2"}).status_code == 202
    assert len(launched) == 2


def test_launch_limits_must_be_positive() -> None:
    from dashboards.launch import LaunchLimits

    with pytest.raises(ConfigError, match="--max-launches"):
        LaunchLimits(max_running=0)
    with pytest.raises(ConfigError, match="--max-gpus-per-trial"):
        LaunchLimits(max_gpus_per_trial=-1)


def test_nas_serve_passes_its_options(monkeypatch: pytest.MonkeyPatch) -> None:
    from dashboards.launch import LaunchLimits
    from nas.cli import main

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(server, "run", lambda **kw: calls.append(kw))
    main(["serve", "--db", "x.db", "--allowed-host", "nas.example.com", "--allowed-host", "nas.lan",
          "--max-launches", "3", "--max-trial-concurrency", "4", "--max-cpus-per-trial", "2.5",
          "--max-gpus-per-trial", "0.5", "--max-trials", "50"])
    [kw] = calls
    assert kw["allowed_hosts"] == ["nas.example.com", "nas.lan"]
    assert kw["limits"] == LaunchLimits(max_running=3, max_concurrent=4, max_cpus_per_trial=2.5,
                                        max_gpus_per_trial=0.5, max_trials=50)
    main(["serve"])
    assert calls[-1]["limits"] == LaunchLimits() and calls[-1]["allowed_hosts"] == []
