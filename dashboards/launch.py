"""Searches launched over HTTP run as separate ``nas search`` processes.

The server never writes the database: the search driver stays its only writer (decision 1). A spec
accepted by ``POST /api/studies`` is checked here (paths, filters, storage, and the resource caps of
:class:`LaunchLimits`), written as YAML under the server's artefact folder, and handed to
``python -m nas search SPEC --db URL --quiet``. Every path built from a request goes through
:func:`path_under`, so none leaves its folder.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

import nas
from dashboards.limits import LaunchLimitError, LaunchLimits
from nas.errors import ConfigError
from nas.spec import StudySpec
from nas.where import compile_where
from storage import FILTER_NAMES

__all__ = ["SearchLauncher", "Launch", "LaunchLimits", "LaunchLimitError", "check_http_spec", "search_command",
           "inside", "path_under"]

log = logging.getLogger(__name__)

#: Teachers the service can provide itself (anything else must be a folder under the data folder).
_BUILTIN_TEACHERS = ("auto",)


def inside(root: Path, candidate: Path) -> bool:
    """Whether ``candidate`` resolves (symlinks followed) to ``root`` or a path below it."""
    try:
        candidate.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


def path_under(root: Path, *parts: str, field: str) -> Path:
    """``root / parts...``, or :class:`ConfigError` naming ``field`` when that path would leave ``root``.

    The one check for paths built from what a client sent (study names, task and teacher paths):
    ``..``, absolute parts and symbolic links out of ``root`` are all caught, because the joined path
    is resolved before it is compared (see :func:`inside`).
    """
    path = root.joinpath(*parts)
    if not inside(root, path):
        raise ConfigError(f"the path {'/'.join(parts)!r} would leave {root}", field=field,
                          value=parts[-1] if parts else None, fix=f"name a path inside {root}")
    return path


def check_http_spec(spec: StudySpec, *, db: str, artefacts: Path,
                    limits: LaunchLimits | None = None) -> StudySpec:
    """The spec a search launched over HTTP will run, or :class:`ConfigError` naming the bad field.

    A remote client may not point the server at its files: the task must be ``builtin:NAME`` or a file
    under ``ARTEFACTS/data``, the teacher ``auto`` or a folder there too. Storage is the server's own
    database and artefact folder, so ``storage.url`` and ``storage.artefacts_dir`` must be left unset.
    Constraints are parsed by :mod:`nas.where` (never evaluated as Python). Resources and the trial
    budget must fit ``limits`` (default :class:`LaunchLimits`).
    """
    (limits or LaunchLimits()).check(spec)
    data_dir = artefacts / "data"
    if not spec.task.startswith("builtin:"):
        try:
            task_path = path_under(data_dir, spec.task, field="task")
        except ConfigError as e:
            raise ConfigError("over HTTP a task is builtin:NAME or a path relative to the server's data folder",
                              field="task", value=spec.task, fix=f"put the file under {data_dir} and name it relatively"
                              ) from e
        spec = spec.with_overrides(task=str(task_path))
    if spec.teacher is not None and spec.teacher.path not in _BUILTIN_TEACHERS:
        try:
            teacher_path = path_under(data_dir, spec.teacher.path, field="teacher.path")
        except ConfigError as e:
            raise ConfigError("over HTTP a teacher is 'auto' or a folder relative to the server's data folder",
                              field="teacher.path", value=spec.teacher.path,
                              fix=f"put the folder under {data_dir}") from e
        spec = spec.with_overrides(**{"teacher.path": str(teacher_path)})
    default_storage = StudySpec().storage
    if spec.storage.url != default_storage.url:
        raise ConfigError("the server runs searches in its own database", field="storage.url",
                          value=spec.storage.url, fix="leave storage.url out of the body")
    if spec.storage.artefacts_dir is not None:
        raise ConfigError("the server keeps artefacts in its own folder", field="storage.artefacts_dir",
                          value=spec.storage.artefacts_dir, fix="leave storage.artefacts_dir out of the body")
    for i, expr in enumerate(spec.constraints):
        try:
            compile_where(expr, FILTER_NAMES)
        except ConfigError as e:
            raise ConfigError(str(e), field=f"constraints[{i}]") from e
    study_dir = path_under(artefacts / "studies", spec.name, field="name")
    return spec.with_overrides(**{"storage.url": db, "storage.artefacts_dir": str(study_dir)})


def search_command(spec_path: Path, db: str) -> list[str]:
    """The command line that runs one search (tests replace it with something quick)."""
    return [sys.executable, "-m", "nas", "search", str(spec_path), "--db", db, "--quiet"]


def _child_env() -> dict[str, str]:
    # Run the very code this server runs, even where an editable install's path hook is stale.
    env = dict(os.environ)
    code_root = str(Path(nas.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (code_root, env.get("PYTHONPATH", "")) if p)
    return env


@dataclass
class Launch:
    """A search this server started: its process and where it logs."""

    study: str
    process: subprocess.Popen[bytes]
    spec_path: Path
    log_path: Path
    started_utc: datetime

    def status(self) -> dict[str, Any]:
        """``{"state": "running" | "exited", "returncode": ..., "started_utc": ..., "log": name}``."""
        code = self.process.poll()
        return {"state": "running" if code is None else "exited", "returncode": code, "pid": self.process.pid,
                "started_utc": self.started_utc.isoformat(), "log": self.log_path.name}


class SearchLauncher:
    """Starts ``nas search`` subprocesses: one per study name at a time, at most ``max_running`` at once."""

    def __init__(self, db: str, artefacts: Path, max_running: int = 1) -> None:
        self._db = db
        self._root = artefacts
        self._max_running = max_running
        self._lock = threading.Lock()
        self._launches: dict[str, Launch] = {}

    def running(self, study: str) -> bool:
        """Whether a search for ``study`` started here is still running."""
        launch = self._launches.get(study)
        return launch is not None and launch.process.poll() is None

    def status(self, study: str) -> dict[str, Any] | None:
        """The status of the last search started here for ``study``, or ``None``."""
        launch = self._launches.get(study)
        return launch.status() if launch else None

    def launch(self, spec: StudySpec) -> Launch:
        """Write the spec under ``ARTEFACTS/specs`` and start the search in the background.

        Raises:
            ConfigError: A search for this study is already running from this server, or the spec's name
                would place files outside the artefact folder.
            LaunchLimitError: ``max_running`` searches started here are still running.
        """
        with self._lock:
            if self.running(spec.name):
                raise ConfigError("a search for this study is already running", field="name", value=spec.name,
                                  fix="wait for it to finish or choose another name")
            running = sorted(name for name in self._launches if self.running(name))
            if len(running) >= self._max_running:
                raise LaunchLimitError(
                    f"{len(running)} searches launched from this server are still running "
                    f"({', '.join(running)}), and it runs at most {self._max_running} at once",
                    fix="wait for one to finish, or restart nas serve with a higher --max-launches")
            stamp = datetime.now(timezone.utc)
            tag = f"{spec.name}-{stamp:%Y%m%dT%H%M%S%f}"
            spec_path = path_under(self._root / "specs", f"{tag}.yaml", field="name")
            log_path = path_under(self._root / "logs", f"{tag}.log", field="name")
            spec_path.parent.mkdir(parents=True, exist_ok=True)
            log_path.parent.mkdir(parents=True, exist_ok=True)
            spec_path.write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False), encoding="utf-8")
            with open(log_path, "wb") as log_file:
                # A new session: a search launched over HTTP outlives a restart of the server.
                process = subprocess.Popen(search_command(spec_path, self._db), stdin=subprocess.DEVNULL,
                                           stdout=log_file, stderr=subprocess.STDOUT, env=_child_env(),
                                           cwd=self._root, start_new_session=True)
            launch = Launch(spec.name, process, spec_path, log_path, stamp)
            self._launches[spec.name] = launch
            log.info("launched search %r (pid %d), log %s", spec.name, process.pid, log_path)
            return launch
