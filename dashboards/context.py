"""What every request of one app shares.

That is the read-only store, the artefact folder, launches and their caps, and a cache.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import HTTPException

from dashboards.launch import SearchLauncher
from dashboards.limits import LaunchLimits
from nas.errors import StorageError
from nas.fidelity import FidelityReport
from nas.reference import TeacherReference
from storage import Store, StudyInfo, TrialView, normalize_url, study_fidelity

__all__ = ["AppContext", "StudyBundle"]


@dataclass(frozen=True)
class StudyBundle:
    """A consistent snapshot of one study: its info, trials, Pareto front and teacher reference (if any)."""

    info: StudyInfo
    trials: list[TrialView]
    front: list[TrialView]
    teacher: TeacherReference | None = None
    remeasured: list[TrialView] = field(default_factory=list)

    @property
    def front_numbers(self) -> set[int]:
        """Trial numbers of the Pareto front of the search's own measurements (not of ``nas remeasure``'s)."""
        return {t.number for t in self.front if not t.remeasured}

    @property
    def front_noise(self) -> dict[int, str | None]:
        """The own front's members and their mark: ``"clear"``, ``"tied"`` (within noise), or None (noise ignored)."""
        return {t.number: t.noise for t in self.front if not t.remeasured}

    @property
    def fidelity(self) -> FidelityReport:
        """How well the study's early rungs rank its candidates (:func:`storage.study_fidelity`)."""
        return study_fidelity(self.info, self.trials)

    @property
    def version(self) -> str:
        """Changes whenever anything shown about the study changes (pages re-draw only then)."""
        running = ",".join(str(t.number) for t in self.trials if t.state == "RUNNING")
        return f"{self.info.updated_utc.isoformat()}|{len(self.trials)}|{running}|{self.info.status}"


class AppContext:
    """Shared state of one app. The store is opened lazily and read-only (``create=False``).

    A SQLite file that does not exist yet is not created: the server shows no studies until a search
    creates it (the search driver is the only writer).
    """

    def __init__(self, db: str, artefacts: Path, limits: LaunchLimits | None = None) -> None:
        self.db = db
        self.artefacts = artefacts
        self.limits = limits or LaunchLimits()
        self.launcher = SearchLauncher(db, artefacts, max_running=self.limits.max_running)
        self._store: Store | None = None
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[Any, StudyBundle]] = {}
        self.export_locks: dict[tuple[str, int, str], threading.Lock] = {}

    def store(self) -> Store | None:
        """The store, or ``None`` while the SQLite file does not exist yet.

        Raises:
            StorageError: The database exists but cannot be opened (old schema, no tables, unreachable).
        """
        if self._store is not None:
            return self._store
        with self._lock:
            if self._store is None:
                url = normalize_url(self.db)
                if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:") \
                        and not Path(url.database).exists():
                    return None
                self._store = Store.open(self.db, create=False)
            return self._store

    def close(self) -> None:
        """Release the database connections."""
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None

    def require_store(self) -> Store:
        """The store, or HTTP 404 when the database has no studies yet."""
        store = self.store()
        if store is None:
            raise HTTPException(404, f"the database {self.db} does not exist yet; launch a search first")
        return store

    def info(self, study: str) -> StudyInfo:
        """The study's info, or HTTP 404 naming it."""
        store = self.require_store()
        try:
            return store.get_study(study)
        except StorageError as e:
            raise HTTPException(404, f"unknown study {study!r}") from e

    def bundle(self, study: str) -> StudyBundle:
        """Trials and front of a study, recomputed only when the study changed since the last call."""
        store = self.require_store()
        info = self.info(study)
        running = tuple(t.number for t in store.trials(study, states=["RUNNING"]))
        key = (info.updated_utc, info.status, info.n_trials_complete, info.n_trials_failed,
               info.n_trials_pruned, running)
        cached = self._cache.get(study)
        if cached is not None and cached[0] == key:
            return cached[1]
        bundle = StudyBundle(info=info, trials=store.trials(study), front=store.front(study),
                             teacher=store.teacher_reference(study), remeasured=store.remeasured_trials(study))
        self._cache[study] = (key, bundle)
        return bundle
