"""Alembic environment of the energy-nas tables.

Run through :func:`storage.store.alembic_config`, which passes an open connection in
``config.attributes["connection"]``. Our revisions are recorded in ``nas_alembic_version`` so that they
never collide with Optuna's, which uses Alembic's default ``alembic_version`` table in the same database.
Autogenerate only looks at ``nas_`` tables, so Optuna's tables are never dropped by a new revision.
Logging is left to the application (no ``fileConfig``).
"""

from __future__ import annotations

from typing import Any

from alembic import context
from sqlalchemy import create_engine
from sqlalchemy.engine import Connection
from sqlalchemy.pool import NullPool

from storage.models import TABLE_PREFIX, VERSION_TABLE, Base

config = context.config
target_metadata = Base.metadata


def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    """Only our tables take part in autogenerate."""
    if type_ == "table":
        return name is not None and name.startswith(TABLE_PREFIX) and name != VERSION_TABLE
    return True


def _configure(**kwargs: Any) -> None:
    context.configure(
        target_metadata=target_metadata,
        version_table=VERSION_TABLE,
        include_name=include_name,
        render_as_batch=True,  # SQLite cannot ALTER most things; batch mode copies the table instead
        compare_type=True,
        **kwargs,
    )


def run_offline() -> None:
    _configure(url=config.get_main_option("sqlalchemy.url"), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online(connection: Connection) -> None:
    _configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    given = config.attributes.get("connection")
    if given is not None:
        run_online(given)
    else:
        engine = create_engine(config.get_main_option("sqlalchemy.url") or "", poolclass=NullPool)
        try:
            with engine.begin() as conn:
                run_online(conn)
        finally:
            engine.dispose()
