"""The one storage API: the search driver writes through it, the CLI and dashboards read through it.

A :class:`Store` wraps one SQLAlchemy engine on a SQLite file or a PostgreSQL database. Optuna's
``RDBStorage`` may use the same database (see :mod:`storage.models` for how the two stay apart).

* SQLite runs in WAL mode with a 30 s busy timeout and foreign keys on, so readers never block the
  single writer (the driver) and the writer never blocks readers. Write sessions start with
  ``BEGIN IMMEDIATE`` so that two writers queue on the busy timeout instead of failing mid-transaction.
  Readers that cannot write the file or its folder open it read-only (:mod:`storage.engine`).
* Opening a database checks its schema revision. A new database is created at the newest revision; an
  older one raises :class:`~nas.errors.StorageError` naming the command that upgrades it.
* Every public method runs in one :meth:`Store.session` and returns frozen records
  (:mod:`storage.views`), never rows.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import Engine, case, delete, func, inspect, select
from sqlalchemy.engine import URL, Connection
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, object_session, sessionmaker

from nas.config import Candidate
from nas.dominance import non_dominated
from nas.errors import ConfigError, StorageError
from nas.records import TrialResult
from nas.where import compile_where
from storage.engine import SQLITE_BUSY_TIMEOUT_MS, database_error, make_engine, normalize_url
from storage.engine import shown as _shown
from storage.file_guard import FileIdentity
from storage.models import (
    STUDY_STATUSES,
    TABLE_PREFIX,
    TRIAL_STATES,
    VERSION_TABLE,
    ArtefactRow,
    EnergyReadingRow,
    ParetoFrontRow,
    StudyRow,
    TrialRow,
    utc_now,
)
from storage.views import (
    FILTER_NAMES,
    NO_HARDWARE,
    OBJECTIVE_NAMES,
    REPORTED_NAMES,
    ArtefactView,
    FrontEntry,
    ReadingView,
    StudyInfo,
    TrialCost,
    TrialView,
    above_majority,
    candidate_hash,
    finite_or_none,
    requires_above_majority,
)

__all__ = [
    "Store",
    "ALLOWED_OBJECTIVES",
    "normalize_url",
    "alembic_config",
    "head_revision",
    "SQLITE_BUSY_TIMEOUT_MS",
]

log = logging.getLogger(__name__)

_PACKAGE_DIR = Path(__file__).resolve().parent
_INI_PATH = _PACKAGE_DIR / "alembic.ini"
_MIGRATIONS_DIR = _PACKAGE_DIR / "migrations"
#: Objective names a study may use: the result metrics plus the numeric candidate fields.
_NUMERIC_CANDIDATE_NAMES = (
    "n_layers", "d_model", "n_heads", "d_ffn", "weight_bits", "embedding_bits", "attention_bits",
    "ffn_bits", "sparsity_amount",
)
ALLOWED_OBJECTIVES: tuple[str, ...] = (*OBJECTIVE_NAMES, *_NUMERIC_CANDIDATE_NAMES)


# --- migrations ------------------------------------------------------------------------------------
def alembic_config(connection: Connection | None = None, url: URL | None = None) -> Config:
    """An Alembic config for our migrations, independent of the working directory.

    Args:
        connection: Run migrations on this connection (preferred; used by :meth:`Store.upgrade`).
        url: Otherwise, the database to connect to.
    """
    cfg = Config(str(_INI_PATH))
    cfg.set_main_option("script_location", str(_MIGRATIONS_DIR))
    if url is not None:
        # ConfigParser interpolates "%": escape it so passwords with "%" survive.
        cfg.set_main_option("sqlalchemy.url", url.render_as_string(hide_password=False).replace("%", "%%"))
    cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    """The newest schema revision this build knows."""
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    if len(heads) != 1:
        raise StorageError(f"the packaged migrations have {len(heads)} heads; expected one")
    return heads[0]


def _schema_state(conn: Connection) -> tuple[str | None, bool, bool]:
    """(current revision, whether our version table exists, whether any nas_ table exists)."""
    names = set(inspect(conn).get_table_names())
    has_version = VERSION_TABLE in names
    has_tables = any(n.startswith(TABLE_PREFIX) and n != VERSION_TABLE for n in names)
    current = None
    if has_version:
        ctx = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        current = ctx.get_current_revision()
    return current, has_version, has_tables


def _upgrade_command(url: URL) -> str:
    return f"nas storage upgrade --db {_shown(url)}"


def _json_dumps(value: Any) -> str:
    """JSON text with NaN and infinities written as null (valid for SQLite's and Postgres' JSON)."""

    def clean(v: Any) -> Any:
        if isinstance(v, float):
            return finite_or_none(v)
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(value), allow_nan=False, separators=(",", ":"))


def _objectives_key(objectives: Sequence[tuple[str, str]]) -> str:
    return ",".join(f"{m}:{d}" for m, d in objectives)


def _float(value: Any) -> float | None:
    if value is None:
        return None
    f = float(value)
    return f if math.isfinite(f) else None


class Store:
    """Database access for studies, trials, measurements, artefacts and Pareto fronts.

    Create one with :meth:`open`. A store is safe to share between threads (each method opens its own
    session); only one process (the search driver) should write.
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
            head = head_revision()
            with engine.connect() as conn:
                current, has_version, has_tables = _schema_state(conn)
                conn.rollback()
            if current is None and not has_tables:
                if not create or is_read_only:
                    raise StorageError(
                        f"{_shown(parsed)} has no energy-nas tables",
                        fix=f"create them with `{_upgrade_command(parsed)}`",
                    )
                log.info("creating energy-nas tables in %s", _shown(parsed))
                cls._run_upgrade(engine, parsed, "head")
            elif current is None:
                raise StorageError(
                    f"{_shown(parsed)} has nas_ tables but no {VERSION_TABLE} table, so its schema "
                    "revision is unknown",
                    fix="point --db at a database created by energy-nas, or at a new one",
                )
            elif current != head:
                cls._raise_if_unknown_revision(current, parsed)
                raise StorageError(
                    f"the schema of {_shown(parsed)} is at revision {current}, behind this build's {head}",
                    fix=f"run `{_upgrade_command(parsed)}`",
                )
        except SQLAlchemyError as e:
            engine.dispose()
            raise database_error(e, parsed) from e
        except BaseException:
            engine.dispose()
            raise
        if is_read_only:
            log.info("opened %s read-only", _shown(parsed))
        return cls(engine, parsed, read_only=is_read_only)

    @staticmethod
    def _raise_if_unknown_revision(current: str, url: URL) -> None:
        script = ScriptDirectory.from_config(alembic_config())
        try:
            known = script.get_revision(current)
        except CommandError:
            known = None
        if known is None:
            raise StorageError(
                f"the schema of {_shown(url)} is at revision {current!r}, which this build does not know "
                "(it was written by a newer energy-nas)",
                fix="upgrade the energy-nas package",
            )

    @classmethod
    def _run_upgrade(cls, engine: Engine, url: URL, revision: str) -> None:
        with engine.begin() as conn:
            command.upgrade(alembic_config(conn), revision)

    @classmethod
    def upgrade(cls, url: str | os.PathLike[str] | URL, revision: str = "head") -> str:
        """Migrate the database to ``revision`` (default: newest), creating our tables if needed.

        Returns:
            The revision the database is at afterwards.

        Raises:
            StorageError: On a database error or an unknown revision.
        """
        parsed = normalize_url(url)
        engine, _ = make_engine(parsed)
        try:
            with engine.connect() as conn:
                current, _, has_tables = _schema_state(conn)
                conn.rollback()
            if current is None and has_tables:
                raise StorageError(
                    f"{_shown(parsed)} has nas_ tables but no {VERSION_TABLE} table; refusing to migrate it",
                    fix="point --db at a database created by energy-nas, or at a new one",
                )
            if current is not None:
                cls._raise_if_unknown_revision(current, parsed)
            cls._run_upgrade(engine, parsed, revision)
            with engine.connect() as conn:
                after, _, _ = _schema_state(conn)
                conn.rollback()
        except SQLAlchemyError as e:
            raise database_error(e, parsed, doing="upgrade") from e
        except CommandError as e:
            raise StorageError(f"cannot upgrade {_shown(parsed)}: {' '.join(str(e).split())}", field="--db",
                               fix="point --db at a database created by energy-nas") from e
        finally:
            engine.dispose()
        log.info("%s is at schema revision %s", _shown(parsed), after)
        return after or ""

    @property
    def url(self) -> str:
        """The full database URL, password included (for Optuna's ``RDBStorage``); print :attr:`display_url`."""
        return self._url.render_as_string(hide_password=False)

    @property
    def display_url(self) -> str:
        """The database URL with the password hidden, for messages and logs."""
        return _shown(self._url)

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
            return _schema_state(conn)[0]

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
    @staticmethod
    def _study_row(s: Session, name: str) -> StudyRow:
        row = s.scalar(select(StudyRow).where(StudyRow.name == name))
        if row is None:
            raise StorageError(f"unknown study {name!r}; run `nas studies` to list them")
        return row

    @staticmethod
    def _study_costs(s: Session, study_id: int) -> dict[str, Any]:
        """The study's search cost, derived from its trials' costs (unknown parts stay unknown)."""
        t = TrialRow
        ran = t.cost_meter.is_not(None)
        row = s.execute(select(
            func.sum(t.cost_train_energy_j), func.sum(t.cost_measure_energy_j), func.sum(t.cost_co2eq_g),
            func.coalesce(func.sum(t.cost_wall_s), 0.0), func.coalesce(func.sum(t.cost_gpu_s), 0.0),
            func.coalesce(func.sum(case((t.cost_is_estimate.is_(True), 1), else_=0)), 0),
            func.coalesce(func.sum(case((ran & t.cost_train_energy_j.is_(None), 1), else_=0)), 0),
            func.coalesce(func.sum(case((ran & t.cost_co2eq_g.is_(None), 1), else_=0)), 0),
            func.coalesce(func.sum(case((ran, 1), else_=0)), 0),
        ).where(t.study_id == study_id)).one()
        train, measure, co2, wall, gpu, n_est, n_unmetered, n_no_co2, n_ran = row
        nothing = 0.0 if not n_ran else None  # no trial ran yet: nothing was spent, which is known
        return {"train_energy_j": _float(train) if train is not None else nothing,
                "measure_energy_j": _float(measure) if measure is not None else nothing,
                "co2eq_g": (_float(co2) if co2 is not None else nothing) if not n_no_co2 else None,
                "wall_s": float(wall), "gpu_s": float(gpu),
                "cost_includes_estimate": bool(n_est), "n_trials_unmetered": int(n_unmetered)}

    @classmethod
    def _study_info(cls, row: StudyRow) -> StudyInfo:
        s = object_session(row)
        if s is None:
            raise StorageError(f"study {row.name!r} was read outside a session")
        return StudyInfo(
            name=row.name,
            optuna_study_id=row.optuna_study_id,
            spec_json=row.spec_json,
            objectives=tuple((str(m), str(d)) for m, d in json.loads(row.objectives_json)),
            status=row.status,
            created_utc=row.created_utc,
            updated_utc=row.updated_utc,
            budget_energy_j=row.budget_energy_j,
            budget_trials=row.budget_trials,
            budget_wall_s=row.budget_wall_s,
            n_trials_complete=row.n_trials_complete,
            n_trials_failed=row.n_trials_failed,
            n_trials_pruned=row.n_trials_pruned,
            **cls._study_costs(s, row.id),
        )

    @staticmethod
    def _check_objectives(objectives: Sequence[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
        checked: list[tuple[str, str]] = []
        if not objectives:
            raise ConfigError("a study needs at least one objective", field="objectives",
                              fix="e.g. [[accuracy, maximize], [energy_per_sample_j, minimize]]")
        for item in objectives:
            if len(item) != 2:
                raise ConfigError("each objective is a [metric, direction] pair", field="objectives",
                                  value=item)
            metric, direction = str(item[0]), str(item[1])
            if metric not in ALLOWED_OBJECTIVES:
                raise ConfigError(f"unknown metric; allowed: {', '.join(ALLOWED_OBJECTIVES)}",
                                  field="objectives", value=metric)
            if direction not in ("maximize", "minimize"):
                raise ConfigError("direction must be 'maximize' or 'minimize'", field="objectives",
                                  value=direction)
            if metric in (m for m, _ in checked):
                raise ConfigError("metric listed twice", field="objectives", value=metric)
            checked.append((metric, direction))
        return tuple(checked)

    def create_study(
        self,
        name: str,
        spec_json: str,
        objectives: Sequence[tuple[str, str]],
        *,
        optuna_study_id: int | None = None,
        budget_energy_j: float | None = None,
        budget_trials: int | None = None,
        budget_wall_s: float | None = None,
        exist_ok: bool = False,
    ) -> StudyInfo:
        """Record a new study.

        Args:
            name: Unique name (use the Optuna study name).
            spec_json: The study spec as JSON text (``StudySpec.model_dump_json()``).
            objectives: ``(metric, direction)`` pairs; metrics from :data:`ALLOWED_OBJECTIVES`.
            optuna_study_id: Optuna's study id in the same database.
            budget_energy_j: Stop once this many joules have been spent (train + measure).
            budget_trials: Stop after this many finished trials.
            budget_wall_s: Stop after this many seconds of trial wall time.
            exist_ok: Return the existing study of that name (resume) instead of raising, provided its
                objectives are the same.

        Raises:
            ConfigError: Bad objectives or spec JSON.
            StorageError: The name is taken (and ``exist_ok`` is False, or the objectives differ).
        """
        checked = self._check_objectives(objectives)
        try:
            json.loads(spec_json)
        except (TypeError, json.JSONDecodeError) as e:
            raise ConfigError(f"spec_json is not JSON text: {e}", field="spec_json",
                              fix="pass StudySpec.model_dump_json()") from e
        if not name or len(name) > 255:
            raise ConfigError("study names are 1 to 255 characters", field="name", value=name)
        with self.session(write=True) as s:
            existing = s.scalar(select(StudyRow).where(StudyRow.name == name))
            if existing is not None:
                info = self._study_info(existing)
                if not exist_ok:
                    raise StorageError(f"study {name!r} already exists",
                                       fix="choose another name, or resume it")
                if info.objectives != checked:
                    raise StorageError(
                        f"study {name!r} exists with objectives {info.objectives_key}, not "
                        f"{_objectives_key(checked)}",
                        fix="resume it with the same objectives, or start a new study",
                    )
                if optuna_study_id is not None and existing.optuna_study_id is None:
                    existing.optuna_study_id = optuna_study_id
                    existing.updated_utc = utc_now()
                    s.flush()
                    info = self._study_info(existing)
                return info
            now = utc_now()
            row = StudyRow(
                name=name,
                optuna_study_id=optuna_study_id,
                spec_json=spec_json,
                objectives_json=json.dumps([list(o) for o in checked]),
                status="RUNNING",
                created_utc=now,
                updated_utc=now,
                budget_energy_j=budget_energy_j,
                budget_trials=budget_trials,
                budget_wall_s=budget_wall_s,
                train_energy_j=0.0,
                measure_energy_j=0.0,
                co2eq_g=0.0,
                wall_s=0.0,
                gpu_s=0.0,
                cost_includes_estimate=False,
                n_trials_complete=0,
                n_trials_failed=0,
                n_trials_pruned=0,
            )
            s.add(row)
            s.flush()
            return self._study_info(row)

    def get_study(self, name: str) -> StudyInfo:
        """The study called ``name``.

        Raises:
            StorageError: ``unknown study 'x'; run `nas studies` to list them``.
        """
        with self.session() as s:
            return self._study_info(self._study_row(s, name))

    def list_studies(self) -> list[StudyInfo]:
        """Every study, oldest first."""
        with self.session() as s:
            rows = s.scalars(select(StudyRow).order_by(StudyRow.created_utc, StudyRow.id)).all()
            return [self._study_info(r) for r in rows]

    def set_study_status(self, name: str, status: str) -> None:
        """Set a study's status: ``RUNNING``, ``COMPLETE``, ``FAILED`` or ``STOPPED``."""
        if status not in STUDY_STATUSES:
            raise ConfigError(f"unknown status; use one of {', '.join(STUDY_STATUSES)}", field="status",
                              value=status)
        with self.session(write=True) as s:
            row = self._study_row(s, name)
            row.status = status
            row.updated_utc = utc_now()

    def update_study_spec(
        self,
        name: str,
        spec_json: str,
        *,
        budget_energy_j: float | None = None,
        budget_trials: int | None = None,
        budget_wall_s: float | None = None,
    ) -> StudyInfo:
        """Replace a study's spec (e.g. a resume with a larger trial budget); budgets given are replaced.

        The objectives cannot change: they define the stored fronts. When the new spec changes
        ``front.require_above_majority``, the persisted fronts are rebuilt in the same transaction.
        """
        try:
            json.loads(spec_json)
        except (TypeError, json.JSONDecodeError) as e:
            raise ConfigError(f"spec_json is not JSON text: {e}", field="spec_json",
                              fix="pass StudySpec.model_dump_json()") from e
        with self.session(write=True) as s:
            row = self._study_row(s, name)
            rule_changed = requires_above_majority(row.spec_json) != requires_above_majority(spec_json)
            row.spec_json = spec_json
            if rule_changed:  # the persisted front follows the study's front.require_above_majority
                self._rebuild_fronts(s, row)
            if budget_energy_j is not None:
                row.budget_energy_j = budget_energy_j
            if budget_trials is not None:
                row.budget_trials = budget_trials
            if budget_wall_s is not None:
                row.budget_wall_s = budget_wall_s
            row.updated_utc = utc_now()
            s.flush()
            return self._study_info(row)

    def link_optuna_study(self, name: str, optuna_study_id: int) -> None:
        """Record Optuna's study id for an existing study."""
        with self.session(write=True) as s:
            row = self._study_row(s, name)
            row.optuna_study_id = optuna_study_id
            row.updated_utc = utc_now()

    # --- trials: writing ---------------------------------------------------------------------------
    @staticmethod
    def _trial_row(s: Session, study: StudyRow, number: int) -> TrialRow | None:
        return s.scalar(select(TrialRow).where(TrialRow.study_id == study.id, TrialRow.trial_number == number))

    @staticmethod
    def _set_candidate(row: TrialRow, candidate: Candidate) -> None:
        flat = candidate.flat()
        row.candidate_json = candidate.to_json()
        row.candidate_hash = candidate_hash(candidate)
        row.candidate_flat_json = _json_dumps(flat)
        row.weight_bits = int(flat["weight_bits"])
        row.attention = str(flat["attention"])

    def start_trial(
        self, study: str, trial_number: int, candidate: Candidate, *, optuna_trial_id: int | None = None
    ) -> None:
        """Record a trial as RUNNING with its candidate.

        Raises:
            StorageError: Unknown study, or the trial number is already recorded.
        """
        with self.session(write=True) as s:
            st = self._study_row(s, study)
            if self._trial_row(s, st, trial_number) is not None:
                raise StorageError(f"trial {trial_number} of study {study!r} is already recorded",
                                   fix="use the next trial number")
            row = TrialRow(study_id=st.id, trial_number=trial_number, optuna_trial_id=optuna_trial_id,
                           state="RUNNING", retryable=False, started_utc=utc_now())
            self._set_candidate(row, candidate)
            s.add(row)

    def _running_row(
        self, s: Session, st: StudyRow, number: int, candidate: Candidate | None, optuna_trial_id: int | None
    ) -> TrialRow:
        """The RUNNING row of a trial, created on the spot if the trial was never started."""
        row = self._trial_row(s, st, number)
        if row is None:
            row = TrialRow(study_id=st.id, trial_number=number, state="RUNNING", retryable=False)
            if candidate is not None:
                self._set_candidate(row, candidate)
            s.add(row)
        elif row.state != "RUNNING":
            raise StorageError(
                f"trial {number} of study {st.name!r} is already {row.state}; a trial finishes once",
            )
        elif candidate is not None:
            if row.candidate_hash is None:
                self._set_candidate(row, candidate)
            elif row.candidate_hash != candidate_hash(candidate):
                raise StorageError(
                    f"trial {number} of study {st.name!r} was started with another candidate",
                    fix="finish a trial with the result of the candidate it started with",
                )
        if optuna_trial_id is not None:
            row.optuna_trial_id = optuna_trial_id
        return row

    @staticmethod
    def _add_cost(st: StudyRow, row: TrialRow, cost: TrialCost | None) -> None:
        """Record what a trial cost; the study's totals are derived from these (see ``_study_costs``)."""
        if cost is None:
            return
        row.cost_train_energy_j = _float(cost.train_energy_j)
        row.cost_measure_energy_j = _float(cost.measure_energy_j)
        row.cost_co2eq_g = _float(cost.co2eq_g)
        row.cost_wall_s = _float(cost.wall_s)
        row.cost_gpu_s = _float(cost.gpu_s)
        row.cost_meter = cost.meter
        row.cost_is_estimate = cost.is_estimate

    @staticmethod
    def _readings(row: TrialRow, result: TrialResult) -> list[EnergyReadingRow]:
        now = utc_now()
        out: list[EnergyReadingRow] = []
        inf = result.inference
        if inf is not None:
            prov = inf.provenance
            out.append(EnergyReadingRow(
                kind=f"inference:{inf.serving_form}", meter=inf.meter, is_estimate=inf.is_estimate,
                exclusive=inf.exclusive, energy_j=None,
                energy_per_sample_j=_float(inf.energy_per_sample_j),
                energy_per_sample_net_j=_float(inf.energy_per_sample_net_j),
                idle_w=_float(inf.idle_w), cv=_float(inf.cv), duration_s=_float(inf.n_windows * inf.window_s),
                co2eq_g=_float(inf.co2eq_g_per_sample), batch_size=inf.batch_size, seq_len=inf.seq_len,
                n_windows=inf.n_windows, window_s=_float(inf.window_s), serving_form=inf.serving_form,
                dtype=inf.dtype, kernels=inf.kernels, device_uuid=prov.device_uuid,
                hardware_fingerprint=prov.hardware_fingerprint, provenance_json=_json_dumps(prov.to_dict()),
                created_utc=now,
            ))
        tr = result.train
        while tr is not None:
            kind = "train" if tr is result.train else "teacher-train"
            prov_dict = (tr.provenance.to_dict() if tr.provenance is not None else
                         {"device": tr.device, "teacher": tr.teacher, "steps": tr.steps})
            out.append(EnergyReadingRow(
                kind=kind, meter=tr.meter, is_estimate=tr.is_estimate, exclusive=False,
                energy_j=_float(tr.energy_j), duration_s=_float(tr.wall_s), co2eq_g=_float(tr.co2eq_g),
                n_windows=tr.provenance.n_windows if tr.provenance else None,
                window_s=_float(tr.provenance.window_s) if tr.provenance else None,
                batch_size=tr.provenance.batch_size if tr.provenance else None,
                seq_len=tr.provenance.seq_len if tr.provenance else None,
                dtype=tr.provenance.dtype if tr.provenance else None,
                kernels=tr.provenance.kernels if tr.provenance else None,
                device_uuid=tr.provenance.device_uuid if tr.provenance else None,
                hardware_fingerprint=tr.hardware_fingerprint,
                provenance_json=_json_dumps({**prov_dict, "teacher": tr.teacher, "steps": tr.steps}),
                created_utc=now,
            ))
            tr = tr.teacher_training
        return out

    def finish_trial(
        self,
        study: str,
        trial_number: int,
        result: TrialResult,
        *,
        cost: TrialCost,
        retryable: bool = False,
        optuna_trial_id: int | None = None,
    ) -> None:
        """Store a trial's result, its readings and cost, and refresh the persisted front, atomically.

        In one transaction: the trial row gets the result (state from ``result.status``), one
        ``nas_energy_readings`` row per reading, its cost is recorded (the study's totals are derived
        from these), and, for a COMPLETE trial, the persisted front of its study and hardware
        fingerprint is recomputed. A ``FAIL`` result keeps what the trial did and spent before failing;
        ``retryable`` says the candidate was not to blame (no budget spent, it may be sampled again).

        Raises:
            StorageError: Unknown study; the trial is already finished; it was started with another
                candidate; or the inference energy was measured on a shared device (decision 5).
        """
        inf = result.inference
        if (result.status == "COMPLETE" and inf is not None and not inf.exclusive
                and inf.energy_per_sample_j is not None):
            raise StorageError(
                f"trial {trial_number}: the inference energy was read while the device was shared "
                "(exclusive=False), so it is not the candidate's energy",
                fix="measure on the exclusive measurement lane, or store the energy as None",
            )
        state = {"COMPLETE": "COMPLETE", "FAIL": "FAIL", "PRUNED": "PRUNED"}.get(result.status)
        if state is None:
            raise StorageError(f"trial {trial_number}: unknown result status {result.status!r}")
        objectives = result.objectives()
        with self.session(write=True) as s:
            st = self._study_row(s, study)
            row = self._running_row(s, st, trial_number, result.candidate, optuna_trial_id)
            row.state = state
            row.fail_reason = (result.error or "failed without a reason") if state == "FAIL" else None
            row.retryable = retryable and state == "FAIL"
            row.result_json = _json_dumps(result.to_dict())
            row.task = result.task
            for name in ("accuracy", "macro_f1", "energy_per_sample_j", "energy_per_sample_net_j",
                         "latency_p50_ms", "latency_p95_ms", "throughput_samples_s", "flops_per_sample",
                         "train_energy_j"):
                setattr(row, name, _float(objectives[name]))
            for name, value in result.reported().items():
                setattr(row, name, _float(value))
            row.params = result.params
            row.size_bytes = result.size_bytes
            row.meter = inf.meter if inf else None
            row.is_estimate = inf.is_estimate if inf else None
            row.hardware_fingerprint = inf.provenance.hardware_fingerprint if inf else NO_HARDWARE
            row.device_uuid = inf.provenance.device_uuid if inf else None
            row.finished_utc = utc_now()
            if row.started_utc is None:
                row.started_utc = row.finished_utc
            row.readings.extend(self._readings(row, result))
            self._add_cost(st, row, cost)
            if state == "COMPLETE":
                st.n_trials_complete += 1
            elif state == "FAIL":
                st.n_trials_failed += 1
            else:
                st.n_trials_pruned += 1
            st.updated_utc = row.finished_utc
            s.flush()
            if result.weights_path:
                p = Path(result.weights_path)
                s.add(ArtefactRow(trial_id=row.id, kind="weights", path=str(p), sha256=None,
                                  size_bytes=p.stat().st_size if p.is_file() else None,
                                  created_utc=row.finished_utc))
            if state == "COMPLETE":
                self._rewrite_front(s, st, row.hardware_fingerprint or NO_HARDWARE, new_row=row)

    def fail_trial(
        self,
        study: str,
        trial_number: int,
        reason: str,
        *,
        candidate: Candidate | None = None,
        cost: TrialCost | None = None,
        retryable: bool = False,
        optuna_trial_id: int | None = None,
    ) -> None:
        """Mark a trial FAIL with a reason (creating it if it was never started).

        Args:
            reason: Why, for humans (``"CUDA out of memory"``, ``"NaN loss at step 40"``).
            candidate: The candidate, if the trial was never started.
            cost: What the trial cost before it failed; added to the study totals.
            retryable: True when the candidate is not to blame (an interruption): it may be sampled
                again. Otherwise its hash joins :meth:`failed_candidate_hashes`.
        """
        with self.session(write=True) as s:
            st = self._study_row(s, study)
            row = self._running_row(s, st, trial_number, candidate, optuna_trial_id)
            row.state = "FAIL"
            row.fail_reason = reason
            row.retryable = retryable
            row.finished_utc = utc_now()
            if row.started_utc is None:
                row.started_utc = row.finished_utc
            self._add_cost(st, row, cost)
            st.n_trials_failed += 1
            st.updated_utc = row.finished_utc

    def prune_trial(
        self,
        study: str,
        trial_number: int,
        reason: str,
        *,
        cost: TrialCost | None = None,
        wall_s: float | None = None,
        optuna_trial_id: int | None = None,
    ) -> None:
        """Mark a RUNNING trial PRUNED (stopped early by the scheduler) without a result.

        Args:
            reason: Why it was stopped, kept in ``fail_reason``.
            cost: What it cost; added to the study totals.
            wall_s: Shorthand for ``cost=TrialCost(wall_s=wall_s)`` when no joules are known.
        """
        if cost is None and wall_s is not None:
            cost = TrialCost(wall_s=wall_s)
        with self.session(write=True) as s:
            st = self._study_row(s, study)
            row = self._running_row(s, st, trial_number, None, optuna_trial_id)
            row.state = "PRUNED"
            row.fail_reason = reason
            row.finished_utc = utc_now()
            if row.started_utc is None:
                row.started_utc = row.finished_utc
            self._add_cost(st, row, cost)
            st.n_trials_pruned += 1
            st.updated_utc = row.finished_utc

    def mark_unfinished_failed(self, study: str, reason: str) -> list[int]:
        """On resume: every RUNNING trial becomes FAIL (retryable) with ``reason``.

        Returns:
            The trial numbers that were marked, ascending, so the driver can re-queue their budget.
        """
        with self.session(write=True) as s:
            st = self._study_row(s, study)
            rows = s.scalars(select(TrialRow).where(TrialRow.study_id == st.id, TrialRow.state == "RUNNING")
                             .order_by(TrialRow.trial_number)).all()
            now = utc_now()
            for row in rows:
                row.state = "FAIL"
                row.fail_reason = reason
                row.retryable = True
                row.finished_utc = now
                # it ran, but its worker's readings went with the driver: its joules are unknown
                self._add_cost(st, row, TrialCost(meter="unknown"))
            st.n_trials_failed += len(rows)
            if rows:
                st.updated_utc = now
            return [r.trial_number for r in rows]

    def add_artefact(
        self,
        study: str,
        trial_number: int,
        kind: str,
        path: str | os.PathLike[str],
        *,
        sha256: str | None = None,
        size_bytes: int | None = None,
    ) -> None:
        """Record a file a trial produced (``kind`` e.g. ``"weights"``, ``"onnx"``)."""
        with self.session(write=True) as s:
            st = self._study_row(s, study)
            row = self._trial_row(s, st, trial_number)
            if row is None:
                raise StorageError(f"unknown trial {trial_number} of study {study!r}")
            s.add(ArtefactRow(trial_id=row.id, kind=kind, path=os.fspath(path), sha256=sha256,
                              size_bytes=size_bytes, created_utc=utc_now()))

    def remove_artefacts(self, study: str, trial_number: int, kind: str) -> list[str]:
        """Forget a trial's artefacts of ``kind`` (retention); returns their paths for the caller to delete."""
        with self.session(write=True) as s:
            st = self._study_row(s, study)
            row = self._trial_row(s, st, trial_number)
            if row is None:
                return []
            rows = s.execute(select(ArtefactRow).where(ArtefactRow.trial_id == row.id,
                                                       ArtefactRow.kind == kind)).scalars().all()
            paths = [a.path for a in rows]
            for a in rows:
                s.delete(a)
            return paths

    # --- fronts ------------------------------------------------------------------------------------
    @staticmethod
    def _row_values(row: TrialRow) -> dict[str, Any]:
        """The flat values of a trial (the keys of :data:`FILTER_NAMES`), straight from its columns."""
        values: dict[str, Any] = dict.fromkeys(FILTER_NAMES)
        if row.candidate_flat_json:
            values.update(json.loads(row.candidate_flat_json))
        for name in (*OBJECTIVE_NAMES, *REPORTED_NAMES):
            v = getattr(row, name)
            values[name] = float(v) if v is not None else None
        values["meter"] = row.meter
        values["is_estimate"] = row.is_estimate
        values["hardware"] = row.hardware_fingerprint
        values["number"] = row.trial_number
        values["state"] = row.state
        return values

    @staticmethod
    def _front_of(
        items: Sequence[tuple[int, dict[str, Any]]], objectives: Sequence[tuple[str, str]]
    ) -> list[int]:
        """Indices into ``items`` on the front, ordered by the first objective (best first), then number."""
        if not items:
            return []
        pts = np.array([[_nan_if_none(v[m]) for m, _ in objectives] for _, v in items], dtype=np.float64)
        idx = non_dominated(pts, [d for _, d in objectives])
        first_sign = -1.0 if objectives[0][1] == "maximize" else 1.0
        return sorted((int(i) for i in idx), key=lambda i: (first_sign * pts[i, 0], items[i][0]))

    def _rewrite_front(self, s: Session, st: StudyRow, hardware: str, new_row: TrialRow | None = None) -> None:
        """Recompute and store the front of one study and hardware fingerprint.

        With ``new_row`` (the trial just completed) only the stored front plus that trial are compared:
        COMPLETE trials never change, and a trial dominated once stays dominated, so this equals the
        front over all trials (a test checks it). Without it, every COMPLETE trial is read. Under the
        study's ``front.require_above_majority`` (default) trials not above their dev majority-class
        rate take no part, exactly as in :meth:`front`.
        """
        info = self._study_info(st)
        objectives = info.objectives
        if new_row is None:
            rows = list(s.scalars(select(TrialRow).where(
                TrialRow.study_id == st.id, TrialRow.state == "COMPLETE",
                TrialRow.hardware_fingerprint == hardware)).all())
        else:
            members = select(ParetoFrontRow.trial_id).where(
                ParetoFrontRow.study_id == st.id, ParetoFrontRow.hardware_fingerprint == hardware)
            rows = [r for r in s.scalars(select(TrialRow).where(TrialRow.id.in_(members))).all()
                    if r.id != new_row.id]
            rows.append(new_row)
        rows.sort(key=lambda r: r.trial_number)
        items = [(r.trial_number, self._row_values(r)) for r in rows]
        if info.require_above_majority:
            kept = [i for i, (_, v) in enumerate(items) if above_majority(v)]
            rows, items = [rows[i] for i in kept], [items[i] for i in kept]
        order = self._front_of(items, objectives)
        if new_row is not None and new_row not in (rows[i] for i in order):
            return  # the new trial is dominated (or lacks an objective): the stored front stands
        s.execute(delete(ParetoFrontRow).where(
            ParetoFrontRow.study_id == st.id, ParetoFrontRow.hardware_fingerprint == hardware))
        now = utc_now()
        key = _objectives_key(objectives)
        for position, i in enumerate(order):
            r = rows[i]
            s.add(ParetoFrontRow(
                study_id=st.id, hardware_fingerprint=hardware, objectives_key=key, trial_id=r.id,
                trial_number=r.trial_number, position=position,
                values_json=_json_dumps({m: items[i][1][m] for m, _ in objectives}), updated_utc=now,
            ))

    def rebuild_front(self, study: str) -> None:
        """Recompute the persisted fronts of a study from all its COMPLETE trials (a repair tool)."""
        with self.session(write=True) as s:
            self._rebuild_fronts(s, self._study_row(s, study))

    def _rebuild_fronts(self, s: Session, st: StudyRow) -> None:
        s.execute(delete(ParetoFrontRow).where(ParetoFrontRow.study_id == st.id))
        found = s.scalars(select(TrialRow.hardware_fingerprint).where(
            TrialRow.study_id == st.id, TrialRow.state == "COMPLETE").distinct()).all()
        for hardware in sorted(h or NO_HARDWARE for h in found):
            self._rewrite_front(s, st, hardware)

    def front(self, study: str, *, where: str | None = None, hardware: str | None = None,
              include_trivial: bool = False) -> list[TrialView]:
        """The Pareto-optimal COMPLETE trials, recomputed from the stored trials.

        Fronts are computed per hardware fingerprint. ``where`` filters the trials *before* the front
        is computed (the front among the trials that satisfy it). Under the study's
        ``front.require_above_majority`` (the default) so are the trials whose dev accuracy is not above
        their dev majority-class rate (:func:`storage.views.above_majority`; see :meth:`trivial_trials`).

        Args:
            where: A filter over :data:`FILTER_NAMES`, e.g. ``"weight_bits <= 8"`` (see :mod:`nas.where`).
            hardware: Only this hardware fingerprint.
            include_trivial: Let trials at or below the majority-class rate take part anyway.

        Returns:
            Trials ordered by hardware fingerprint, then first objective (best first).

        Raises:
            ConfigError: A bad ``where`` expression.
        """
        with self.session() as s:
            st, members = self._front_candidates(s, study, where, hardware)
            info = self._study_info(st)
            rule = info.require_above_majority and not include_trivial
            groups: dict[str, list[tuple[TrialRow, dict[str, Any]]]] = {}
            for r, values in members:
                if not rule or above_majority(values):
                    groups.setdefault(r.hardware_fingerprint or NO_HARDWARE, []).append((r, values))
            out: list[TrialView] = []
            for hw in sorted(groups):
                group = groups[hw]
                order = self._front_of([(r.trial_number, v) for r, v in group], info.objectives)
                out.extend(self._trial_view(st.name, group[i][0]) for i in order)
            return out

    def trivial_trials(self, study: str, *, where: str | None = None,
                       hardware: str | None = None) -> list[TrialView]:
        """The COMPLETE trials (matching ``where``) that :meth:`front` keeps out under the study's
        ``front.require_above_majority``: dev accuracy at or below the dev majority-class rate.

        Empty when the study turns the rule off. In trial-number order.
        """
        with self.session() as s:
            st, members = self._front_candidates(s, study, where, hardware)
            if not requires_above_majority(st.spec_json):
                return []
            return [self._trial_view(st.name, r) for r, v in members if not above_majority(v)]

    def _front_candidates(self, s: Session, study: str, where: str | None,
                          hardware: str | None) -> tuple[StudyRow, list[tuple[TrialRow, dict[str, Any]]]]:
        """The study row, and its COMPLETE trials (with their flat values) that satisfy ``where``."""
        predicate = compile_where(where, FILTER_NAMES) if where else None
        st = self._study_row(s, study)
        q = select(TrialRow).where(TrialRow.study_id == st.id, TrialRow.state == "COMPLETE")
        if hardware is not None:
            q = q.where(TrialRow.hardware_fingerprint == hardware)
        members = []
        for r in s.scalars(q.order_by(TrialRow.trial_number)).all():
            values = self._row_values(r)
            if predicate is None or predicate(values):
                members.append((r, values))
        return st, members

    def persisted_front(self, study: str, *, hardware: str | None = None) -> list[FrontEntry]:
        """The front as stored in ``nas_pareto_front``, ordered by hardware fingerprint and position."""
        with self.session() as s:
            st = self._study_row(s, study)
            q = select(ParetoFrontRow).where(ParetoFrontRow.study_id == st.id)
            if hardware is not None:
                q = q.where(ParetoFrontRow.hardware_fingerprint == hardware)
            rows = s.scalars(q.order_by(ParetoFrontRow.hardware_fingerprint, ParetoFrontRow.position)).all()
            return [FrontEntry(
                hardware_fingerprint=r.hardware_fingerprint, objectives_key=r.objectives_key,
                trial_number=r.trial_number, position=r.position,
                values=MappingProxyType(json.loads(r.values_json)), updated_utc=r.updated_utc,
            ) for r in rows]

    def hardware_fingerprints(self, study: str) -> list[str]:
        """The hardware fingerprints of a study's COMPLETE trials, sorted."""
        with self.session() as s:
            st = self._study_row(s, study)
            found = s.scalars(select(TrialRow.hardware_fingerprint).where(
                TrialRow.study_id == st.id, TrialRow.state == "COMPLETE").distinct()).all()
            return sorted(h or NO_HARDWARE for h in found)

    # --- trials: reading ---------------------------------------------------------------------------
    def _trial_view(self, study: str, row: TrialRow) -> TrialView:
        cost = None
        if row.cost_meter is not None:
            cost = TrialCost(
                train_energy_j=row.cost_train_energy_j, measure_energy_j=row.cost_measure_energy_j,
                co2eq_g=row.cost_co2eq_g, wall_s=row.cost_wall_s or 0.0, gpu_s=row.cost_gpu_s or 0.0,
                meter=row.cost_meter, is_estimate=bool(row.cost_is_estimate),
            )
        try:
            candidate = Candidate.from_json(row.candidate_json) if row.candidate_json else None
            result = TrialResult.from_dict(json.loads(row.result_json)) if row.result_json else None
        except (ConfigError, ValueError, KeyError, TypeError) as e:
            raise StorageError(
                f"trial {row.trial_number} of study {study!r} cannot be read back: {e}",
                fix="the row was written by an incompatible version; re-run the trial",
            ) from e
        return TrialView(
            study=study, number=row.trial_number, state=row.state, fail_reason=row.fail_reason,
            retryable=row.retryable, optuna_trial_id=row.optuna_trial_id, candidate=candidate,
            candidate_hash=row.candidate_hash, result=result, hardware_fingerprint=row.hardware_fingerprint,
            meter=row.meter, is_estimate=row.is_estimate, cost=cost, started_utc=row.started_utc,
            finished_utc=row.finished_utc, flat=MappingProxyType(self._row_values(row)),
        )

    def trials(self, study: str, *, states: Iterable[str] | None = None) -> list[TrialView]:
        """A study's trials in number order, optionally only those in ``states``."""
        wanted = None if states is None else tuple(states)
        if wanted is not None:
            bad = [x for x in wanted if x not in TRIAL_STATES]
            if bad:
                raise ConfigError(f"unknown trial state; use {', '.join(TRIAL_STATES)}", field="states",
                                  value=bad[0])
        with self.session() as s:
            st = self._study_row(s, study)
            q = select(TrialRow).where(TrialRow.study_id == st.id)
            if wanted is not None:
                q = q.where(TrialRow.state.in_(wanted))
            rows = s.scalars(q.order_by(TrialRow.trial_number)).all()
            return [self._trial_view(st.name, r) for r in rows]

    def trial(self, study: str, number: int) -> TrialView:
        """One trial.

        Raises:
            StorageError: Unknown study or trial number.
        """
        with self.session() as s:
            st = self._study_row(s, study)
            row = self._trial_row(s, st, number)
            if row is None:
                raise StorageError(f"study {study!r} has no trial {number}",
                                   fix=f"run `nas pareto {study}` to see its trials")
            return self._trial_view(st.name, row)

    def failed_candidate_hashes(self, study: str) -> set[str]:
        """Hashes of candidates that failed by their own fault (never sample them again)."""
        with self.session() as s:
            st = self._study_row(s, study)
            found = s.scalars(select(TrialRow.candidate_hash).where(
                TrialRow.study_id == st.id, TrialRow.state == "FAIL", TrialRow.retryable.is_(False),
                TrialRow.candidate_hash.is_not(None))).all()
            return {h for h in found if h is not None}

    def complete_candidate_hashes(self, study: str) -> dict[str, int]:
        """``candidate hash -> trial number`` of the study's COMPLETE trials (never evaluate them again)."""
        with self.session() as s:
            st = self._study_row(s, study)
            found = s.execute(select(TrialRow.candidate_hash, TrialRow.trial_number).where(
                TrialRow.study_id == st.id, TrialRow.state == "COMPLETE",
                TrialRow.candidate_hash.is_not(None)).order_by(TrialRow.trial_number)).all()
            out: dict[str, int] = {}
            for h, n in found:
                out.setdefault(str(h), int(n))
            return out

    def artefacts(self, study: str, trial_number: int | None = None) -> list[ArtefactView]:
        """Files recorded for a study (or one of its trials), oldest first."""
        with self.session() as s:
            st = self._study_row(s, study)
            q = (select(ArtefactRow, TrialRow.trial_number).join(TrialRow, ArtefactRow.trial_id == TrialRow.id)
                 .where(TrialRow.study_id == st.id))
            if trial_number is not None:
                q = q.where(TrialRow.trial_number == trial_number)
            return [ArtefactView(trial_number=n, kind=a.kind, path=a.path, sha256=a.sha256,
                                 size_bytes=a.size_bytes, created_utc=a.created_utc)
                    for a, n in s.execute(q.order_by(ArtefactRow.id)).all()]

    def readings(self, study: str, trial_number: int) -> list[ReadingView]:
        """The energy readings of one trial."""
        with self.session() as s:
            st = self._study_row(s, study)
            row = self._trial_row(s, st, trial_number)
            if row is None:
                raise StorageError(f"study {study!r} has no trial {trial_number}")
            return [ReadingView(
                trial_number=trial_number, kind=r.kind, meter=r.meter, is_estimate=r.is_estimate,
                exclusive=r.exclusive, energy_j=r.energy_j, energy_per_sample_j=r.energy_per_sample_j,
                energy_per_sample_net_j=r.energy_per_sample_net_j, idle_w=r.idle_w, cv=r.cv,
                duration_s=r.duration_s, co2eq_g=r.co2eq_g, hardware_fingerprint=r.hardware_fingerprint,
                provenance=MappingProxyType(json.loads(r.provenance_json)) if r.provenance_json else None,
                created_utc=r.created_utc,
            ) for r in sorted(row.readings, key=lambda x: x.id)]


def _nan_if_none(v: Any) -> float:
    if v is None:
        return math.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan
