"""Failure kinds on trials; study totals derived, not stored.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02

* ``nas_trials.fail_kind`` (``nas.records.FailKind`` values, FAIL trials only) replaces
  ``nas_trials.retryable`` and the matching of ``fail_reason`` prefixes: budgeting and the blocking of
  failed candidates read the kind. Existing FAIL rows are backfilled from what used to decide: a reason
  starting ``interrupted`` is ``interrupted``; another retryable failure is ``device`` (the only other
  source of retryable failures); ``not evaluated...`` is ``not_evaluated``; ``invalid candidate...`` is
  ``invalid``; any other failure is ``candidate``.
* The study's cost totals and trial counters on ``nas_studies`` are dropped: they are derived from the
  trials whenever a study is read, and nothing reads the columns.

The downgrade restores ``retryable`` from the kinds (``interrupted`` and ``device``) and the study
columns from the trials (sums of their costs, counts of their states), and keeps every row. Plain
``ADD``/``DROP COLUMN`` (SQLite >= 3.35 and PostgreSQL): batch mode would recreate the tables, and
dropping the old table under ``PRAGMA foreign_keys=ON`` would cascade to the readings and the front.
Self-contained on purpose: it imports nothing from the package.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_STUDY_FLOATS = ("train_energy_j", "measure_energy_j", "co2eq_g", "wall_s", "gpu_s")
_STUDY_COUNTS = {"n_trials_complete": "COMPLETE", "n_trials_failed": "FAIL", "n_trials_pruned": "PRUNED"}

_trials = sa.table(
    "nas_trials", sa.column("id", sa.Integer), sa.column("study_id", sa.Integer), sa.column("state", sa.String),
    sa.column("fail_reason", sa.Text), sa.column("retryable", sa.Boolean), sa.column("fail_kind", sa.String),
    sa.column("cost_train_energy_j", sa.Float), sa.column("cost_measure_energy_j", sa.Float),
    sa.column("cost_co2eq_g", sa.Float), sa.column("cost_wall_s", sa.Float), sa.column("cost_gpu_s", sa.Float),
    sa.column("cost_is_estimate", sa.Boolean),
)
_studies = sa.table(
    "nas_studies", sa.column("id", sa.Integer), *(sa.column(n, sa.Float) for n in _STUDY_FLOATS),
    sa.column("cost_includes_estimate", sa.Boolean), *(sa.column(n, sa.Integer) for n in _STUDY_COUNTS),
)


def upgrade() -> None:
    op.add_column("nas_trials", sa.Column("fail_kind", sa.String(length=16), nullable=True))
    t = _trials.c
    reason = sa.func.coalesce(t.fail_reason, "")
    op.execute(_trials.update().where(t.state == "FAIL").values(fail_kind=sa.case(
        (reason.startswith("interrupted"), "interrupted"),
        (t.retryable.is_(sa.true()), "device"),
        (reason.startswith("not evaluated"), "not_evaluated"),
        (reason.startswith("invalid candidate"), "invalid"),
        else_="candidate",
    )))
    op.drop_column("nas_trials", "retryable")
    for name in (*_STUDY_FLOATS, "cost_includes_estimate", *_STUDY_COUNTS):
        op.drop_column("nas_studies", name)


def _of_study(expr: sa.ColumnElement[Any], *where: sa.ColumnElement[bool]) -> sa.ScalarSelect[Any]:
    """``expr`` over the trials of the study being updated, as a correlated subquery."""
    return sa.select(expr).where(_trials.c.study_id == _studies.c.id, *where).scalar_subquery()


def downgrade() -> None:
    op.add_column("nas_trials", sa.Column("retryable", sa.Boolean(), nullable=False, server_default=sa.false()))
    t = _trials.c
    op.execute(_trials.update().where(t.fail_kind.in_(("interrupted", "device"))).values(retryable=sa.true()))
    op.drop_column("nas_trials", "fail_kind")
    for name in _STUDY_FLOATS:
        op.add_column("nas_studies", sa.Column(name, sa.Float(), nullable=False, server_default="0"))
    op.add_column("nas_studies", sa.Column("cost_includes_estimate", sa.Boolean(), nullable=False,
                                           server_default=sa.false()))
    for name in _STUDY_COUNTS:
        op.add_column("nas_studies", sa.Column(name, sa.Integer(), nullable=False, server_default="0"))
    sums = {name: sa.func.coalesce(_of_study(sa.func.sum(getattr(t, f"cost_{name}"))), 0.0) for name in _STUDY_FLOATS}
    counts = {name: _of_study(sa.func.count(t.id), t.state == state) for name, state in _STUDY_COUNTS.items()}
    estimate = sa.exists().where(t.study_id == _studies.c.id, t.cost_is_estimate.is_(sa.true()))
    op.execute(_studies.update().values(**sums, **counts, cost_includes_estimate=estimate))
