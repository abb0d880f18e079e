"""The storage contract on SQLite, plus what only SQLite has (WAL, pragmas, plain paths)."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text, update

import storage.engine as engine_module
import storage.schema as schema_module
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
    monkeypatch.setattr(schema_module, "head_revision", lambda: "0999")
    monkeypatch.setattr(schema_module, "raise_if_unknown_revision", lambda c, u: None)
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


# --- bad databases: one line naming the database and the fix; nothing created ------------------------
@pytest.mark.parametrize(("url", "needles"), [
    ("foo://x", ["unsupported database 'foo'", "postgresql+psycopg://"]),
    ("mysql://u@h/db", ["unsupported database 'mysql'", "SQLite"]),
    ("postgresql+psycopg2://u@h/db", ["driver", "psycopg2", "not installed"]),
    ("postgresql+nosuch://u@h/db", ["unknown database driver", "postgresql+nosuch"]),
    ("", ["empty"]),
])
def test_unknown_dialect_or_driver_is_one_line(url: str, needles: list[str]) -> None:
    with pytest.raises(StorageError) as err:
        Store.open(url, create=False)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("--db: ")
    for n in needles:
        assert n in msg, msg


def test_corrupt_file_folder_and_missing_file_are_one_line(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(bytes(range(256)) * 40)
    folder = tmp_path / "folder.db"
    folder.mkdir()
    cases = [(junk, "not a readable SQLite database"), (folder, "is a folder"), (tmp_path / "none.db", "no database")]
    for path, needle in cases:
        for create in (False, True):
            if needle == "no database" and create:
                continue
            with pytest.raises(StorageError) as err:
                Store.open(path, create=create)
            msg = str(err.value)
            assert "\n" not in msg and needle in msg and path.name in msg and "Fix: " in msg, msg
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder.db", "junk.db"]  # nothing created


def test_unreachable_postgres_is_one_line() -> None:
    with pytest.raises(StorageError) as err:
        Store.open("postgresql+psycopg://u@127.0.0.1:1/db")
    msg = str(err.value)
    assert "\n" not in msg and "127.0.0.1" in msg and "Connection refused" in msg and "server" in msg, msg


def test_session_errors_are_one_line(tmp_path: Path) -> None:
    with Store.open(tmp_path / "nas.db") as store, pytest.raises(StorageError) as err, store.session() as s:
        s.execute(text("SELECT * FROM no_such_table"))
    msg = str(err.value)
    assert "\n" not in msg and "no_such_table" in msg and "nas.db" in msg, msg


# --- read-only readers ---------------------------------------------------------------------------------
def _study_db(tmp_path: Path) -> Path:
    db = tmp_path / "ro" / "nas.db"
    db.parent.mkdir()
    with Store.open(db) as store:
        store.create_study("s", "{}", [("accuracy", "maximize")])
    assert not Path(f"{db}-shm").exists()  # a clean close checkpoints and removes -wal and -shm
    return db


def _deny_writes(monkeypatch: pytest.MonkeyPatch, *paths: Path) -> None:
    """Make this process see ``paths`` as unwritable (root ignores chmod, so chmod alone cannot test it)."""
    real = os.access
    denied = {str(p.resolve()) for p in paths}

    def access(path: Any, mode: int, **kw: Any) -> bool:
        if mode & os.W_OK and str(Path(path).resolve()) in denied:
            return False
        return real(path, mode, **kw)

    monkeypatch.setattr(engine_module.os, "access", access)


@pytest.mark.parametrize(("folder_w", "file_w", "shm", "read_only", "expected"), [
    (True, True, False, None, None),
    (True, True, False, False, None),
    (True, True, False, True, "query_only"),
    (True, False, False, None, "ro"),
    (False, True, False, None, "immutable"),
    (False, False, False, None, "immutable"),
    (False, False, True, None, "ro"),
    (False, False, False, False, None),
])
def test_sqlite_read_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, folder_w: bool, file_w: bool,
                          shm: bool, read_only: bool | None, expected: str | None) -> None:
    db = tmp_path / "nas.db"
    db.write_bytes(b"")
    if shm:
        Path(f"{db}-shm").write_bytes(b"")
    _deny_writes(monkeypatch, *([] if folder_w else [tmp_path]), *([] if file_w else [db]))
    assert engine_module.sqlite_read_mode(db, read_only) == expected


@pytest.mark.parametrize("how", ["read_only", "folder", "file"])
def test_reader_of_unwritable_database_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      how: str) -> None:
    db = _study_db(tmp_path)
    with sqlite3.connect(db) as conn:  # a database some other tool left in rollback-journal mode
        conn.execute("PRAGMA journal_mode=DELETE")
    if how == "folder":
        _deny_writes(monkeypatch, db.parent)
    elif how == "file":
        _deny_writes(monkeypatch, db)
    before = sorted(p.name for p in db.parent.iterdir())
    with Store.open(db, create=False, read_only=True if how == "read_only" else None) as store:
        assert store.read_only
        assert [s.name for s in store.list_studies()] == ["s"]
        with pytest.raises(StorageError, match="read-only") as err:
            store.set_study_status("s", "COMPLETE")
        assert "\n" not in str(err.value)
    assert sorted(p.name for p in db.parent.iterdir()) == before
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # never switched to WAL


def test_read_only_reader_sees_a_live_writers_wal(tmp_path: Path) -> None:
    db = _study_db(tmp_path)
    writer = Store.open(db)
    writer.create_study("t", "{}", [("accuracy", "maximize")])  # still in -wal while the writer is open
    assert Path(f"{db}-shm").exists()
    with Store.open(db, create=False, read_only=True) as reader:
        assert [s.name for s in reader.list_studies()] == ["s", "t"]
    writer.close()


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="root ignores chmod; test_reader_of_unwritable_database_writes_nothing covers it")
def test_reader_in_a_chmod_read_only_folder(tmp_path: Path) -> None:
    db = _study_db(tmp_path)
    db.chmod(0o444)
    db.parent.chmod(0o555)
    try:
        with Store.open(db, create=False) as store:
            assert store.read_only and [s.name for s in store.list_studies()] == ["s"]
        with pytest.raises(StorageError, match="read-only") as err:
            Store.open(db)
        assert "\n" not in str(err.value)
    finally:
        db.parent.chmod(0o755)


def test_postgres_statement_errors_are_not_called_connection_errors() -> None:
    url = normalize_url("postgresql://u@db.example/nas")
    stmt = engine_module.database_error(Exception('relation "no_such_table" does not exist\nLINE 1: ...'), url,
                                        doing="read")
    assert "database error" in str(stmt) and "no_such_table" in str(stmt) and "server" not in str(stmt)
    conn = engine_module.database_error(Exception('connection failed: connection to server at "db.example", '
                                                  "port 5432 failed: Connection refused\n\tIs the server running?"), url)
    assert "\n" not in str(conn) and "Connection refused" in str(conn) and "PostgreSQL server" in str(conn)
