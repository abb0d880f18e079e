"""The schema of our tables: Alembic's config, the head revision, the check on open, and upgrades.

Our migrations ship in ``storage/migrations`` and record their revision in
:data:`storage.models.VERSION_TABLE` (Optuna keeps Alembic's default table in the same database).
Opening a database checks its revision: a new database is created at the head revision, an older one
raises :class:`~nas.errors.StorageError` naming the exact ``nas storage upgrade`` command.
"""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import Engine, inspect
from sqlalchemy.engine import URL, Connection
from sqlalchemy.exc import SQLAlchemyError

from nas.errors import StorageError
from storage.engine import database_error, make_engine, shown
from storage.models import TABLE_PREFIX, VERSION_TABLE

__all__ = [
    "alembic_config",
    "head_revision",
    "schema_state",
    "upgrade_command",
    "raise_if_unknown_revision",
    "check_schema",
    "upgrade",
]

log = logging.getLogger(__name__)

_PACKAGE_DIR = Path(__file__).resolve().parent
_INI_PATH = _PACKAGE_DIR / "alembic.ini"
_MIGRATIONS_DIR = _PACKAGE_DIR / "migrations"
_FOREIGN_TABLES_FIX = "point --db at a database created by energy-nas, or at a new one"


def alembic_config(connection: Connection | None = None, url: URL | None = None) -> Config:
    """An Alembic config for our migrations, independent of the working directory.

    Args:
        connection: Run migrations on this connection (preferred; used by :func:`upgrade`).
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


def schema_state(conn: Connection) -> tuple[str | None, bool, bool]:
    """(current revision, whether our version table exists, whether any nas_ table exists)."""
    names = set(inspect(conn).get_table_names())
    has_version = VERSION_TABLE in names
    has_tables = any(n.startswith(TABLE_PREFIX) and n != VERSION_TABLE for n in names)
    current = None
    if has_version:
        ctx = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        current = ctx.get_current_revision()
    return current, has_version, has_tables


def _read_state(engine: Engine) -> tuple[str | None, bool, bool]:
    with engine.connect() as conn:
        state = schema_state(conn)
        conn.rollback()
    return state


def upgrade_command(url: URL) -> str:
    """The command that brings the database at ``url`` to this build's schema."""
    return f"nas storage upgrade --db {shown(url)}"


def raise_if_unknown_revision(current: str, url: URL) -> None:
    """Raise when ``current`` is a revision this build does not know (a newer energy-nas wrote it)."""
    script = ScriptDirectory.from_config(alembic_config())
    try:
        known = script.get_revision(current)
    except CommandError:
        known = None
    if known is None:
        raise StorageError(
            f"the schema of {shown(url)} is at revision {current!r}, which this build does not know "
            "(it was written by a newer energy-nas)",
            fix="upgrade the energy-nas package",
        )


def _run_upgrade(engine: Engine, revision: str) -> None:
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), revision)


def check_schema(engine: Engine, url: URL, *, can_create: bool) -> None:
    """Create our tables in a database that has none (when ``can_create``), else check the revision.

    Raises:
        StorageError: No tables and ``can_create`` False; tables without a version table; or a revision
            behind (naming the upgrade command) or ahead of this build.
        SQLAlchemyError: From the database, for the caller to wrap.
    """
    head = head_revision()
    current, _, has_tables = _read_state(engine)
    if current is None and not has_tables:
        if not can_create:
            raise StorageError(f"{shown(url)} has no energy-nas tables",
                               fix=f"create them with `{upgrade_command(url)}`")
        log.info("creating energy-nas tables in %s", shown(url))
        _run_upgrade(engine, "head")
    elif current is None:
        raise StorageError(
            f"{shown(url)} has nas_ tables but no {VERSION_TABLE} table, so its schema revision is unknown",
            fix=_FOREIGN_TABLES_FIX,
        )
    elif current != head:
        raise_if_unknown_revision(current, url)
        raise StorageError(f"the schema of {shown(url)} is at revision {current}, behind this build's {head}",
                           fix=f"run `{upgrade_command(url)}`")


def upgrade(url: URL, revision: str = "head") -> str:
    """Migrate the database to ``revision`` (default: newest), creating our tables if needed.

    Returns:
        The revision the database is at afterwards.

    Raises:
        StorageError: On a database error or an unknown revision.
    """
    engine, _ = make_engine(url)
    try:
        current, _, has_tables = _read_state(engine)
        if current is None and has_tables:
            raise StorageError(f"{shown(url)} has nas_ tables but no {VERSION_TABLE} table; refusing to migrate it",
                               fix=_FOREIGN_TABLES_FIX)
        if current is not None:
            raise_if_unknown_revision(current, url)
        _run_upgrade(engine, revision)
        after = _read_state(engine)[0]
    except SQLAlchemyError as e:
        raise database_error(e, url, doing="upgrade") from e
    except CommandError as e:
        raise StorageError(f"cannot upgrade {shown(url)}: {' '.join(str(e).split())}", field="--db",
                           fix="point --db at a database created by energy-nas") from e
    finally:
        engine.dispose()
    log.info("%s is at schema revision %s", shown(url), after)
    return after or ""
