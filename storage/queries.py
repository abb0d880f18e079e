"""Reads of studies, trials, readings and artefacts, inside a caller's session (fronts: :mod:`storage.fronts`)."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from nas.errors import ConfigError, StorageError
from nas.records import FailKind
from storage.convert import artefact_view, reading_view, trial_view
from storage.models import TRIAL_STATES, ArtefactRow, StudyRow, TrialRow
from storage.studies import read_study
from storage.trials import trial_row
from storage.views import ArtefactView, ReadingView, StudyInfo, TrialView

__all__ = [
    "list_studies",
    "check_states",
    "trials",
    "trial",
    "failed_candidate_hashes",
    "complete_candidate_hashes",
    "artefacts",
    "readings",
]


def list_studies(s: Session) -> list[StudyInfo]:
    """Every study, oldest first."""
    rows = s.scalars(select(StudyRow).order_by(StudyRow.created_utc, StudyRow.id)).all()
    return [read_study(s, r) for r in rows]


def check_states(states: Iterable[str] | None) -> tuple[str, ...] | None:
    """``states`` as a tuple, each a trial state.

    Raises:
        ConfigError: An unknown state, naming the known ones.
    """
    wanted = None if states is None else tuple(states)
    bad = [x for x in wanted or () if x not in TRIAL_STATES]
    if bad:
        raise ConfigError(f"unknown trial state; use {', '.join(TRIAL_STATES)}", field="states", value=bad[0])
    return wanted


def trials(s: Session, st: StudyRow, states: tuple[str, ...] | None) -> list[TrialView]:
    """A study's trials in number order, optionally only those in ``states``."""
    q = select(TrialRow).where(TrialRow.study_id == st.id)
    if states is not None:
        q = q.where(TrialRow.state.in_(states))
    return [trial_view(st.name, r) for r in s.scalars(q.order_by(TrialRow.trial_number)).all()]


def _existing_trial(s: Session, st: StudyRow, number: int) -> TrialRow:
    row = trial_row(s, st, number)
    if row is None:
        raise StorageError(f"study {st.name!r} has no trial {number}", fix=f"run `nas pareto {st.name}` to see its trials")
    return row


def trial(s: Session, st: StudyRow, number: int) -> TrialView:
    """One trial.

    Raises:
        StorageError: Unknown trial number.
    """
    return trial_view(st.name, _existing_trial(s, st, number))


def failed_candidate_hashes(s: Session, st: StudyRow) -> set[str]:
    """Hashes of candidates whose failure blocks them: never sample them again.

    :attr:`FailKind.blocks_candidate`: their own fault, or infeasible before training.
    """
    blocking = [k.value for k in FailKind if k.blocks_candidate]
    found = s.scalars(select(TrialRow.candidate_hash).where(
        TrialRow.study_id == st.id, TrialRow.fail_kind.in_(blocking),
        TrialRow.candidate_hash.is_not(None))).all()
    return {h for h in found if h is not None}


def complete_candidate_hashes(s: Session, st: StudyRow) -> dict[str, int]:
    """``candidate hash -> trial number`` of the study's COMPLETE trials (never evaluate them again)."""
    found = s.execute(select(TrialRow.candidate_hash, TrialRow.trial_number).where(
        TrialRow.study_id == st.id, TrialRow.state == "COMPLETE",
        TrialRow.candidate_hash.is_not(None)).order_by(TrialRow.trial_number)).all()
    out: dict[str, int] = {}
    for h, n in found:
        out.setdefault(str(h), int(n))
    return out


def artefacts(s: Session, st: StudyRow, number: int | None) -> list[ArtefactView]:
    """Files recorded for a study (or one of its trials), oldest first."""
    q = (select(ArtefactRow, TrialRow.trial_number).join(TrialRow, ArtefactRow.trial_id == TrialRow.id)
         .where(TrialRow.study_id == st.id))
    if number is not None:
        q = q.where(TrialRow.trial_number == number)
    return [artefact_view(n, a) for a, n in s.execute(q.order_by(ArtefactRow.id)).all()]


def readings(s: Session, st: StudyRow, number: int) -> list[ReadingView]:
    """The energy readings of one trial.

    Raises:
        StorageError: Unknown trial number.
    """
    row = trial_row(s, st, number)
    if row is None:
        raise StorageError(f"study {st.name!r} has no trial {number}")
    return [reading_view(number, r) for r in sorted(row.readings, key=lambda x: x.id)]
