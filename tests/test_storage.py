"""The storage contract on SQLite, plus what only SQLite has (WAL, pragmas, plain paths)."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text, update

import storage.store as store_module
from nas.errors import StorageError
from storage import Store, TrialCost, normalize_url
from storage.models import StudyRow
from tests.storage_contract import StorageContract


class TestSQLiteStorage(StorageContract):
    @pytest.fixture
    def db_url(self, tmp_path: Path) -> Iterator[str]:
        yield f"sqlite:///{tmp_path / 'nas.db'}"


def test_plain_path_becomes_sqlite_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with Store.open("nas.db") as store:
        assert store.url == "sqlite:///nas.db" and store.dialect == "sqlite"
    assert (tmp_path / "nas.db").is_file()
    assert normalize_url(tmp_path / "x.db").render_as_string() == f"sqlite:///{tmp_path / 'x.db'}"
    assert normalize_url("postgresql://u@h/db").drivername == "postgresql+psycopg"


def test_display_url_hides_the_password() -> None:
    store = Store(create_engine("sqlite://"), normalize_url("postgresql://nas:s3cret@db.example/nas"))
    assert store.display_url == "postgresql+psycopg://nas:***@db.example/nas"
    assert store.url == "postgresql+psycopg://nas:s3cret@db.example/nas"  # for Optuna's RDBStorage
    store.close()


def test_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="does not exist"):
        Store.open(tmp_path / "no" / "such" / "nas.db")


def test_wal_busy_timeout_and_foreign_keys(tmp_path: Path) -> None:
    db = tmp_path / "nas.db"
    with Store.open(db) as store, store.session() as s:
        assert s.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert s.execute(text("PRAGMA busy_timeout")).scalar() == store_module.SQLITE_BUSY_TIMEOUT_MS
        assert s.execute(text("PRAGMA foreign_keys")).scalar() == 1
    # WAL is a property of the file: a plain sqlite3 client sees it too
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_behind_error_gives_the_exact_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "nas.db"
    Store.open(db).close()
    monkeypatch.setattr(store_module, "head_revision", lambda: "0999")
    monkeypatch.setattr(store_module.Store, "_raise_if_unknown_revision", staticmethod(lambda c, u: None))
    with pytest.raises(StorageError) as err:
        Store.open(db)
    assert f"run `nas storage upgrade --db sqlite:///{db}`" in str(err.value)


def test_plain_sql_reads_the_persisted_front(tmp_path: Path, make_result, make_candidate) -> None:  # type: ignore[no-untyped-def]
    db = tmp_path / "nas.db"
    with Store.open(db) as store:
        store.create_study("s", "{}", [("accuracy", "maximize"), ("energy_per_sample_j", "minimize")])
        for i, (acc, e) in enumerate([(0.9, 2e-3), (0.8, 1e-3), (0.7, 3e-3)]):
            store.finish_trial("s", i, make_result(candidate=make_candidate(i), accuracy=acc,
                                                   energy_per_sample_j=e), cost=TrialCost())
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT f.position, t.trial_number, t.accuracy, json_extract(f.values_json, '$.energy_per_sample_j') "
            "FROM nas_pareto_front f JOIN nas_trials t ON t.id = f.trial_id ORDER BY f.position"
        ).fetchall()
    assert rows == [(0, 0, 0.9, 2e-3), (1, 1, 0.8, 1e-3)]


def test_second_writer_waits_for_the_first(tmp_path: Path) -> None:
    """Write sessions take SQLite's lock up front (BEGIN IMMEDIATE) and queue on the busy timeout."""
    db = tmp_path / "nas.db"
    first, second = Store.open(db), Store.open(db)
    first.create_study("a", "{}", [("accuracy", "maximize")])
    done: list[float] = []

    def write() -> None:
        t0 = time.monotonic()
        second.set_study_status("a", "COMPLETE")
        done.append(time.monotonic() - t0)

    with first.session(write=True) as s:
        s.execute(update(StudyRow).values(status="STOPPED"))
        worker = threading.Thread(target=write)
        worker.start()
        time.sleep(0.5)
        assert not done  # still waiting for the lock
    worker.join(timeout=30)
    assert done and done[0] >= 0.4
    assert first.get_study("a").status == "COMPLETE"  # applied after the first commit
    first.close()
    second.close()
