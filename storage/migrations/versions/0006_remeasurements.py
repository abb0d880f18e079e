"""Readings re-measured on other hardware, and one front membership per hardware.

Revision ID: 0006
Revises: 0005
Create Date: 2027-02-02

``nas remeasure`` measures stored trials again on another machine. Its readings go to
``nas_energy_readings`` beside the trial's own, under the new machine's ``hardware_fingerprint``:

* ``origin``: ``NULL`` for a reading the trial itself took (every row before this revision), and
  ``"remeasure"`` for one ``nas remeasure`` added;
* ``record_json``: the full inference record (latency, throughput, windows, provenance) of a re-measured
  reading, which that machine's front is computed from. ``NULL`` for the trial's own readings: their
  record is the trial's ``result_json``.

A trial re-measured on a second machine can stand on both machines' fronts, so ``nas_pareto_front``'s
unique key becomes (study, hardware fingerprint, trial) instead of (study, trial). Existing rows are kept:
until this revision a trial had one fingerprint, so they satisfy the new key. The downgrade drops the
re-measured readings and the front rows of machines other than each trial's own, then restores the old key.
Self-contained on purpose: it imports nothing from the package.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_READINGS = "nas_energy_readings"
_FRONT = "nas_pareto_front"
_OLD_KEY = "uq_nas_pareto_front_study_trial"
_NEW_KEY = "uq_nas_pareto_front_study_hardware_trial"


def upgrade() -> None:
    with op.batch_alter_table(_READINGS) as batch:
        batch.add_column(sa.Column("origin", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("record_json", sa.Text(), nullable=True))
    with op.batch_alter_table(_FRONT) as batch:
        batch.drop_constraint(_OLD_KEY, type_="unique")
        batch.create_unique_constraint(_NEW_KEY, ["study_id", "hardware_fingerprint", "trial_id"])


def downgrade() -> None:
    readings = sa.table(_READINGS, sa.column("origin", sa.String))
    op.execute(readings.delete().where(readings.c.origin.is_not(None)))
    front = sa.table(_FRONT, sa.column("trial_id", sa.Integer), sa.column("hardware_fingerprint", sa.String))
    trials = sa.table("nas_trials", sa.column("id", sa.Integer), sa.column("hardware_fingerprint", sa.String))
    own = sa.select(trials.c.hardware_fingerprint).where(trials.c.id == front.c.trial_id).scalar_subquery()
    op.execute(front.delete().where(front.c.hardware_fingerprint != sa.func.coalesce(own, "unknown")))
    with op.batch_alter_table(_FRONT) as batch:
        batch.drop_constraint(_NEW_KEY, type_="unique")
        batch.create_unique_constraint(_OLD_KEY, ["study_id", "trial_id"])
    with op.batch_alter_table(_READINGS) as batch:
        batch.drop_column("record_json")
        batch.drop_column("origin")
