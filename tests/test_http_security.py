"""The security review of ``nas serve``: path traversal through study names. Every test drives the real
app through FastAPI's ``TestClient``."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from dashboards import launch as launch_mod  # noqa: E402
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
