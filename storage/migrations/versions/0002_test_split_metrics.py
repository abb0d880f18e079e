"""Test-split metrics and the dev majority-class rate on every trial.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25

Adds ``test_accuracy``, ``test_macro_f1`` and ``majority_accuracy`` to ``nas_trials``, all nullable:
trials stored before this revision keep NULL there (their result JSON has no test numbers), and the
front's majority-class rule does not apply to a trial whose rate is unknown. The downgrade drops the
three columns and keeps every row. Plain ``ADD``/``DROP COLUMN`` (SQLite >= 3.35 and PostgreSQL): batch
mode would recreate ``nas_trials``, and dropping the old table under ``PRAGMA foreign_keys=ON`` would
cascade to the readings and the persisted front.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COLUMNS = ("test_accuracy", "test_macro_f1", "majority_accuracy")


def upgrade() -> None:
    for name in _COLUMNS:
        op.add_column("nas_trials", sa.Column(name, sa.Float(), nullable=True))


def downgrade() -> None:
    for name in reversed(_COLUMNS):
        op.drop_column("nas_trials", name)
