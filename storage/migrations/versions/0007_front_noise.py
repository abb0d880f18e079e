"""Whether each front member is clear of the measurement noise.

Revision ID: 0007
Revises: 0006
Create Date: 2027-02-09

Adds ``nas_pareto_front.clear``: under ``front.noise: aware`` (the default), True when no other trial may
dominate the member within the noise of the readings, False when one may (tied within noise); NULL for a
study that ignores noise, and for rows written before this revision. The upgrade then leaves the marks
NULL; ``Store.upgrade`` recomputes every persisted front after migrating, which fills them. The downgrade
drops the column. Self-contained on purpose: it imports nothing from the package.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("nas_pareto_front") as batch:
        batch.add_column(sa.Column("clear", sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("nas_pareto_front") as batch:
        batch.drop_column("clear")
