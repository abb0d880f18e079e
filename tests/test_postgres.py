"""The storage contract on a real PostgreSQL server, started by the tests themselves.

Needs the PostgreSQL server binaries (``initdb``, ``pg_ctl``; Debian/Ubuntu: ``apt-get install -y
postgresql``) and ``psycopg`` (the ``postgres`` extra). When run as root, the server runs as the
``postgres`` user through ``runuser`` (PostgreSQL refuses to run as root). Without the binaries the
tests are skipped with the reason shown by ``-ra``.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.storage_contract import StorageContract

pytestmark = pytest.mark.postgres


def _pg_bin_dir() -> Path | None:
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(os.path.realpath(initdb)).parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """Start a throwaway PostgreSQL server on 127.0.0.1; yield its base URL (no database name)."""
    pytest.importorskip("psycopg", reason="psycopg is not installed: pip install 'energy-nas[postgres]'")
    bin_dir = _pg_bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install -y postgresql")
    prefix: list[str] = []
    owner = None
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root but there is no 'postgres' user to run the server as")
        prefix = ["runuser", "-u", "postgres", "--"]
    base = Path(tempfile.mkdtemp(prefix="nas-pg-"))
    data, sock, log = base / "data", base / "sock", base / "server.log"
    sock.mkdir()
    if owner is not None:
        for p in (base, sock):
            os.chown(p, owner.pw_uid, owner.pw_gid)
    port = _free_port()

    def run(*args: str) -> None:
        res = subprocess.run([*prefix, *args], capture_output=True, text=True, timeout=120)
        if res.returncode != 0:
            detail = log.read_text() if log.exists() else ""
            raise RuntimeError(f"{' '.join(args)} failed:\n{res.stdout}\n{res.stderr}\n{detail}")

    run(str(bin_dir / "initdb"), "-D", str(data), "-U", "nas", "-A", "trust", "-E", "UTF8",
        "--locale=C", "--no-sync")
    run(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o",
        f"-h 127.0.0.1 -p {port} -k {sock} -c fsync=off -c synchronous_commit=off -c full_page_writes=off",
        "start")
    try:
        yield f"postgresql+psycopg://nas@127.0.0.1:{port}"
    finally:
        subprocess.run([*prefix, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A fresh database on the session's server, dropped afterwards."""
    import psycopg

    name = f"nas_{uuid.uuid4().hex[:12]}"
    admin = postgres_server.replace("postgresql+psycopg://", "postgresql://") + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield f"{postgres_server}/{name}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class TestPostgresStorage(StorageContract):
    @pytest.fixture
    def db_url(self, postgres_url: str) -> Iterator[str]:
        yield postgres_url
