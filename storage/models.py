"""SQLAlchemy 2 ORM models of the energy-nas tables.

Rows never leave the ``storage`` package: :mod:`storage.store` turns them into the frozen records of
:mod:`storage.views`.

Optuna's ``RDBStorage`` keeps studies, trials and parameters in the same database, in its own tables and
with Alembic's default ``alembic_version`` table. So every table here starts with ``nas_`` and our
migrations record their revision in :data:`VERSION_TABLE`. Rows link to Optuna by its study and trial ids
(no foreign key: Optuna's tables may be created after ours, or not at all).

Units live in column names. JSON is stored as text (portable, and readable with ``json_extract`` in the
sqlite3 shell); NaN and infinities are written as ``null``.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

__all__ = [
    "VERSION_TABLE",
    "TABLE_PREFIX",
    "STUDY_STATUSES",
    "TRIAL_STATES",
    "UTCDateTime",
    "Base",
    "StudyRow",
    "TrialRow",
    "TrialRungRow",
    "EnergyReadingRow",
    "ArtefactRow",
    "ParetoFrontRow",
    "TeacherReferenceRow",
    "SupernetRow",
]

#: Our Alembic version table. Optuna uses Alembic's default ``alembic_version``.
VERSION_TABLE = "nas_alembic_version"
#: Every table of ours starts with this.
TABLE_PREFIX = "nas_"
STUDY_STATUSES: tuple[str, ...] = ("RUNNING", "COMPLETE", "FAILED", "STOPPED")
TRIAL_STATES: tuple[str, ...] = ("RUNNING", "COMPLETE", "FAIL", "PRUNED")

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utc_now() -> datetime:
    """The current time, timezone-aware in UTC."""
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is always stored and returned as timezone-aware UTC.

    SQLite has no time zones and returns naive datetimes; they are read back as UTC.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """The value to write, in UTC; a naive datetime is refused (ValueError)."""
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: pass a timezone-aware UTC time")
        return value.astimezone(timezone.utc)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        """The value read, as an aware UTC datetime (a naive one, from SQLite, is taken as UTC)."""
        if value is None:
            return None
        assert isinstance(value, datetime)  # the driver's contract, not user input
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    """Declarative base; constraint names are fixed by convention so migrations can refer to them."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class StudyRow(Base):
    """One search.

    Its search cost and trial counts are not stored here: they are derived from its trials whenever it is
    read (see :func:`storage.studies.study_costs`).
    """

    __tablename__ = "nas_studies"
    __table_args__ = (CheckConstraint(_in("status", STUDY_STATUSES), name="status"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    optuna_study_id: Mapped[int | None] = mapped_column(Integer)
    spec_json: Mapped[str] = mapped_column(Text)
    objectives_json: Mapped[str] = mapped_column(Text)  # [[metric, direction], ...]
    status: Mapped[str] = mapped_column(String(16), default="RUNNING")
    created_utc: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_utc: Mapped[datetime] = mapped_column(UTCDateTime)
    budget_energy_j: Mapped[float | None] = mapped_column(Float)
    budget_trials: Mapped[int | None] = mapped_column(Integer)
    budget_wall_s: Mapped[float | None] = mapped_column(Float)

    trials: Mapped[list[TrialRow]] = relationship(back_populates="study", passive_deletes=True)


class TrialRow(Base):
    """One trial: its candidate, its result (full JSON plus flat metric columns) and its cost.

    ``accuracy``/``macro_f1`` are on the dev split (what the search selects on); ``test_accuracy`` and
    ``test_macro_f1`` on the test split (only reported); ``majority_accuracy`` is the dev majority-class
    rate that a front member must beat (``StudySpec.front.require_above_majority``).

    ``hardware_fingerprint`` is the device model the inference energy was measured on; fronts are
    compared per fingerprint. ``fail_kind`` (a :class:`nas.records.FailKind` value, FAIL trials only)
    says whether a failure spent budget and whether it blocks its candidate (through ``candidate_hash``)
    from being sampled again: only the candidate's own failures (``candidate``) do either.
    """

    __tablename__ = "nas_trials"
    __table_args__ = (
        UniqueConstraint("study_id", "trial_number", name="uq_nas_trials_study_number"),
        CheckConstraint(_in("state", TRIAL_STATES), name="state"),
        Index("ix_nas_trials_study_state", "study_id", "state"),
        Index("ix_nas_trials_study_hash", "study_id", "candidate_hash"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("nas_studies.id", ondelete="CASCADE"))
    trial_number: Mapped[int] = mapped_column(Integer)
    optuna_trial_id: Mapped[int | None] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))
    fail_reason: Mapped[str | None] = mapped_column(Text)
    fail_kind: Mapped[str | None] = mapped_column(String(16))
    candidate_json: Mapped[str | None] = mapped_column(Text)
    candidate_hash: Mapped[str | None] = mapped_column(String(64))
    candidate_flat_json: Mapped[str | None] = mapped_column(Text)
    result_json: Mapped[str | None] = mapped_column(Text)
    task: Mapped[str | None] = mapped_column(String(255))
    # flat metrics (the keys of TrialResult.objectives()), for plain SQL and fast fronts
    accuracy: Mapped[float | None] = mapped_column(Float)
    macro_f1: Mapped[float | None] = mapped_column(Float)
    # reported, never selected on (TrialResult.reported()); NULL for trials stored before revision 0002
    test_accuracy: Mapped[float | None] = mapped_column(Float)
    test_macro_f1: Mapped[float | None] = mapped_column(Float)
    majority_accuracy: Mapped[float | None] = mapped_column(Float)
    energy_per_sample_j: Mapped[float | None] = mapped_column(Float)
    energy_per_sample_net_j: Mapped[float | None] = mapped_column(Float)
    latency_p50_ms: Mapped[float | None] = mapped_column(Float)
    latency_p95_ms: Mapped[float | None] = mapped_column(Float)
    throughput_samples_s: Mapped[float | None] = mapped_column(Float)
    params: Mapped[int | None] = mapped_column(BigInteger)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    flops_per_sample: Mapped[float | None] = mapped_column(Float)
    train_energy_j: Mapped[float | None] = mapped_column(Float)
    weight_bits: Mapped[int | None] = mapped_column(Integer)
    attention: Mapped[str | None] = mapped_column(String(16))
    meter: Mapped[str | None] = mapped_column(String(32))
    is_estimate: Mapped[bool | None] = mapped_column(Boolean)
    hardware_fingerprint: Mapped[str | None] = mapped_column(String(255))
    device_uuid: Mapped[str | None] = mapped_column(String(128))
    # search cost of this trial (TrialCost)
    cost_train_energy_j: Mapped[float | None] = mapped_column(Float)
    cost_measure_energy_j: Mapped[float | None] = mapped_column(Float)
    cost_co2eq_g: Mapped[float | None] = mapped_column(Float)
    cost_wall_s: Mapped[float | None] = mapped_column(Float)
    cost_gpu_s: Mapped[float | None] = mapped_column(Float)
    cost_meter: Mapped[str | None] = mapped_column(String(32))
    cost_is_estimate: Mapped[bool | None] = mapped_column(Boolean)
    started_utc: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_utc: Mapped[datetime | None] = mapped_column(UTCDateTime)

    study: Mapped[StudyRow] = relationship(back_populates="trials")
    readings: Mapped[list[EnergyReadingRow]] = relationship(
        back_populates="trial", cascade="all, delete-orphan", passive_deletes=True
    )
    # loaded with the trials (one extra SELECT per batch of trials), ordered by step
    rungs: Mapped[list[TrialRungRow]] = relationship(
        cascade="all, delete-orphan", passive_deletes=True, lazy="selectin", order_by="TrialRungRow.step"
    )


class TrialRungRow(Base):
    """A trial's dev accuracy at one accuracy rung (``fidelity.rungs``), reached while it trained.

    Written as each rung report arrives (so a trial that ASHA stops, or whose worker dies, keeps every rung
    it reached), and from a finished result's ``train.rung_accuracies``. The accuracy is measured
    mid-training, before the final compression; the last rung is not here: it is the trial's final dev
    ``accuracy`` on ``nas_trials``.
    """

    __tablename__ = "nas_trial_rungs"
    __table_args__ = (UniqueConstraint("trial_id", "step", name="uq_nas_trial_rungs_trial_step"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    trial_id: Mapped[int] = mapped_column(ForeignKey("nas_trials.id", ondelete="CASCADE"), index=True)
    step: Mapped[int] = mapped_column(Integer)
    accuracy: Mapped[float] = mapped_column(Float)
    created_utc: Mapped[datetime] = mapped_column(UTCDateTime)


class EnergyReadingRow(Base):
    """One energy reading of a trial, with the meter that took it and its provenance.

    ``kind`` is ``"train"`` or ``"inference:<serving form>"``. For inference, the per-sample columns are
    filled (gross and idle-corrected) and ``energy_j`` is empty; for training, ``energy_j`` is the total.
    ``origin`` is ``"remeasure"`` for an inference reading ``nas remeasure`` took later, on the machine its
    ``hardware_fingerprint`` names, with its whole record in ``record_json``; ``NULL`` for the trial's own.
    """

    __tablename__ = "nas_energy_readings"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    trial_id: Mapped[int] = mapped_column(ForeignKey("nas_trials.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(64))
    meter: Mapped[str] = mapped_column(String(32))
    is_estimate: Mapped[bool] = mapped_column(Boolean)
    exclusive: Mapped[bool] = mapped_column(Boolean)
    energy_j: Mapped[float | None] = mapped_column(Float)
    energy_per_sample_j: Mapped[float | None] = mapped_column(Float)
    energy_per_sample_net_j: Mapped[float | None] = mapped_column(Float)
    idle_w: Mapped[float | None] = mapped_column(Float)
    cv: Mapped[float | None] = mapped_column(Float)
    duration_s: Mapped[float | None] = mapped_column(Float)
    co2eq_g: Mapped[float | None] = mapped_column(Float)
    batch_size: Mapped[int | None] = mapped_column(Integer)
    seq_len: Mapped[int | None] = mapped_column(Integer)
    n_windows: Mapped[int | None] = mapped_column(Integer)
    window_s: Mapped[float | None] = mapped_column(Float)
    serving_form: Mapped[str | None] = mapped_column(String(32))
    dtype: Mapped[str | None] = mapped_column(String(32))
    kernels: Mapped[str | None] = mapped_column(Text)
    device_uuid: Mapped[str | None] = mapped_column(String(128))
    hardware_fingerprint: Mapped[str | None] = mapped_column(String(255))
    provenance_json: Mapped[str | None] = mapped_column(Text)
    # NULL: taken by the trial itself; "remeasure": added by `nas remeasure` (revision 0006)
    origin: Mapped[str | None] = mapped_column(String(16))
    # a re-measured reading's full InferenceEnergy (its machine's front is computed from it)
    record_json: Mapped[str | None] = mapped_column(Text)
    created_utc: Mapped[datetime] = mapped_column(UTCDateTime)

    trial: Mapped[TrialRow] = relationship(back_populates="readings")


class ArtefactRow(Base):
    """A file a trial produced (weights, an export), by path, with its checksum when known."""

    __tablename__ = "nas_artefacts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    trial_id: Mapped[int] = mapped_column(ForeignKey("nas_trials.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str | None] = mapped_column(String(64))
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    created_utc: Mapped[datetime] = mapped_column(UTCDateTime)


class ParetoFrontRow(Base):
    """The persisted Pareto front: one row per front member, per study and hardware fingerprint.

    A trial re-measured on another machine (``nas remeasure``) can stand on each machine's front.

    Rewritten in the same transaction as the trial that changed it, and always recomputable from
    ``nas_trials``. ``position`` orders the front by its first objective, best first.
    """

    __tablename__ = "nas_pareto_front"
    __table_args__ = (
        UniqueConstraint("study_id", "hardware_fingerprint", "trial_id", name="uq_nas_pareto_front_study_hardware_trial"),
        Index("ix_nas_pareto_front_study_hardware", "study_id", "hardware_fingerprint"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("nas_studies.id", ondelete="CASCADE"))
    hardware_fingerprint: Mapped[str] = mapped_column(String(255))
    objectives_key: Mapped[str] = mapped_column(String(512))
    trial_id: Mapped[int] = mapped_column(ForeignKey("nas_trials.id", ondelete="CASCADE"))
    trial_number: Mapped[int] = mapped_column(Integer)
    position: Mapped[int] = mapped_column(Integer)
    # front.noise: aware: True when no other trial may dominate it within noise, False when tied (0007)
    clear: Mapped[bool | None] = mapped_column(Boolean)
    values_json: Mapped[str] = mapped_column(Text)
    updated_utc: Mapped[datetime] = mapped_column(UTCDateTime)


class TeacherReferenceRow(Base):
    """A study's teacher, assessed like a trial: the reference point every front member is compared with.

    One row per study, replaced when the study stores its teacher again. ``payload_json`` holds the full
    :class:`nas.reference.TeacherReference`; the flat columns copy its point (dev ``accuracy``, like
    ``nas_trials.accuracy``) and what it cost this study (``cost_*``: fine-tuning and building the
    outputs cache in ``cost_train_energy_j``, its measurement in ``cost_measure_energy_j``), which the
    study's search cost adds once (see :func:`storage.studies.study_costs`).
    """

    __tablename__ = "nas_teacher_references"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("nas_studies.id", ondelete="CASCADE"), unique=True)
    name: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(Text)
    accuracy: Mapped[float | None] = mapped_column(Float)
    test_accuracy: Mapped[float | None] = mapped_column(Float)
    energy_per_sample_j: Mapped[float | None] = mapped_column(Float)
    meter: Mapped[str | None] = mapped_column(String(32))
    is_estimate: Mapped[bool | None] = mapped_column(Boolean)
    hardware_fingerprint: Mapped[str | None] = mapped_column(String(255))
    cost_train_energy_j: Mapped[float | None] = mapped_column(Float)
    cost_measure_energy_j: Mapped[float | None] = mapped_column(Float)
    cost_co2eq_g: Mapped[float | None] = mapped_column(Float)
    cost_is_estimate: Mapped[bool] = mapped_column(Boolean)
    payload_json: Mapped[str] = mapped_column(Text)
    created_utc: Mapped[datetime] = mapped_column(UTCDateTime)


class SupernetRow(Base):
    """A study's weight-sharing supernet (``fidelity.kind: supernet``): its progress and what it cost.

    One row per study, written at every checkpoint, so the joules of a run that was killed still count.
    ``payload_json`` holds the full :class:`nas.records.SupernetRecord`; ``cost_*`` is its training cost
    over every run, which the study's search cost adds once (see :func:`storage.studies.study_costs`).
    """

    __tablename__ = "nas_supernets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("nas_studies.id", ondelete="CASCADE"), unique=True)
    steps_done: Mapped[int] = mapped_column(Integer)
    steps_total: Mapped[int] = mapped_column(Integer)
    meter: Mapped[str | None] = mapped_column(String(32))
    cost_train_energy_j: Mapped[float | None] = mapped_column(Float)
    cost_co2eq_g: Mapped[float | None] = mapped_column(Float)
    cost_wall_s: Mapped[float] = mapped_column(Float)
    cost_is_estimate: Mapped[bool] = mapped_column(Boolean)
    payload_json: Mapped[str] = mapped_column(Text)
    updated_utc: Mapped[datetime] = mapped_column(UTCDateTime)
