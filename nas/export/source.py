"""Where an export starts: the stored trial, its study spec, its saved weights and its task.

Everything here reads the database through :class:`storage.Store` (records, never rows) and fails with
a one-line :class:`~nas.errors.NASError` that names the study, the trial and the fix.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evaluators.tasks import load_task
from evaluators.weights import load_trial_model
from nas.config import Candidate
from nas.errors import ConfigError, DataError, ExportError, StorageError
from nas.reference import TeacherReference
from nas.spec import StudySpec
from storage import Store, normalize_url

if TYPE_CHECKING:
    from evaluators.tasks import TaskData
    from evaluators.tokenize import TextTokenizer
    from nas.models import EncoderClassifier
    from storage import ArtefactView, ReadingView, Store, StudyInfo, TrialView

__all__ = ["TrialSource", "open_trial", "SavedWeights", "load_weights", "load_task_for", "db_for_command"]

log = logging.getLogger(__name__)


def db_for_command(db: str) -> str:
    """``db`` as it should appear in a reproduce command: absolute for SQLite files, passwords hidden."""
    if "://" not in db:
        return str(Path(db).expanduser().resolve())

    return normalize_url(db).render_as_string(hide_password=True)


@dataclass(frozen=True)
class TrialSource:
    """A COMPLETE stored trial and everything the export reads about it.

    Attributes:
        db: The database as given.
        study: The study record (spec and search-cost totals).
        spec: The study spec, parsed.
        view: The trial record; ``view.result`` holds the search-time numbers.
        readings: The trial's stored energy readings (meter, provenance, CV).
        weights: The folder of the newest ``weights`` artefact, or ``None`` when the trial has none.
        weights_problem: Why no usable weights folder was found (for the error message).
        teacher: The study's measured teacher, the card's reference point (``None`` without one).
    """

    db: str
    study: StudyInfo
    spec: StudySpec
    view: TrialView
    readings: tuple[ReadingView, ...]
    weights: Path | None
    weights_problem: str | None
    teacher: TeacherReference | None = None

    @property
    def candidate(self) -> Candidate:
        """The trial's candidate (an opened trial always has one)."""
        assert self.view.candidate is not None  # open_trial only returns trials with a candidate
        return self.view.candidate


def _open_store(db: str) -> Store:
    if "://" not in db and not Path(db).expanduser().is_file():
        raise StorageError(f"database {db!r} not found", field="--db",
                           fix="pass the database of the search with --db (or set NAS_DB)")
    return Store.open(db, create=False, read_only=True)  # an export only reads the database


def _weights_folder(artefacts: list[ArtefactView], db: str, study: str) -> tuple[Path | None, str | None]:
    """The newest recorded weights folder that is on disk.

    Tried for each: the recorded path; for a SQLite database, that path relative to the database's folder,
    and the default layout beside it (``nas_artefacts/STUDY/<folder name>``), so a database copied to another
    machine together with its ``nas_artefacts`` folder still finds its weights.
    """
    weights = [a for a in artefacts if a.kind == "weights"]
    if not weights:
        return None, "no 'weights' artefact is recorded for it (the study's storage.retention may not have kept it)"
    tried = []
    for art in reversed(weights):  # newest first
        p = Path(art.path).expanduser()
        candidates = [p]
        if "://" not in db:
            here = Path(db).expanduser().resolve().parent
            trial_folder = p.parent.name if p.suffix else p.name  # recorded as the folder or a file in it
            candidates += ([] if p.is_absolute() else [here / p]) + [here / "nas_artefacts" / study / trial_folder]
        for c in candidates:
            folder = c.parent if c.is_file() else c
            if (folder / "model.safetensors").is_file():
                return folder, None
        tried.append(str(p))
    return None, f"its recorded weights are gone from disk ({', '.join(tried)})"


def open_trial(study: str, trial_number: int, db: str) -> TrialSource:
    """Look up a trial for export.

    Raises:
        StorageError: The database, the study or the trial does not exist.
        ExportError: The trial is not COMPLETE, or its study spec cannot be read.
    """
    store = _open_store(db)
    try:
        info = store.get_study(study)
        view = store.trial(study, trial_number)
        if view.state != "COMPLETE" or view.result is None or view.candidate is None:
            why = f": {view.fail_reason}" if view.fail_reason else ""
            raise ExportError(f"trial {trial_number} of study {study!r} is {view.state}{why}; only COMPLETE "
                              "trials can be exported", field="TRIAL", value=trial_number,
                              fix=f"pick a COMPLETE trial, e.g. from `nas pareto {study}`")
        readings = tuple(store.readings(study, trial_number))
        folder, problem = _weights_folder(store.artefacts(study, trial_number), db, study)
        teacher = store.teacher_reference(study)
    finally:
        store.close()
    try:
        spec = StudySpec.model_validate_json(info.spec_json)
    except ValueError as e:
        raise ExportError(f"the stored spec of study {study!r} cannot be read by this build: {e}",
                          field="spec_json", fix="export with the energy-nas version that ran the search") from e
    return TrialSource(db=db, study=info, spec=spec, view=view, readings=readings, weights=folder,
                       weights_problem=problem, teacher=teacher)


@dataclass(frozen=True)
class SavedWeights:
    """A trial rebuilt from its weights folder (:func:`evaluators.weights.save_trial_weights` layout)."""

    model: EncoderClassifier
    tokenizer: TextTokenizer
    info: dict[str, Any]


def load_weights(folder: Path, candidate: Candidate) -> SavedWeights:
    """Rebuild the trained model from ``folder`` and check that it is the trial's candidate.

    Raises:
        ExportError: The folder is incomplete, belongs to another candidate, or does not load.
    """
    for name in ("candidate.json", "labels.json", "tokenizer"):
        if not (folder / name).exists():
            raise ExportError(f"the weights folder {folder} has no {name}", field="weights", value=str(folder),
                              fix="re-run with --retrain STEPS to rebuild the weights by training")
    saved = Candidate.from_json((folder / "candidate.json").read_text())
    if saved != candidate:
        raise ExportError(f"the weights in {folder} belong to another candidate than the stored trial's",
                          field="weights", value=str(folder), fix="re-run with --retrain STEPS")
    try:
        model, _, tokenizer, info = load_trial_model(folder)
    except (ConfigError, RuntimeError, KeyError, OSError, json.JSONDecodeError) as e:
        raise ExportError(f"the weights in {folder} do not load: {type(e).__name__}: {e}", field="weights",
                          value=str(folder), fix="re-run with --retrain STEPS") from e
    return SavedWeights(model=model, tokenizer=tokenizer, info=info)


def _data_stamp(task: str) -> tuple[int, int]:
    """A file task's modification time and size, so an edited data file is never served from the cache."""
    p = Path(task)
    if task.startswith("builtin:") or not p.exists():
        return (0, 0)
    files = [p] if p.is_file() else sorted(f for f in p.iterdir() if f.is_file())
    return (max(f.stat().st_mtime_ns for f in files), sum(f.stat().st_size for f in files)) if files else (0, 0)


@functools.lru_cache(maxsize=2)
def _cached_task(spec: str, seed: int, max_len: int, stamp: tuple[int, int]) -> TaskData:
    # Generating and tokenizing a task takes seconds; a server exporting several trials of one study
    # (or a test module) loads it once.

    return load_task(spec, seed=seed, max_len=max_len)


def load_task_for(spec: StudySpec, candidate: Candidate, tokenizer: TextTokenizer, max_len: int) -> TaskData:
    """The study's task as the trial saw it: same seed and length, encoded with the trial's tokenizer.

    Raises:
        ExportError: The task's data can no longer be read.
    """
    try:
        task = _cached_task(spec.task, spec.train.seed, candidate.max_len, _data_stamp(spec.task))
    except DataError as e:
        raise ExportError(f"the study's task {spec.task!r} cannot be loaded for the parity check: {e}",
                          field="task", value=spec.task, fix="restore the task's data files at that path") from e
    if task.tokenizer.fingerprint != tokenizer.fingerprint or task.max_len != max_len:
        task = task.with_tokenizer(tokenizer, max_len=max_len)  # e.g. a teacher's tokenizer
    return task
