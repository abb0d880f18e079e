"""The teacher reference: one measured teacher per study.

Revision ID: 0004
Revises: 0003
Create Date: 2027-01-12

Adds ``nas_teacher_references``: one row per study (``study_id`` unique, deleted with its study) that
holds the study's teacher assessed like a trial (``payload_json``: ``nas.reference.TeacherReference``),
its point (dev ``accuracy``, ``test_accuracy``, ``energy_per_sample_j`` with ``meter``, ``is_estimate``
and ``hardware_fingerprint``) and what it cost the study (``cost_*``), which the study's search cost
adds once. Existing studies have no row: they had no measured teacher. The downgrade drops the table.
Self-contained on purpose: it imports nothing from the package.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TABLE = "nas_teacher_references"


def upgrade() -> None:
    op.create_table(
        _TABLE,
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("accuracy", sa.Float(), nullable=True),
        sa.Column("test_accuracy", sa.Float(), nullable=True),
        sa.Column("energy_per_sample_j", sa.Float(), nullable=True),
        sa.Column("meter", sa.String(length=32), nullable=True),
        sa.Column("is_estimate", sa.Boolean(), nullable=True),
        sa.Column("hardware_fingerprint", sa.String(length=255), nullable=True),
        sa.Column("cost_train_energy_j", sa.Float(), nullable=True),
        sa.Column("cost_measure_energy_j", sa.Float(), nullable=True),
        sa.Column("cost_co2eq_g", sa.Float(), nullable=True),
        sa.Column("cost_is_estimate", sa.Boolean(), nullable=False),
        sa.Column("payload_json", sa.Text(), nullable=False),
        sa.Column("created_utc", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["study_id"],
            ["nas_studies.id"],
            name=op.f("fk_nas_teacher_references_study_id_nas_studies"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_nas_teacher_references")),
        sa.UniqueConstraint("study_id", name=op.f("uq_nas_teacher_references_study_id")),
    )


def downgrade() -> None:
    op.drop_table(_TABLE)
