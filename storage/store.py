"""The one storage API: the search driver writes through it, the CLI and dashboards read through it.

A :class:`Store` wraps one SQLAlchemy engine on a SQLite file or a PostgreSQL database. Optuna's
``RDBStorage`` may use the same database (see :mod:`storage.models` for how the two stay apart).

* SQLite runs in WAL mode with a 30 s busy timeout and foreign keys on, so readers never block the
  single writer (the driver) and the writer never blocks readers. Write sessions start with
  ``BEGIN IMMEDIATE`` so that two writers queue on the busy timeout instead of failing mid-transaction.
  Readers that cannot write the file or its folder open it read-only (:mod:`storage.engine`).
* Opening a database checks its schema revision (:mod:`storage.schema`). A new database is created at
  the newest revision; an older one raises :class:`~nas.errors.StorageError` naming the command that
  upgrades it.
* Every public method runs in one :meth:`Store.session` and returns frozen records
  (:mod:`storage.views`), never rows. The work itself is done by :mod:`storage.studies`,
  :mod:`storage.trials`, :mod:`storage.fronts` and :mod:`storage.queries`, on that session; the
  contract, with each method's documentation, is :class:`storage.base.BaseStorage`.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.engine import URL
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from nas.config import Candidate
from nas.errors import StorageError
from nas.records import FailKind, InferenceEnergy, TrialResult
from nas.reference import TeacherReference
from nas.supernet_record import SupernetRecord
from storage import fronts, queries, references, schema, studies, supernets, trials
from storage.base import BaseStorage
from storage.engine import SQLITE_BUSY_TIMEOUT_MS, database_error, make_engine, normalize_url, shown
from storage.file_guard import FileIdentity
from storage.schema import alembic_config, head_revision
from storage.studies import ALLOWED_OBJECTIVES, study_row
from storage.views import ArtefactView, FrontEntry, ReadingView, StudyInfo, TrialCost, TrialView

__all__ = [
    "Store",
    "ALLOWED_OBJECTIVES",
    "normalize_url",
    "alembic_config",
    "head_revision",
    "SQLITE_BUSY_TIMEOUT_MS",
]

log = logging.getLogger(__name__)


class Store(BaseStorage):
    """Database access for studies, trials, measurements, artefacts and Pareto fronts.

    Create one with :meth:`open`. A store is safe to share between threads (each method opens its own
    session); only one process (the search driver) should write. The operations are documented on
    :class:`storage.base.BaseStorage`.
    """

    def __init__(self, engine: Engine, url: URL, *, read_only: bool = False) -> None:
        """Use :meth:`open` instead; this does no schema check."""
        self._engine = engine
        self._url = url
        self._read_only = read_only
        self._sessions = sessionmaker(bind=engine, expire_on_commit=False)
        database = url.database or ""
        self._file: FileIdentity | None = None
        if url.get_backend_name() == "sqlite" and database not in ("", ":memory:") and not database.startswith("file:"):
            with contextlib.suppress(FileNotFoundError):
                self._file = FileIdentity(database)

    # --- lifecycle ------------------------------------------------------------------------------
    @classmethod
    def open(cls, url: str | os.PathLike[str] | URL, *, create: bool = True,
             read_only: bool | None = None) -> Store:
        """Open a database, creating it at the newest schema if it is new.

        Args:
            url: A SQLAlchemy URL (``sqlite:///nas.db``, ``postgresql+psycopg://user@host/db``) or a plain
                file path, taken as SQLite.
            create: Create the SQLite file and our tables in a database that has none (Optuna's tables
                may be there). With ``create`` False a missing SQLite file is an error, never created.
            read_only: SQLite only. True: never write (``mode=ro``, or ``immutable=1`` in a read-only
                folder; see :func:`storage.engine.sqlite_read_mode`). None (default): read-only when
                ``create`` is False and this process cannot write the file or its folder. False: read-write.

        Raises:
            StorageError: The database cannot be reached, has no schema and ``create`` is False, or its
                schema is older (the message gives the ``nas storage upgrade`` command) or newer than
                this build. The message is one line naming the database and the fix.
        """
        parsed = normalize_url(url)
        if read_only and create:
            raise StorageError("a read-only store cannot create a database", field="read_only",
                               fix="pass create=False")
        engine, is_read_only = make_engine(parsed, create=create, read_only=read_only if not create else False)
        try:
            schema.check_schema(engine, parsed, can_create=create and not is_read_only)
        except SQLAlchemyError as e:
            engine.dispose()
            raise database_error(e, parsed) from e
        except BaseException:
            engine.dispose()
            raise
        if is_read_only:
            log.info("opened %s read-only", shown(parsed))
        return cls(engine, parsed, read_only=is_read_only)

    @classmethod
    def upgrade(cls, url: str | os.PathLike[str] | URL, revision: str = "head") -> str:
        """Migrate the database to ``revision`` (default: newest), creating our tables if needed.

        At the newest revision, every study's persisted fronts are then rebuilt from its trials, so
        that they follow this build's front rule (e.g. study constraints, applied since revision 0003).

        Returns:
            The revision the database is at afterwards.

        Raises:
            StorageError: On a database error or an unknown revision.
        """
        parsed = normalize_url(url)
        after = schema.upgrade(parsed, revision)
        if after == head_revision():
            with cls.open(parsed, create=False, read_only=False) as store, store.session(write=True) as s:
                fronts.rebuild_all_fronts(s)
        return after

    @property
    def url(self) -> str:
        """The full database URL, password included (for Optuna's ``RDBStorage``); print :attr:`display_url`."""
        return self._url.render_as_string(hide_password=False)

    @property
    def display_url(self) -> str:
        """The database URL with the password hidden, for messages and logs."""
        return shown(self._url)

    def optuna_engine_kwargs(self) -> dict[str, Any]:
        """``engine_kwargs`` for ``optuna.storages.RDBStorage(store.url, engine_kwargs=...)``.

        On SQLite, Optuna's connections wait on the same busy timeout as ours (the file is already in WAL
        mode, which is persistent). On PostgreSQL, stale pooled connections are detected before use.
        """
        if self.dialect == "sqlite":
            return {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}}
        return {"pool_pre_ping": True}

    @property
    def read_only(self) -> bool:
        """Whether this store was opened read-only (it can read, never write)."""
        return self._read_only

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self._url.get_backend_name()

    def schema_revision(self) -> str | None:
        """The schema revision recorded in the database."""
        with self._engine.connect() as conn:
            return schema.schema_state(conn)[0]

    def close(self) -> None:
        """Release every pooled connection."""
        self._engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the one session scope ----------------------------------------------------------------------
    @contextmanager
    def session(self, *, write: bool = False) -> Iterator[Session]:
        """A session that commits on success and rolls back on any error.

        Args:
            write: Take SQLite's write lock at the start (``BEGIN IMMEDIATE``). Readers leave it False.

        Raises:
            StorageError: Wrapping any ``SQLAlchemyError`` (``raise ... from e``).
        """
        session = self._sessions()
        try:
            if write:
                session.connection(execution_options={"nas_write": True})
            yield session
            if write and self._file is not None:
                dbapi = session.connection().connection.dbapi_connection
                session.commit()
                self._file.verify(dbapi)  # a deleted or replaced file stops the writer, loudly
            session.commit()
        except SQLAlchemyError as e:
            session.rollback()
            raise database_error(e, self._url, doing="write" if write else "read") from e
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    # --- studies --------------------------------------------------------------------------------
    def create_study(self, name: str, spec_json: str, objectives: Sequence[tuple[str, str]], *,
                     optuna_study_id: int | None = None, budget_energy_j: float | None = None,
                     budget_trials: int | None = None, budget_wall_s: float | None = None,
                     exist_ok: bool = False) -> StudyInfo:
        """Record a new study in one write; see :meth:`BaseStorage.create_study`."""
        with self.session(write=True) as s:
            return studies.create_study(s, name, spec_json, objectives, optuna_study_id=optuna_study_id,
                                        budget_energy_j=budget_energy_j, budget_trials=budget_trials,
                                        budget_wall_s=budget_wall_s, exist_ok=exist_ok)

    def get_study(self, name: str) -> StudyInfo:
        """The study called ``name``, with its cost and trial counts derived from its trials."""
        with self.session() as s:
            return studies.read_study(s, study_row(s, name))

    def list_studies(self) -> list[StudyInfo]:
        """Every study, oldest first."""
        with self.session() as s:
            return queries.list_studies(s)

    def set_study_status(self, name: str, status: str) -> None:
        """Set a study's status (``RUNNING``, ``COMPLETE``, ``FAILED`` or ``STOPPED``)."""
        with self.session(write=True) as s:
            studies.set_study_status(study_row(s, name), status)

    def update_study_spec(self, name: str, spec_json: str, *, budget_energy_j: float | None = None,
                          budget_trials: int | None = None, budget_wall_s: float | None = None) -> StudyInfo:
        """Replace a study's spec and the budgets given; see :meth:`BaseStorage.update_study_spec`."""
        with self.session(write=True) as s:
            return studies.update_study_spec(s, study_row(s, name), spec_json, budget_energy_j=budget_energy_j,
                                             budget_trials=budget_trials, budget_wall_s=budget_wall_s)

    def link_optuna_study(self, name: str, optuna_study_id: int) -> None:
        """Record Optuna's study id for an existing study."""
        with self.session(write=True) as s:
            studies.link_optuna_study(study_row(s, name), optuna_study_id)

    # --- the teacher reference ------------------------------------------------------------------
    def put_teacher_reference(self, study: str, ref: TeacherReference) -> None:
        """Store (or replace) the study's measured teacher; see :meth:`BaseStorage.put_teacher_reference`."""
        with self.session(write=True) as s:
            references.put_teacher_reference(s, study_row(s, study), ref)

    def put_supernet(self, study: str, record: SupernetRecord) -> None:
        """Store (or replace) the study's supernet record; see :meth:`BaseStorage.put_supernet`."""
        with self.session(write=True) as s:
            supernets.put_supernet(s, study_row(s, study), record)

    def supernet(self, study: str) -> SupernetRecord | None:
        """The study's supernet record, or ``None``; see :meth:`BaseStorage.supernet`."""
        with self.session() as s:
            return supernets.supernet(s, study_row(s, study))

    def teacher_reference(self, study: str) -> TeacherReference | None:
        """The study's measured teacher, or ``None``; see :meth:`BaseStorage.teacher_reference`."""
        with self.session() as s:
            return references.teacher_reference(s, study_row(s, study))

    # --- trials: writing ---------------------------------------------------------------------------
    def start_trial(self, study: str, trial_number: int, candidate: Candidate, *,
                    optuna_trial_id: int | None = None) -> None:
        """Record a trial as RUNNING with its candidate; see :meth:`BaseStorage.start_trial`."""
        with self.session(write=True) as s:
            trials.start_trial(s, study_row(s, study), trial_number, candidate, optuna_trial_id)

    def record_rung(self, study: str, trial_number: int, step: int, accuracy: float) -> None:
        """Store a RUNNING trial's dev accuracy at a rung; see :meth:`BaseStorage.record_rung`."""
        with self.session(write=True) as s:
            trials.record_rung(s, study_row(s, study), trial_number, step, accuracy)

    def finish_trial(self, study: str, trial_number: int, result: TrialResult, *, cost: TrialCost,
                     fail_kind: FailKind = FailKind.CANDIDATE, optuna_trial_id: int | None = None) -> None:
        """Store a trial's result, readings and cost, and its front; see :meth:`BaseStorage.finish_trial`."""
        with self.session(write=True) as s:
            trials.finish_trial(s, study_row(s, study), trial_number, result, cost=cost, fail_kind=fail_kind,
                                optuna_trial_id=optuna_trial_id)

    def fail_trial(self, study: str, trial_number: int, reason: str, *, candidate: Candidate | None = None,
                   cost: TrialCost | None = None, kind: FailKind = FailKind.CANDIDATE,
                   optuna_trial_id: int | None = None) -> None:
        """Mark a trial FAIL, creating it if it never started; see :meth:`BaseStorage.fail_trial`."""
        with self.session(write=True) as s:
            trials.fail_trial(s, study_row(s, study), trial_number, reason, candidate=candidate, cost=cost,
                              kind=kind, optuna_trial_id=optuna_trial_id)

    def prune_trial(self, study: str, trial_number: int, reason: str, *, cost: TrialCost | None = None,
                    wall_s: float | None = None, optuna_trial_id: int | None = None) -> None:
        """Mark a RUNNING trial PRUNED with its cost; see :meth:`BaseStorage.prune_trial`."""
        if cost is None and wall_s is not None:
            cost = TrialCost(wall_s=wall_s)
        with self.session(write=True) as s:
            trials.prune_trial(s, study_row(s, study), trial_number, reason, cost=cost,
                               optuna_trial_id=optuna_trial_id)

    def mark_unfinished_failed(self, study: str, reason: str) -> list[int]:
        """Mark every RUNNING trial FAIL (interrupted); returns their numbers, ascending."""
        with self.session(write=True) as s:
            return trials.mark_unfinished_failed(s, study_row(s, study), reason)

    def add_artefact(self, study: str, trial_number: int, kind: str, path: str | os.PathLike[str], *,
                     sha256: str | None = None, size_bytes: int | None = None) -> None:
        """Record a file a trial produced (``kind`` e.g. ``"weights"``)."""
        with self.session(write=True) as s:
            trials.add_artefact(s, study_row(s, study), trial_number, kind, path, sha256=sha256,
                                size_bytes=size_bytes)

    def remove_artefacts(self, study: str, trial_number: int, kind: str) -> list[str]:
        """Forget a trial's artefacts of ``kind``; returns their paths for the caller to delete."""
        with self.session(write=True) as s:
            return trials.remove_artefacts(s, study_row(s, study), trial_number, kind)

    def add_remeasurement(self, study: str, trial_number: int, readings: Sequence[InferenceEnergy]) -> list[str]:
        """Store a trial's readings taken again on another machine; see :meth:`BaseStorage.add_remeasurement`."""
        with self.session(write=True) as s:
            return trials.add_remeasurement(s, study_row(s, study), trial_number, readings)

    def add_tie_reading(self, study: str, trial_number: int, reading: InferenceEnergy) -> None:
        """A trial's reading of record taken again with more windows; see :meth:`BaseStorage.add_tie_reading`."""
        with self.session(write=True) as s:
            trials.add_tie_reading(s, study_row(s, study), trial_number, reading)

    def refine_trial(self, study: str, trial_number: int, result: TrialResult, cost: TrialCost) -> list[str]:
        """A trial's result replaced by its candidate trained further; see :meth:`BaseStorage.refine_trial`."""
        with self.session(write=True) as s:
            return trials.refine_trial(s, study_row(s, study), trial_number, result, cost)

    def measured_forms(self, study: str, trial_number: int, hardware: str) -> set[str]:
        """The serving forms a trial has a reading of on ``hardware``."""
        with self.session() as s:
            return trials.measured_forms(s, study_row(s, study), trial_number, hardware)

    # --- trials: reading ---------------------------------------------------------------------------
    def trials(self, study: str, *, states: Iterable[str] | None = None) -> list[TrialView]:
        """A study's trials in number order, optionally only those in ``states``."""
        wanted = queries.check_states(states)
        with self.session() as s:
            return queries.trials(s, study_row(s, study), wanted)

    def trial(self, study: str, number: int) -> TrialView:
        """One trial of a study, by number."""
        with self.session() as s:
            return queries.trial(s, study_row(s, study), number)

    def failed_candidate_hashes(self, study: str) -> set[str]:
        """Hashes of the candidates that failed by their own fault (never resampled)."""
        with self.session() as s:
            return queries.failed_candidate_hashes(s, study_row(s, study))

    def complete_candidate_hashes(self, study: str) -> dict[str, int]:
        """``candidate hash -> trial number`` of the study's COMPLETE trials."""
        with self.session() as s:
            return queries.complete_candidate_hashes(s, study_row(s, study))

    def artefacts(self, study: str, trial_number: int | None = None) -> list[ArtefactView]:
        """Files recorded for a study, or for one of its trials, oldest first."""
        with self.session() as s:
            return queries.artefacts(s, study_row(s, study), trial_number)

    def readings(self, study: str, trial_number: int) -> list[ReadingView]:
        """The energy readings of one trial."""
        with self.session() as s:
            return queries.readings(s, study_row(s, study), trial_number)

    # --- fronts ------------------------------------------------------------------------------------
    def front(self, study: str, *, where: str | None = None, hardware: str | None = None,
              include_trivial: bool = False) -> list[TrialView]:
        """The Pareto-optimal COMPLETE trials, recomputed; see :meth:`BaseStorage.front`."""
        with self.session() as s:
            return fronts.front(s, study_row(s, study), where=where, hardware=hardware,
                                include_trivial=include_trivial)

    def trivial_trials(self, study: str, *, where: str | None = None,
                       hardware: str | None = None) -> list[TrialView]:
        """The COMPLETE trials :meth:`front` keeps out as at or below the majority-class rate."""
        with self.session() as s:
            return fronts.trivial_trials(s, study_row(s, study), where=where, hardware=hardware)

    def persisted_front(self, study: str, *, hardware: str | None = None) -> list[FrontEntry]:
        """The front as stored in ``nas_pareto_front``, by hardware fingerprint and position."""
        with self.session() as s:
            return fronts.persisted_front(s, study_row(s, study), hardware=hardware)

    def rebuild_front(self, study: str) -> None:
        """Recompute the study's persisted fronts from all its COMPLETE trials (a repair tool)."""
        with self.session(write=True) as s:
            fronts.rebuild_fronts(s, study_row(s, study))

    def remeasured_trials(self, study: str) -> list[TrialView]:
        """The COMPLETE trials as seen on the other machines ``nas remeasure`` measured them on."""
        with self.session() as s:
            return fronts.remeasured_trials(s, study_row(s, study))

    def hardware_fingerprints(self, study: str) -> list[str]:
        """The hardware fingerprints of the study's COMPLETE trials, sorted."""
        with self.session() as s:
            return fronts.hardware_fingerprints(s, study_row(s, study))
