"""Initial energy-nas schema: studies, trials, energy readings, artefacts and the persisted Pareto front.

Revision ID: 0001
Revises:
Create Date: 2025-11-25

Self-contained on purpose: it imports nothing from the package, so later model changes cannot alter it.
Timestamps are ``DateTime(timezone=True)`` (``storage.models.UTCDateTime`` reads them back as UTC).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "nas_studies",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("optuna_study_id", sa.Integer(), nullable=True),
        sa.Column("spec_json", sa.Text(), nullable=False),
        sa.Column("objectives_json", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_utc", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_utc", sa.DateTime(timezone=True), nullable=False),
        sa.Column("budget_energy_j", sa.Float(), nullable=True),
        sa.Column("budget_trials", sa.Integer(), nullable=True),
        sa.Column("budget_wall_s", sa.Float(), nullable=True),
        sa.Column("train_energy_j", sa.Float(), nullable=False),
        sa.Column("measure_energy_j", sa.Float(), nullable=False),
        sa.Column("co2eq_g", sa.Float(), nullable=False),
        sa.Column("wall_s", sa.Float(), nullable=False),
        sa.Column("gpu_s", sa.Float(), nullable=False),
        sa.Column("cost_includes_estimate", sa.Boolean(), nullable=False),
        sa.Column("n_trials_complete", sa.Integer(), nullable=False),
        sa.Column("n_trials_failed", sa.Integer(), nullable=False),
        sa.Column("n_trials_pruned", sa.Integer(), nullable=False),
        sa.CheckConstraint(
            "status IN ('RUNNING', 'COMPLETE', 'FAILED', 'STOPPED')", name=op.f("ck_nas_studies_status")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_nas_studies")),
        sa.UniqueConstraint("name", name=op.f("uq_nas_studies_name")),
    )
    op.create_table(
        "nas_trials",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("trial_number", sa.Integer(), nullable=False),
        sa.Column("optuna_trial_id", sa.Integer(), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("fail_reason", sa.Text(), nullable=True),
        sa.Column("retryable", sa.Boolean(), nullable=False),
        sa.Column("candidate_json", sa.Text(), nullable=True),
        sa.Column("candidate_hash", sa.String(length=64), nullable=True),
        sa.Column("candidate_flat_json", sa.Text(), nullable=True),
        sa.Column("result_json", sa.Text(), nullable=True),
        sa.Column("task", sa.String(length=255), nullable=True),
        sa.Column("accuracy", sa.Float(), nullable=True),
        sa.Column("macro_f1", sa.Float(), nullable=True),
        sa.Column("energy_per_sample_j", sa.Float(), nullable=True),
        sa.Column("energy_per_sample_net_j", sa.Float(), nullable=True),
        sa.Column("latency_p50_ms", sa.Float(), nullable=True),
        sa.Column("latency_p95_ms", sa.Float(), nullable=True),
        sa.Column("throughput_samples_s", sa.Float(), nullable=True),
        sa.Column("params", sa.BigInteger(), nullable=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=True),
        sa.Column("flops_per_sample", sa.Float(), nullable=True),
        sa.Column("train_energy_j", sa.Float(), nullable=True),
        sa.Column("weight_bits", sa.Integer(), nullable=True),
        sa.Column("attention", sa.String(length=16), nullable=True),
        sa.Column("meter", sa.String(length=32), nullable=True),
        sa.Column("is_estimate", sa.Boolean(), nullable=True),
        sa.Column("hardware_fingerprint", sa.String(length=255), nullable=True),
        sa.Column("device_uuid", sa.String(length=128), nullable=True),
        sa.Column("cost_train_energy_j", sa.Float(), nullable=True),
        sa.Column("cost_measure_energy_j", sa.Float(), nullable=True),
        sa.Column("cost_co2eq_g", sa.Float(), nullable=True),
        sa.Column("cost_wall_s", sa.Float(), nullable=True),
        sa.Column("cost_gpu_s", sa.Float(), nullable=True),
        sa.Column("cost_meter", sa.String(length=32), nullable=True),
        sa.Column("cost_is_estimate", sa.Boolean(), nullable=True),
        sa.Column("started_utc", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_utc", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "state IN ('RUNNING', 'COMPLETE', 'FAIL', 'PRUNED')", name=op.f("ck_nas_trials_state")
        ),
        sa.ForeignKeyConstraint(
            ["study_id"],
            ["nas_studies.id"],
            name=op.f("fk_nas_trials_study_id_nas_studies"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_nas_trials")),
        sa.UniqueConstraint("study_id", "trial_number", name="uq_nas_trials_study_number"),
    )
    op.create_index("ix_nas_trials_study_hash", "nas_trials", ["study_id", "candidate_hash"], unique=False)
    op.create_index("ix_nas_trials_study_state", "nas_trials", ["study_id", "state"], unique=False)

    op.create_table(
        "nas_artefacts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("trial_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=True),
        sa.Column("created_utc", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["trial_id"],
            ["nas_trials.id"],
            name=op.f("fk_nas_artefacts_trial_id_nas_trials"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_nas_artefacts")),
    )
    op.create_index("ix_nas_artefacts_trial_id", "nas_artefacts", ["trial_id"], unique=False)

    op.create_table(
        "nas_energy_readings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("trial_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("meter", sa.String(length=32), nullable=False),
        sa.Column("is_estimate", sa.Boolean(), nullable=False),
        sa.Column("exclusive", sa.Boolean(), nullable=False),
        sa.Column("energy_j", sa.Float(), nullable=True),
        sa.Column("energy_per_sample_j", sa.Float(), nullable=True),
        sa.Column("energy_per_sample_net_j", sa.Float(), nullable=True),
        sa.Column("idle_w", sa.Float(), nullable=True),
        sa.Column("cv", sa.Float(), nullable=True),
        sa.Column("duration_s", sa.Float(), nullable=True),
        sa.Column("co2eq_g", sa.Float(), nullable=True),
        sa.Column("batch_size", sa.Integer(), nullable=True),
        sa.Column("seq_len", sa.Integer(), nullable=True),
        sa.Column("n_windows", sa.Integer(), nullable=True),
        sa.Column("window_s", sa.Float(), nullable=True),
        sa.Column("serving_form", sa.String(length=32), nullable=True),
        sa.Column("dtype", sa.String(length=32), nullable=True),
        sa.Column("kernels", sa.Text(), nullable=True),
        sa.Column("device_uuid", sa.String(length=128), nullable=True),
        sa.Column("hardware_fingerprint", sa.String(length=255), nullable=True),
        sa.Column("provenance_json", sa.Text(), nullable=True),
        sa.Column("created_utc", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["trial_id"],
            ["nas_trials.id"],
            name=op.f("fk_nas_energy_readings_trial_id_nas_trials"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_nas_energy_readings")),
    )
    op.create_index("ix_nas_energy_readings_trial_id", "nas_energy_readings", ["trial_id"], unique=False)

    op.create_table(
        "nas_pareto_front",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("hardware_fingerprint", sa.String(length=255), nullable=False),
        sa.Column("objectives_key", sa.String(length=512), nullable=False),
        sa.Column("trial_id", sa.Integer(), nullable=False),
        sa.Column("trial_number", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("values_json", sa.Text(), nullable=False),
        sa.Column("updated_utc", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["study_id"],
            ["nas_studies.id"],
            name=op.f("fk_nas_pareto_front_study_id_nas_studies"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["trial_id"],
            ["nas_trials.id"],
            name=op.f("fk_nas_pareto_front_trial_id_nas_trials"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_nas_pareto_front")),
        sa.UniqueConstraint("study_id", "trial_id", name="uq_nas_pareto_front_study_trial"),
    )
    op.create_index(
        "ix_nas_pareto_front_study_hardware",
        "nas_pareto_front",
        ["study_id", "hardware_fingerprint"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_nas_pareto_front_study_hardware", table_name="nas_pareto_front")

    op.drop_table("nas_pareto_front")
    op.drop_index("ix_nas_energy_readings_trial_id", table_name="nas_energy_readings")

    op.drop_table("nas_energy_readings")
    op.drop_index("ix_nas_artefacts_trial_id", table_name="nas_artefacts")

    op.drop_table("nas_artefacts")
    op.drop_index("ix_nas_trials_study_state", table_name="nas_trials")
    op.drop_index("ix_nas_trials_study_hash", table_name="nas_trials")

    op.drop_table("nas_trials")
    op.drop_table("nas_studies")
