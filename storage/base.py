"""The storage contract: what the search driver writes and what the CLI and dashboards read.

:class:`BaseStorage` lists every public operation, with its rules, the way Optuna's ``BaseStorage``
does. :class:`storage.Store` implements it on SQLAlchemy (SQLite or PostgreSQL); the suite in
``tests/storage_contract.py`` checks any implementation against it, once per backend.

Rules every implementation keeps:

* Every operation is atomic: it commits whole or not at all.
* Operations return frozen records (:mod:`storage.views`), never database rows.
* A trial is RUNNING, then ends exactly once: COMPLETE, FAIL or PRUNED.
* A study's search cost and trial counts are derived from its trials whenever it is read, plus its
  teacher reference's cost, counted once.
* The persisted front of a study always equals :meth:`BaseStorage.front` recomputed from its trials
  (without ``where``), and both apply the study's front rule: its ``constraints`` and its
  ``front.require_above_majority`` (see :mod:`storage.fronts`).
"""

from __future__ import annotations

import abc
import os
from collections.abc import Iterable, Sequence

from nas.config import Candidate
from nas.records import FailKind, InferenceEnergy, TrialResult
from nas.reference import TeacherReference
from nas.supernet_record import SupernetRecord
from storage.views import ArtefactView, FrontEntry, ReadingView, StudyInfo, TrialCost, TrialView

__all__ = ["BaseStorage"]


class BaseStorage(abc.ABC):
    """Studies, trials, energy readings, artefacts and Pareto fronts.

    Errors: an unknown study or trial, or a broken state rule, raises :class:`~nas.errors.StorageError`;
    a bad argument (objectives, spec JSON, state names, a ``where`` expression) raises
    :class:`~nas.errors.ConfigError`.
    """

    # --- studies -----------------------------------------------------------------------------------
    @abc.abstractmethod
    def create_study(self, name: str, spec_json: str, objectives: Sequence[tuple[str, str]], *,
                     optuna_study_id: int | None = None, budget_energy_j: float | None = None,
                     budget_trials: int | None = None, budget_wall_s: float | None = None,
                     exist_ok: bool = False) -> StudyInfo:
        """Record a new study.

        Args:
            name: Unique name (use the Optuna study name).
            spec_json: The study spec as JSON text (``StudySpec.model_dump_json()``).
            objectives: ``(metric, direction)`` pairs; metrics from :data:`storage.ALLOWED_OBJECTIVES`.
            optuna_study_id: Optuna's study id in the same database.
            budget_energy_j: Stop once this many joules have been spent (train + measure).
            budget_trials: Stop after this many finished trials.
            budget_wall_s: Stop after this many seconds of trial wall time.
            exist_ok: Return the existing study of that name (resume) instead of raising, provided its
                objectives are the same.

        Raises:
            ConfigError: Bad objectives, spec JSON or name.
            StorageError: The name is taken (and ``exist_ok`` is False, or the objectives differ).
        """

    @abc.abstractmethod
    def get_study(self, name: str) -> StudyInfo:
        """The study called ``name``.

        Raises:
            StorageError: ``unknown study 'x'; run `nas studies` to list them``.
        """

    @abc.abstractmethod
    def list_studies(self) -> list[StudyInfo]:
        """Every study, oldest first."""

    @abc.abstractmethod
    def set_study_status(self, name: str, status: str) -> None:
        """Set a study's status: ``RUNNING``, ``COMPLETE``, ``FAILED`` or ``STOPPED``."""

    @abc.abstractmethod
    def update_study_spec(self, name: str, spec_json: str, *, budget_energy_j: float | None = None,
                          budget_trials: int | None = None, budget_wall_s: float | None = None) -> StudyInfo:
        """Replace a study's spec (e.g. a resume with a larger trial budget); budgets given are replaced.

        The objectives cannot change: they define the stored fronts. When the new spec changes the front
        rule (its constraints or ``front.require_above_majority``), the persisted fronts are rebuilt in
        the same transaction.
        """

    @abc.abstractmethod
    def link_optuna_study(self, name: str, optuna_study_id: int) -> None:
        """Record Optuna's study id for an existing study."""

    # --- the teacher reference ------------------------------------------------------------------
    @abc.abstractmethod
    def put_teacher_reference(self, study: str, ref: TeacherReference) -> None:
        """Store the study's teacher, assessed like a trial, replacing any earlier one (one per study).

        Its cost (``ref.train_energy_j``: fine-tuning and the outputs cache when this study caused them;
        ``ref.measure_energy_j``: its measurement) becomes part of the study's search cost, once: a
        replaced reference's cost is replaced, never added. The study's ``updated_utc`` moves on.

        Raises:
            StorageError: Unknown study, or the teacher's J/sample was measured on a shared device.
        """

    @abc.abstractmethod
    def put_supernet(self, study: str, record: SupernetRecord) -> None:
        """Store (or replace) the study's supernet record: its progress and what it cost so far.

        Written at every checkpoint of its training, so the joules of a killed run are counted; the study's
        search cost adds the record's training cost once.

        Raises:
            StorageError: Unknown study.
        """

    @abc.abstractmethod
    def supernet(self, study: str) -> SupernetRecord | None:
        """The study's supernet record, or ``None`` (not a ``fidelity.kind: supernet`` study, or not begun)."""

    @abc.abstractmethod
    def teacher_reference(self, study: str) -> TeacherReference | None:
        """The study's teacher reference, or ``None`` when it has none.

        Raises:
            StorageError: Unknown study.
        """

    # --- trials: writing ---------------------------------------------------------------------------
    @abc.abstractmethod
    def start_trial(self, study: str, trial_number: int, candidate: Candidate, *,
                    optuna_trial_id: int | None = None) -> None:
        """Record a trial as RUNNING with its candidate.

        Raises:
            StorageError: Unknown study, or the trial number is already recorded.
        """

    @abc.abstractmethod
    def record_rung(self, study: str, trial_number: int, step: int, accuracy: float) -> None:
        """Store a RUNNING trial's dev accuracy at an accuracy rung, as the worker's report arrives.

        Stored at once, so that a trial the scheduler stops, or whose worker dies, keeps every rung it
        reached (:attr:`TrialView.rung_accuracies`). Recording a step again replaces its accuracy. The
        study's ``updated_utc`` moves on.
        :meth:`finish_trial` also stores the rungs in ``result.train.rung_accuracies``.

        Args:
            study: The study's name.
            trial_number: The trial's number in the study.
            step: The rung: training steps done (``fidelity.rungs``), positive.
            accuracy: Dev accuracy there, in [0, 1].

        Raises:
            StorageError: Unknown study or trial, or a trial that has finished.
            ConfigError: A step that is not positive, or an accuracy outside [0, 1].
        """

    @abc.abstractmethod
    def finish_trial(self, study: str, trial_number: int, result: TrialResult, *, cost: TrialCost,
                     fail_kind: FailKind = FailKind.CANDIDATE, optuna_trial_id: int | None = None) -> None:
        """Store a trial's result, its readings and cost, and refresh the persisted front, atomically.

        The state comes from ``result.status``. A ``FAIL`` result keeps what the trial did and spent
        before failing; ``fail_kind`` says why it failed (ignored for other results). A result with weights records
        a ``weights`` artefact. The rungs in ``result.train.rung_accuracies`` are stored as by
        :meth:`record_rung` (valid ones only). A trial never started is recorded in one go.

        Raises:
            StorageError: Unknown study; the trial is already finished; it was started with another
                candidate; or the inference energy was measured on a shared device (decision 5).
        """

    @abc.abstractmethod
    def fail_trial(self, study: str, trial_number: int, reason: str, *, candidate: Candidate | None = None,
                   cost: TrialCost | None = None, kind: FailKind = FailKind.CANDIDATE,
                   optuna_trial_id: int | None = None) -> None:
        """Mark a trial FAIL with a reason (creating it if it was never started).

        Args:
            study: The study's name.
            trial_number: The trial's number in the study (Optuna's trial number).
            reason: Why, for humans (``"CUDA out of memory"``, ``"NaN loss at step 40"``).
            candidate: The candidate, if the trial was never started.
            cost: What the trial cost before it failed.
            kind: Why, for the search. Only ``FailKind.CANDIDATE`` (the default) and ``FailKind.INFEASIBLE``
                spend budget and put the candidate's hash in :meth:`failed_candidate_hashes`; the other kinds
                do neither.
            optuna_trial_id: Optuna's id of the trial, recorded if given.
        """

    @abc.abstractmethod
    def prune_trial(self, study: str, trial_number: int, reason: str, *, cost: TrialCost | None = None,
                    wall_s: float | None = None, optuna_trial_id: int | None = None) -> None:
        """Mark a RUNNING trial PRUNED (stopped early by the scheduler) without a result.

        Args:
            study: The study's name.
            trial_number: The trial's number in the study.
            reason: Why it was stopped, kept in ``fail_reason``.
            cost: What it cost.
            wall_s: Shorthand for ``cost=TrialCost(wall_s=wall_s)`` when no joules are known.
            optuna_trial_id: Optuna's id of the trial, recorded if given.
        """

    @abc.abstractmethod
    def mark_unfinished_failed(self, study: str, reason: str) -> list[int]:
        """On resume: every RUNNING trial becomes FAIL (``FailKind.INTERRUPTED``) with ``reason``.

        Their joules are unknown.

        Returns:
            The trial numbers that were marked, ascending, so the driver can re-queue their budget.
        """

    @abc.abstractmethod
    def add_artefact(self, study: str, trial_number: int, kind: str, path: str | os.PathLike[str], *,
                     sha256: str | None = None, size_bytes: int | None = None) -> None:
        """Record a file a trial produced (``kind`` e.g. ``"weights"``, ``"onnx"``)."""

    @abc.abstractmethod
    def remove_artefacts(self, study: str, trial_number: int, kind: str) -> list[str]:
        """Forget a trial's artefacts of ``kind`` (retention); returns their paths for the caller to delete."""

    @abc.abstractmethod
    def add_remeasurement(self, study: str, trial_number: int, readings: Sequence[InferenceEnergy]) -> list[str]:
        """Store inference readings of a COMPLETE trial taken again on another machine (``nas remeasure``).

        A serving form the trial already has a reading of on that machine is skipped, so adding the same
        readings twice adds nothing. The fronts of the machines read are recomputed in the same
        transaction. Returns the serving forms added.

        Raises:
            StorageError: Unknown study, or the trial is missing or not COMPLETE.
        """

    @abc.abstractmethod
    def add_tie_reading(self, study: str, trial_number: int, reading: InferenceEnergy) -> None:
        """Make ``reading`` a COMPLETE trial's reading of record (a tie within noise settled, ``front.ties``).

        ``reading`` is the trial's primary form measured again on its own machine with more windows.

        The replaced reading stays in the readings table; the new one's joules add to the trial's measuring
        cost; the machine's front is recomputed in the same transaction.

        Raises:
            StorageError: Unknown study, the trial is missing or not COMPLETE, or the reading is of another
                machine or serving form.
        """

    @abc.abstractmethod
    def refine_trial(self, study: str, trial_number: int, result: TrialResult, cost: TrialCost) -> list[str]:
        """Replace a COMPLETE trial's result with its candidate trained further, adding what that cost.

        A supernet study's front is fine-tuned so before the search ends. The first result's readings stay,
        the new ones are added with origin ``final``, the new weights replace the old (whose paths are
        returned for the caller to delete), and the fronts are recomputed in the same transaction.

        Raises:
            StorageError: Unknown study; the trial is missing or not COMPLETE; the result is not COMPLETE,
                is of another candidate, or was measured on a shared device.
        """

    @abc.abstractmethod
    def measured_forms(self, study: str, trial_number: int, hardware: str) -> set[str]:
        """The serving forms a trial has an inference reading of on ``hardware`` (its own or re-measured)."""

    # --- trials: reading ---------------------------------------------------------------------------
    @abc.abstractmethod
    def trials(self, study: str, *, states: Iterable[str] | None = None) -> list[TrialView]:
        """A study's trials in number order, optionally only those in ``states``."""

    @abc.abstractmethod
    def trial(self, study: str, number: int) -> TrialView:
        """One trial.

        Raises:
            StorageError: Unknown study or trial number.
        """

    @abc.abstractmethod
    def failed_candidate_hashes(self, study: str) -> set[str]:
        """Hashes of candidates whose failure blocks them (``CANDIDATE``, ``INFEASIBLE``): never resample."""

    @abc.abstractmethod
    def complete_candidate_hashes(self, study: str) -> dict[str, int]:
        """``candidate hash -> trial number`` of the study's COMPLETE trials (never evaluate them again)."""

    @abc.abstractmethod
    def artefacts(self, study: str, trial_number: int | None = None) -> list[ArtefactView]:
        """Files recorded for a study (or one of its trials), oldest first."""

    @abc.abstractmethod
    def readings(self, study: str, trial_number: int) -> list[ReadingView]:
        """The energy readings of one trial."""

    # --- fronts ------------------------------------------------------------------------------------
    @abc.abstractmethod
    def front(self, study: str, *, where: str | None = None, hardware: str | None = None,
              include_trivial: bool = False) -> list[TrialView]:
        """The Pareto-optimal COMPLETE trials, recomputed from the stored trials.

        Fronts are computed per hardware fingerprint, among the trials that satisfy the study's front
        rule and ``where`` (the filter applies *before* the front is computed). Under the study's
        ``front.require_above_majority`` (the default) trials whose dev accuracy is not above their dev
        majority-class rate take no part (see :meth:`trivial_trials`).

        Args:
            study: The study's name.
            where: A filter over :data:`storage.FILTER_NAMES`, e.g. ``"weight_bits <= 8"`` (see
                :mod:`nas.where`).
            hardware: Only this hardware fingerprint.
            include_trivial: Let trials at or below the majority-class rate take part anyway.

        Returns:
            Trials ordered by hardware fingerprint, then first objective (best first).

        Raises:
            ConfigError: A bad ``where`` expression.
        """

    @abc.abstractmethod
    def trivial_trials(self, study: str, *, where: str | None = None,
                       hardware: str | None = None) -> list[TrialView]:
        """The COMPLETE trials that :meth:`front` keeps out as trivial.

        Those within the study's rule and ``where`` whose dev accuracy is at or below the dev majority-class
        rate, under ``front.require_above_majority``. Empty when the study turns that rule off. In
        trial-number order.
        """

    @abc.abstractmethod
    def persisted_front(self, study: str, *, hardware: str | None = None) -> list[FrontEntry]:
        """The front as stored in ``nas_pareto_front``, ordered by hardware fingerprint and position."""

    @abc.abstractmethod
    def rebuild_front(self, study: str) -> None:
        """Recompute the persisted fronts of a study from all its COMPLETE trials (a repair tool)."""

    @abc.abstractmethod
    def remeasured_trials(self, study: str) -> list[TrialView]:
        """Every COMPLETE trial as seen on each other machine ``nas remeasure`` measured it on.

        Each view's readings, flat values, meter and fingerprint are that machine's (``remeasured`` is
        True); in trial-number order. Empty for a study never re-measured.
        """

    @abc.abstractmethod
    def hardware_fingerprints(self, study: str) -> list[str]:
        """The hardware fingerprints of a study's COMPLETE trials, sorted."""

    # --- lifecycle ---------------------------------------------------------------------------------
    @abc.abstractmethod
    def close(self) -> None:
        """Release the storage's connections."""
