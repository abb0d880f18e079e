"""Database URLs and engines: SQLite files and PostgreSQL servers, and one-line database errors.

* A plain path is a SQLite file; ``postgresql://`` means the psycopg 3 driver. Any other dialect is
  refused here, with the two that work named, before a driver is imported.
* Writers open SQLite in WAL mode with a busy timeout. Readers that cannot write the file or its folder
  (a database on a read-only share, a copy owned by someone else) open it read-only: ``mode=ro`` when the
  ``-shm`` file exists or can be created, else ``immutable=1`` (WAL readers need the ``-shm`` file, which a
  read-only folder cannot hold). Read commands that could write still never do (``PRAGMA query_only``).
  A read-only connection never sets ``journal_mode``.
* :func:`database_error` turns a driver's multi-line error into one line naming the database and the fix.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from nas.errors import StorageError

__all__ = [
    "SQLITE_BUSY_TIMEOUT_MS",
    "SUPPORTED_BACKENDS",
    "normalize_url",
    "shown",
    "sqlite_file",
    "sqlite_read_mode",
    "make_engine",
    "check_writable",
    "database_error",
]

#: How long a SQLite connection waits for a lock before giving up.
SQLITE_BUSY_TIMEOUT_MS = 30_000
#: SQLAlchemy backends the service stores into.
SUPPORTED_BACKENDS: tuple[str, ...] = ("sqlite", "postgresql")
#: Seconds a PostgreSQL connection attempt may take (unless the URL sets ``connect_timeout``).
PG_CONNECT_TIMEOUT_S = 10
_URL_FIX = "pass a SQLite file path (nas.db), sqlite:///path or postgresql+psycopg://user@host/db"


def normalize_url(url: str | os.PathLike[str] | URL) -> URL:
    """Turn a plain path into a SQLite URL and ``postgresql://`` into the psycopg 3 driver.

    Raises:
        StorageError: The text is empty, is not a database URL, or names a database other than SQLite
            and PostgreSQL.
    """
    if isinstance(url, URL):
        parsed = url
    else:
        text = os.fspath(url)
        if not text.strip():
            raise StorageError("the database is empty", field="--db", fix=_URL_FIX)
        if "://" not in text:
            text = f"sqlite:///{text}"
        try:
            parsed = make_url(text)
        except ArgumentError as e:
            raise StorageError(f"{text!r} is not a database URL", field="--db", fix=_URL_FIX) from e
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    backend = parsed.get_backend_name()
    if backend not in SUPPORTED_BACKENDS:
        raise StorageError(f"unsupported database {backend!r} in {shown(parsed)}; energy-nas stores into "
                           "SQLite or PostgreSQL", field="--db", fix=_URL_FIX)
    return parsed


def shown(url: URL) -> str:
    """The URL with its password hidden, for messages and logs."""
    return url.render_as_string(hide_password=True)


def sqlite_file(url: URL) -> Path | None:
    """The file of a SQLite URL, or ``None`` (in-memory, a ``file:`` URI, or not SQLite)."""
    if url.get_backend_name() != "sqlite":
        return None
    database = url.database or ""
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database).expanduser()


def sqlite_read_mode(path: Path, read_only: bool | None) -> str | None:
    """How to open an existing SQLite file.

    ``None`` (read-write), ``"query_only"``, ``"ro"`` or ``"immutable"``.

    Args:
        path: The database file.
        read_only: True: never write. False: read-write. None: read-only only when this process cannot
            write the file or its folder.

    A reader that could write uses a normal connection with ``PRAGMA query_only``, so it cleans up the
    ``-wal`` and ``-shm`` files on close like any connection. One that cannot write needs the ``-shm``
    file: ``mode=ro`` works when it exists or the folder lets SQLite create it; otherwise only
    ``immutable=1`` can read the file (it skips locking, which is safe there because no writer can use
    WAL in a folder where ``-shm`` cannot be created).
    """
    if read_only is False or not path.is_file():
        return None
    folder_writable = os.access(path.resolve().parent, os.W_OK)
    if folder_writable and os.access(path, os.W_OK):
        return "query_only" if read_only else None
    shm = path.with_name(path.name + "-shm")
    return "ro" if folder_writable or shm.exists() else "immutable"


def _check_sqlite_path(path: Path, create: bool) -> None:
    if path.is_dir():
        raise StorageError(f"{str(path)!r} is a folder, not a database file", field="--db",
                           fix=f"pass a file path, e.g. {path / 'nas.db'}")
    parent = path.resolve().parent
    if not parent.is_dir():
        raise StorageError(f"cannot create {str(path)!r}: folder {str(parent)!r} does not exist", field="--db",
                           fix="create the folder or pass another --db path")
    if not create and not path.exists():
        raise StorageError(f"no database at {str(path)!r}", field="--db",
                           fix=f"run `nas search` first, create an empty one with `nas storage upgrade --db "
                           f"{path}`, or point --db (or NAS_DB) at an existing database")


def check_writable(url: URL) -> None:
    """A writer's SQLite file (or, for a new one, its folder) can be written by this process.

    Raises:
        StorageError: One line naming the file and the fix (read commands still work on it).
    """
    path = sqlite_file(url)
    if path is None or path.is_dir():
        return
    folder = path.resolve().parent
    if not folder.is_dir():
        return  # _check_sqlite_path names the missing folder
    if path.exists() and not (os.access(path, os.W_OK) and os.access(folder, os.W_OK)):
        raise StorageError(f"{str(path)!r} is read-only for this user (the file or its folder cannot be written)",
                           field="--db", fix="make the file and its folder writable, or copy the database to a "
                           "writable folder; nas studies/pareto/show/export read it as it is")
    if not path.exists() and not os.access(folder, os.W_OK):
        raise StorageError(f"cannot create {str(path)!r}: folder {str(folder)!r} is not writable", field="--db",
                           fix="pass a --db path in a writable folder")


def _sqlite_engine(url: URL, mode: str | None) -> Engine:
    timeout_s = SQLITE_BUSY_TIMEOUT_MS / 1000
    if mode in (None, "query_only"):
        engine = create_engine(url, connect_args={"timeout": timeout_s})
    else:
        path = sqlite_file(url)
        assert path is not None  # a read mode is only chosen for an existing file
        uri = f"file:{quote(str(path.resolve()))}?{'mode=ro' if mode == 'ro' else 'immutable=1'}"
        engine = create_engine("sqlite://", creator=lambda: sqlite3.connect(
            uri, uri=True, timeout=timeout_s, check_same_thread=False))

    @event.listens_for(engine, "connect")
    def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control away from the sqlite3 module; SQLAlchemy emits BEGIN below.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            if mode is None:  # journal_mode and synchronous write to the file: never on a reader
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA synchronous=NORMAL")
            elif mode == "query_only":
                cursor.execute("PRAGMA query_only=ON")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA foreign_keys=ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _sqlite_begin(conn: Connection) -> None:
        # IMMEDIATE takes the write lock up front (waiting on busy_timeout), so a writer never
        # fails half-way with SQLITE_BUSY when another connection committed in between.
        immediate = conn.get_execution_options().get("nas_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def make_engine(url: URL, *, create: bool = True, read_only: bool | None = False) -> tuple[Engine, bool]:
    """An engine on ``url``, and whether it is read-only (see :func:`sqlite_read_mode`).

    Raises:
        StorageError: A SQLite path that is a folder, lies in a missing folder, or (``create`` False) does
            not exist; or a driver that is not installed.
    """
    path = sqlite_file(url)
    if path is not None:
        _check_sqlite_path(path, create)
        if read_only is False:
            check_writable(url)
        mode = sqlite_read_mode(path, read_only)
        return _sqlite_engine(url, mode), mode is not None
    try:
        if url.get_backend_name() == "sqlite":
            return _sqlite_engine(url, None), False
        connect_args = {} if "connect_timeout" in url.query else {"connect_timeout": PG_CONNECT_TIMEOUT_S}
        return create_engine(url, pool_pre_ping=True, connect_args=connect_args), False
    except NoSuchModuleError as e:
        raise StorageError(f"unknown database driver {url.drivername!r} in {shown(url)}", field="--db",
                           fix="use postgresql+psycopg://user@host/db") from e
    except ImportError as e:
        raise StorageError(f"the driver of {shown(url)} is not installed (no module {e.name!r})", field="--db",
                           fix="install it, or use postgresql+psycopg://user@host/db (psycopg 3 ships with "
                           "energy-nas)") from e


#: Words of PostgreSQL errors about reaching the server (not about a statement).
_PG_CONNECTION_WORDS = ("connection", "could not connect", "could not translate host", "password authentication",
                        "timeout expired", "pg_hba.conf", "server closed", 'database "')


def _first_line(error: BaseException) -> str:
    text = str(getattr(error, "orig", None) or error)
    lines = [" ".join(line.split()) for line in text.splitlines()]
    return next((line for line in lines if line), type(error).__name__)


def database_error(error: BaseException, url: URL, *, doing: str = "open") -> StorageError:
    """One line naming the database, what failed and the fix, for a driver or SQLAlchemy error."""
    where = shown(url)
    reason = _first_line(error)
    low = reason.lower()
    if "file is not a database" in low or "file is encrypted" in low or "malformed" in low:
        return StorageError(f"{where} is not a readable SQLite database ({reason})", field="--db",
                            fix="point --db at a database written by energy-nas, or move the damaged file aside")
    if "readonly database" in low or "read-only" in low:
        return StorageError(f"cannot {doing} {where}: the database or its folder is read-only ({reason})",
                            field="--db", fix="make the file and its folder writable, or copy the database "
                            "to a writable folder (nas studies/pareto/show/export only read)")
    if "database is locked" in low:
        return StorageError(f"cannot {doing} {where}: another process holds the write lock ({reason})",
                            field="--db", fix="wait for the other `nas search` to finish, or stop it")
    if "unable to open database file" in low:
        return StorageError(f"cannot {doing} {where} ({reason})", field="--db",
                            fix="check that the path exists and that you may read (and write) it and its folder")
    if url.get_backend_name() == "postgresql" and any(k in low for k in _PG_CONNECTION_WORDS):
        return StorageError(f"cannot {doing} {where}: {reason}", field="--db",
                            fix="check that the PostgreSQL server runs at that host and port, and the URL, "
                            "user, password and database name")
    kind = type(getattr(error, "orig", None) or error).__name__
    return StorageError(f"database error on {where} (trying to {doing} it): {kind}: {reason}", field="--db",
                        fix="check the URL and the database")
