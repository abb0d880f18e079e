"""Local Ray for one search, and nothing of it left behind.

``ray.init(address="local")`` starts a GCS server, a raylet, agents and workers under the driver. Ray
ties most of them to the driver's life, but not all: after a SIGKILL of the driver, agents that ignore
SIGTERM and idle workers have been seen to outlive it, and an orphaned worker can still write files.

So a search records the processes of its local Ray (pid plus start time, refreshed as workers appear)
and its temporary folders (the ``artifacts`` folder of its local Ray's session, where Tune stages copies of
the results folder that :mod:`nas.runner.tracking` keeps under the study's artefacts folder) in a registry
file named after the driver. On a
clean exit it shuts Ray down, kills whatever survived and removes the folders. A driver killed with
SIGKILL cannot clean up; the next search started on this machine does: :func:`reap_orphans` kills the
recorded processes and removes the recorded folders of every registry file whose driver is gone.
A joined cluster (``--ray-address``) is never touched: its processes are not ours.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import psutil
import ray

__all__ = ["RaySession", "reap_orphans", "registry_dir"]

log = logging.getLogger(__name__)

_Proc = tuple[int, float]  # (pid, create_time)


def registry_dir() -> Path:
    """The folder where running searches register their Ray processes, created if missing.

    ``NAS_RAY_REGISTRY``, else ``energy-nas-ray`` in the temp folder.
    """
    d = Path(os.environ.get("NAS_RAY_REGISTRY") or Path(tempfile.gettempdir()) / "energy-nas-ray")
    d.mkdir(parents=True, exist_ok=True)
    return d


def _alive(pid: int, created: float) -> psutil.Process | None:
    """The process, if ``pid`` still is the process that started at ``created`` (not a reused pid)."""
    try:
        p = psutil.Process(pid)
        return p if abs(p.create_time() - created) < 1e-3 else None
    except psutil.Error:
        return None


def _kill(procs: list[psutil.Process], grace_s: float = 3.0) -> int:
    """SIGTERM, then SIGKILL what is left after ``grace_s``; returns how many were alive."""
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=grace_s)
    return len(procs)


def _is_ray(p: psutil.Process) -> bool:
    """Whether ``p`` is one of Ray's processes.

    A search's driver may have other children: a test's database server, a progress pager.
    """
    try:
        name = p.name()
        if name.startswith("ray::") or name in ("raylet", "gcs_server"):
            return True
        return any("/ray/" in arg for arg in p.cmdline()[:3])
    except psutil.Error:
        return False


def _descendants(roots: list[psutil.Process]) -> list[psutil.Process]:
    out: dict[int, psutil.Process] = {p.pid: p for p in roots}
    for p in roots:
        try:
            out.update({c.pid: c for c in p.children(recursive=True)})
        except psutil.Error:
            continue
    return list(out.values())


def reap_orphans(directory: Path | None = None) -> int:
    """Kill the recorded Ray processes of searches whose driver died; returns how many were killed."""
    killed = 0
    for f in sorted((directory or registry_dir()).glob("*.json")):
        try:
            rec = json.loads(f.read_text())
            driver: _Proc = (int(rec["driver"][0]), float(rec["driver"][1]))
            procs = [(int(p), float(c)) for p, c in rec["processes"]]
            folders = [Path(d) for d in rec.get("folders", [])]
        except (OSError, ValueError, KeyError, TypeError):
            f.unlink(missing_ok=True)
            continue
        if _alive(*driver) is not None:
            continue  # a live search's processes
        survivors = [p for pid, c in procs if (p := _alive(pid, c)) is not None]
        if survivors:
            log.warning("stopping %d Ray process(es) left by a search whose driver (pid %d) died",
                        len(survivors), driver[0])
            killed += _kill(_descendants(survivors))
        for d in folders:
            shutil.rmtree(d, ignore_errors=True)
        f.unlink(missing_ok=True)
    return killed


class RaySession:
    """One search's local Ray and temporary folders: :meth:`record` them, :meth:`stop` them all.

    Args:
        folders: Temporary folders of the search, removed on :meth:`stop` (or by the next search's
            :func:`reap_orphans` if this driver is killed).
        directory: The registry folder (default :func:`registry_dir`).
    """

    def __init__(self, folders: list[str] | None = None, directory: Path | None = None) -> None:
        me = psutil.Process()
        self._me = me
        self._file = (directory or registry_dir()) / f"{me.pid}-{int(me.create_time() * 1000)}.json"
        self._known: dict[int, float] = {}
        self._folders = list(folders or [])
        self.owns_ray = False

    def add_folder(self, folder: str) -> None:
        """Remove ``folder`` too on :meth:`stop` (or in the next search, if this driver is killed)."""
        if folder not in self._folders:
            self._folders.append(folder)

    def record(self) -> None:
        """Write the registry file: the folders, and the driver's Ray descendants if it owns its Ray."""
        if self.owns_ray:
            try:
                for c in self._me.children(recursive=True):
                    if not _is_ray(c):
                        continue
                    with contextlib.suppress(psutil.Error):
                        self._known.setdefault(c.pid, c.create_time())
            except psutil.Error:
                pass
        tmp = self._file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"driver": [self._me.pid, self._me.create_time()],
                                   "processes": [[p, c] for p, c in self._known.items()],
                                   "folders": self._folders}))
        tmp.replace(self._file)

    def stop(self) -> None:
        """Shut an owned Ray down, kill every recorded process that survived it, remove the folders."""
        if self.owns_ray:
            self._stop_ray()
        for d in self._folders:
            shutil.rmtree(d, ignore_errors=True)
        self._file.unlink(missing_ok=True)

    def _stop_ray(self) -> None:
        self.record()
        try:
            if ray.is_initialized():
                ray.shutdown()
        except Exception as e:  # noqa: BLE001 - the kill below still runs
            log.warning("ray.shutdown failed: %s", e)
        left = _descendants([p for pid, c in self._known.items() if (p := _alive(pid, c)) is not None])
        if left:
            log.info("stopping %d Ray process(es) that outlived ray.shutdown()", len(left))
            _kill(left)
