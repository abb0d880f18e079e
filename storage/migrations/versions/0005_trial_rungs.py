"""Every trial's dev accuracy at each rung it reached.

Revision ID: 0005
Revises: 0004
Create Date: 2027-01-26

Adds ``nas_trial_rungs``: one row per trial and rung step (``trial_id``, ``step`` unique together, deleted
with its trial) holding the dev ``accuracy`` the worker reported there, mid-training. The search driver
writes each row as the rung report arrives, so a trial stopped by ASHA, or whose worker died after a rung,
keeps every rung it reached; before this revision only a COMPLETE (or failed-after-training) trial kept
them, inside its result JSON, and a stopped trial kept its last rung in its reason text.

The upgrade fills the table from what older rows hold: ``result_json``'s ``train.rung_accuracies``, and,
for PRUNED trials, the last rung named by the writer's reason (``stopped by ASHA at step 200 (rung
accuracy 0.7123)``, 4 decimals). Earlier rungs of those trials were never stored and stay unknown. The
downgrade drops the table. Self-contained on purpose: it imports nothing from the package.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TABLE = "nas_trial_rungs"
#: The reason ``nas.runner.writer`` gave a stopped trial up to this revision.
_PRUNED_REASON = re.compile(r"stopped by ASHA at step (\d+) \(rung accuracy ([0-9.]+)\)")

_trials = sa.table("nas_trials", sa.column("id", sa.Integer), sa.column("state", sa.String),
                   sa.column("fail_reason", sa.Text), sa.column("result_json", sa.Text))
_rungs = sa.table(_TABLE, sa.column("trial_id", sa.Integer), sa.column("step", sa.Integer),
                  sa.column("accuracy", sa.Float), sa.column("created_utc", sa.DateTime(timezone=True)))


def upgrade() -> None:
    op.create_table(
        _TABLE,
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("trial_id", sa.Integer(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("accuracy", sa.Float(), nullable=False),
        sa.Column("created_utc", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["trial_id"],
            ["nas_trials.id"],
            name=op.f("fk_nas_trial_rungs_trial_id_nas_trials"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_nas_trial_rungs")),
        sa.UniqueConstraint("trial_id", "step", name="uq_nas_trial_rungs_trial_step"),
    )
    op.create_index("ix_nas_trial_rungs_trial_id", _TABLE, ["trial_id"], unique=False)
    now = datetime.now(timezone.utc)
    rows = [{"trial_id": tid, "step": step, "accuracy": acc, "created_utc": now} for tid, step, acc in _old_rungs()]
    if rows:
        op.bulk_insert(_rungs, rows)


def _old_rungs() -> Iterator[tuple[int, int, float]]:
    """``(trial id, step, accuracy)`` of every rung older rows recorded, one per trial and step."""
    conn = op.get_bind()
    query = sa.select(_trials.c.id, _trials.c.state, _trials.c.fail_reason, _trials.c.result_json).where(
        sa.or_(_trials.c.result_json.is_not(None), _trials.c.state == "PRUNED"))
    for tid, state, reason, result_json in conn.execute(query):
        found: dict[int, float] = {}
        if result_json:
            found.update(_from_result(result_json))
        match = _PRUNED_REASON.search(reason or "") if state == "PRUNED" else None
        if match is not None:
            found.setdefault(int(match.group(1)), float(match.group(2)))
        for step, acc in sorted(found.items()):
            if step > 0 and math.isfinite(acc):
                yield int(tid), step, acc


def _from_result(result_json: str) -> dict[int, float]:
    try:
        train: Any = (json.loads(result_json) or {}).get("train") or {}
        return {int(step): float(acc) for step, acc in train.get("rung_accuracies") or ()
                if acc is not None}
    except (ValueError, TypeError, AttributeError):
        return {}  # a row this revision cannot read keeps no rungs; the trial itself is untouched


def downgrade() -> None:
    op.drop_index("ix_nas_trial_rungs_trial_id", table_name=_TABLE)
    op.drop_table(_TABLE)
