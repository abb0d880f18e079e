"""A search leaves no Ray process behind: after a SIGKILL of its driver, the next start reaps them."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import psutil

from nas.runner.ray_session import RaySession, reap_orphans


def _sleeper() -> psutil.Process:
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    return psutil.Process(p.pid)


def _dead_pid() -> tuple[int, float]:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid, time.time() - 5.0


def _record(directory: Path, driver: tuple[int, float], procs: list[tuple[int, float]],
            folders: list[str] | None = None) -> Path:
    f = directory / f"{driver[0]}-1.json"
    f.write_text(json.dumps({"driver": list(driver), "processes": [list(p) for p in procs],
                             "folders": folders or []}))
    return f


def test_processes_and_folders_of_a_dead_driver_are_reaped(tmp_path: Path) -> None:
    orphan = _sleeper()
    left = tmp_path / "nas-tune-left"
    left.mkdir()
    f = _record(tmp_path, _dead_pid(), [(orphan.pid, orphan.create_time())], [str(left)])
    assert reap_orphans(tmp_path) == 1
    assert not orphan.is_running() or orphan.status() == psutil.STATUS_ZOMBIE
    assert not f.exists() and not left.exists()


def test_a_live_driver_and_reused_pids_are_left_alone(tmp_path: Path) -> None:
    mine = _sleeper()
    other = _sleeper()
    try:
        me = psutil.Process()
        live = _record(tmp_path, (me.pid, me.create_time()), [(mine.pid, mine.create_time())])
        _record(tmp_path, _dead_pid(), [(other.pid, other.create_time() + 100.0)])  # pid reused since
        assert reap_orphans(tmp_path) == 0
        assert mine.is_running() and other.is_running() and live.exists()
    finally:
        for p in (mine, other):
            p.kill()


def test_a_session_records_and_stops_only_ray_processes(tmp_path: Path) -> None:
    not_ray = _sleeper()  # e.g. a test's database server, also a child of the driver
    fake_ray = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)  # site-packages/ray/raylet"])
    try:
        folder = tmp_path / "nas-tune-x"
        folder.mkdir()
        session = RaySession(folders=[str(folder)], directory=tmp_path)
        session.owns_ray = True
        session.record()
        rec = json.loads(next(tmp_path.glob("*.json")).read_text())
        assert [p for p, _ in rec["processes"]] == [fake_ray.pid]
        session.stop()
        assert fake_ray.wait(timeout=10) is not None
        assert not_ray.is_running() and not list(tmp_path.glob("*.json")) and not folder.exists()
    finally:
        not_ray.kill()
        fake_ray.kill()
