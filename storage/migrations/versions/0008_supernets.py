"""A study's weight-sharing supernet and what it cost.

Revision ID: 0008
Revises: 0007
Create Date: 2027-02-16

Adds ``nas_supernets``: one row per study of ``fidelity.kind: supernet`` (``study_id`` unique, deleted with
its study), written at every checkpoint of the supernet's training: its progress (``steps_done`` of
``steps_total``), the full record (``payload_json``: ``nas.records.SupernetRecord``) and its training
cost over every run (``cost_*``), which the study's search cost adds once. Existing studies have no row.
The downgrade drops the table. Self-contained on purpose: it imports nothing from the package.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TABLE = "nas_supernets"


def upgrade() -> None:
    op.create_table(
        _TABLE,
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("steps_done", sa.Integer(), nullable=False),
        sa.Column("steps_total", sa.Integer(), nullable=False),
        sa.Column("meter", sa.String(length=32), nullable=True),
        sa.Column("cost_train_energy_j", sa.Float(), nullable=True),
        sa.Column("cost_co2eq_g", sa.Float(), nullable=True),
        sa.Column("cost_wall_s", sa.Float(), nullable=False),
        sa.Column("cost_is_estimate", sa.Boolean(), nullable=False),
        sa.Column("payload_json", sa.Text(), nullable=False),
        sa.Column("updated_utc", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["study_id"],
            ["nas_studies.id"],
            name=op.f("fk_nas_supernets_study_id_nas_studies"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_nas_supernets")),
        sa.UniqueConstraint("study_id", name=op.f("uq_nas_supernets_study_id")),
    )


def downgrade() -> None:
    op.drop_table(_TABLE)
