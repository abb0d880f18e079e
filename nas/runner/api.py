"""Python API of the search service: ``nas.search(spec)`` and ``nas.pareto(study, ...)``."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from nas._optional import try_import
from nas.config import validate
from nas.errors import ConfigError, SearchError
from nas.reference import TeacherRatios, TeacherReference
from nas.runner.checks import check_constraints, check_search_inputs
from nas.runner.progress import SearchProgress
from nas.runner.tracking import check_tracking
from nas.spec import StudySpec, default_spec, load_spec
from nas.supernet_record import SupernetRecord
from storage import NO_HARDWARE, Store, TrialView

if TYPE_CHECKING:
    from nas.runner.supernet_final import Refined
    from nas.runner.ties import TiesReport

def _acc(v: float | None) -> str:
    return f"{v:.3f}" if v is not None else "-"


__all__ = ["SearchSummary", "Front", "search", "pareto", "open_store", "resolve_spec", "resolve_db", "DEFAULT_DB",
           "check_constraints"]


@dataclass(frozen=True)
class Front:
    """A Pareto front read from the database: trial views plus the objectives it is over.

    ``kept_out`` are the complete trials (matching the same filters) that the study's
    ``front.require_above_majority`` rule kept off the front: dev accuracy at or below the dev
    majority-class rate. Empty when the rule is off or ``include_trivial`` was asked for.

    ``teacher`` is the study's measured teacher (``None`` without one) and ``ratios`` each front
    member's dev-accuracy and J/sample ratios to it, by trial number (empty without a teacher).
    """

    study: str
    objectives: list[tuple[str, str]]
    trials: list[TrialView]
    by_hardware: dict[str, list[TrialView]] = field(default_factory=dict)
    kept_out: list[TrialView] = field(default_factory=list)
    teacher: TeacherReference | None = None
    ratios: Mapping[int, TeacherRatios] = field(default_factory=dict)


@dataclass(frozen=True)
class SearchSummary:
    """What a finished search returns: its front, trial counts by end, energy spent and why it stopped."""

    study: str
    db: str
    objectives: list[tuple[str, str]]
    front: list[TrialView]
    n_complete: int
    n_failed: int
    n_pruned: int
    total_energy_j: float | None
    energy_meters: tuple[str, ...]
    energy_is_estimate: bool
    co2eq_g: float | None
    wall_s: float
    stopped_reason: str
    n_trials_unmetered: int = 0
    teacher: TeacherReference | None = None
    ties: TiesReport | None = None
    refined: tuple[Refined, ...] = ()
    supernet: SupernetRecord | None = None

    def _supernet_lines(self) -> str:
        """What the supernet cost, and the front's fine-tuning, for :meth:`describe` (empty without one)."""
        if self.supernet is None:
            return ""
        sn, tr = self.supernet, self.supernet.train
        est = " (ESTIMATE)" if tr.is_estimate else ""
        joules = f"{tr.energy_j:.1f} J{est}" if tr.energy_j is not None else "not metered"
        lines = [f"supernet: {sn.steps_done}/{sn.steps_total} steps, {joules} (meter {tr.meter}), in the search cost"
                 + (f"; resumed from step {sn.resumed_from}" if sn.resumed_from else "")]
        if self.refined:
            parts = [f"#{r.number} {_acc(r.accuracy_before)} -> {_acc(r.accuracy_after)}" if r.failed is None
                     else f"#{r.number} failed ({r.failed})" for r in self.refined]
            lines.append("front fine-tuned from the supernet (dev accuracy): " + ", ".join(parts))
        return "\n".join(lines) + "\n"

    def describe(self) -> str:
        """The summary as text for the terminal, with the commands that query the study."""
        label = " (ESTIMATE)" if self.energy_is_estimate else ""
        j = f"{self.total_energy_j:.1f} J{label}, meter {', '.join(self.energy_meters) or 'none'}" \
            if self.total_energy_j is not None else "not metered"
        if self.n_trials_unmetered and self.total_energy_j is not None:
            j = f">= {j} ({self.n_trials_unmetered} trial(s) unmetered)"
        return (f"study {self.study!r} in {self.db}: {self.n_complete} complete, {self.n_pruned} pruned, "
                f"{self.n_failed} failed; front of {len(self.front)}; search cost {j}; "
                f"{self.wall_s:.0f} s wall; {self.stopped_reason}.\n"
                + self._supernet_lines()
                + (f"{self.ties.describe()}\n" if self.ties is not None and self.ties.breaks else "") +
                f"Query it: nas pareto {self.study} --db {self.db}   |   nas show {self.study} TRIAL --db {self.db}")


#: The database when neither ``db`` (``--db``, ``NAS_DB``) nor the spec's ``storage.url`` names one.
DEFAULT_DB = "nas.db"


def open_store(db: str, *, create: bool = True, read_only: bool = False) -> Store:
    """Open the study database.

    Args:
        db: Database URL or SQLite path.
        create: Create the database (and its tables) if it does not exist. Read commands pass False: a
            missing SQLite file is then an error naming it, and nothing is created.
        read_only: Never write (read commands): SQLite opens with ``mode=ro``, or ``immutable=1`` in a
            read-only folder, so a database on a read-only share can still be read.
    """
    return Store.open(db, create=create, read_only=True if read_only else None)


def resolve_spec(spec: StudySpec | str | Path | None) -> StudySpec:
    """The spec given, loaded from its file when it is a path, or the default spec when it is None."""
    if spec is None:
        return default_spec()
    if isinstance(spec, StudySpec):
        return spec
    return load_spec(spec)


def resolve_db(db: str | None, spec: StudySpec | None) -> str:
    """Which database a search uses.

    ``db`` (``--db`` or ``NAS_DB``), else the spec's ``storage.url``, else ``nas.db``.
    """
    if db:
        return db
    if spec is not None and spec.storage.url:
        return spec.storage.url
    return DEFAULT_DB


def stored_spec(store: Store, name: str) -> StudySpec:
    """The spec a study was started with, read from the database.

    Raises:
        ConfigError: It no longer validates (e.g. written by another version), naming the field.
    """
    text = store.get_study(name).spec_json
    try:
        data = json.loads(text)
    except ValueError as e:
        raise ConfigError(f"the stored spec of study {name!r} is not JSON", field="spec_json",
                          fix="start a new study (a new --name)") from e
    try:
        return validate(StudySpec, data, source=f"the stored spec of study {name!r}")
    except (ConfigError, ValidationError) as e:
        raise ConfigError(f"{e}", fix="this build cannot continue it; start a new study from a corrected spec "
                          "(a new --name)") from e


def _new_spec(spec: StudySpec | str | Path | None, trials: int | None, name: str | None) -> StudySpec:
    the_spec = resolve_spec(spec)
    overrides: dict[str, Any] = {}
    if trials is not None:
        overrides["budget.trials"] = trials
    if name is not None:
        overrides["name"] = name
    return the_spec.with_overrides(**overrides) if overrides else the_spec


def _start_or_continue(store: Store, the_spec: StudySpec, db_url: str, trials: int | None) -> tuple[StudySpec, bool]:
    """Create the study (only now, after every check passed), or continue it when the same spec exists."""
    existing = {s.name for s in store.list_studies()}
    if the_spec.name not in existing:
        store.create_study(the_spec.name, the_spec.model_dump_json(),
                           [(o.metric, o.resolved_direction) for o in the_spec.objectives],
                           budget_trials=the_spec.budget.trials, budget_energy_j=the_spec.budget.joules)
        return the_spec, False
    stored = stored_spec(store, the_spec.name)
    if stored.model_dump() != the_spec.with_overrides(**{"budget.trials": stored.budget.trials}).model_dump():
        raise SearchError(
            f"study {the_spec.name!r} already exists in {db_url} with a different spec",
            field="name", fix=f"resume it with `nas search --resume {the_spec.name}`, or pick a new --name",
        )
    # same spec: continue it (e.g. the default study run twice)
    return (stored if trials is None else stored.with_overrides(**{"budget.trials": trials})), True


def search(
    spec: StudySpec | str | Path | None = None,
    *,
    resume: str | None = None,
    db: str | None = None,
    ray_address: str | None = None,
    trials: int | None = None,
    name: str | None = None,
    progress: bool = False,
) -> SearchSummary:
    """Run a search (or resume one) and return its summary with the Pareto front.

    Every check that can fail (spec, constraints, space and its values, teacher, task, Ray address,
    database URL) runs before anything is written: a study row exists only for a search that started.

    Args:
        spec: a :class:`StudySpec`, a YAML path, or None for the built-in default study.
        resume: name of a stored study to continue; its spec is read from the database.
        db: database URL or SQLite path. Precedence: ``db`` (the CLI's ``--db`` or ``NAS_DB``), then the
            spec's ``storage.url``, then ``nas.db``.
        ray_address: join an existing Ray cluster instead of starting local Ray.
        trials: override the trial budget.
        name: override the study name.
        progress: show a rich progress display (CLI).

    Raises:
        ConfigError: A bad spec, constraint, space value, teacher, task or Ray address.
        StorageError: The database cannot be opened.
        SearchError: The study exists with another spec, or the search cannot start.
        MissingExtraError: Ray (the ``ray`` extra) is not installed, or W&B (``wandb``) when the spec's
            ``tracking.wandb`` asks for it.
    """
    with try_import("ray", needed_by="`nas search`") as ray_extra:
        from nas.runner.driver import run_study  # the driver runs on Ray Tune
    ray_extra.check()
    if resume:
        if spec is not None or name is not None:
            raise ConfigError("a resumed study keeps its stored spec and name, so SPEC and --name cannot be "
                              "given with it", field="--resume", value=resume,
                              fix="drop SPEC and --name (use --db to name the database)")
        db_url = resolve_db(db, None)
        store = open_store(db_url, create=False)
        the_spec = stored_spec(store, resume)
        if trials is not None:
            the_spec = the_spec.with_overrides(**{"budget.trials": trials})
        check_search_inputs(the_spec, db=db_url, ray_address=ray_address)
        check_tracking(the_spec)
    else:
        the_spec = _new_spec(spec, trials, name)
        db_url = resolve_db(db, the_spec)
        check_search_inputs(the_spec, db=db_url, ray_address=ray_address)
        check_tracking(the_spec)
        store = open_store(db_url, create=True)
        the_spec, continuing = _start_or_continue(store, the_spec, db_url, trials)
        resume = the_spec.name if continuing else None
    if trials is not None or resume:
        store.update_study_spec(the_spec.name, the_spec.model_dump_json(), budget_trials=the_spec.budget.trials)

    display = SearchProgress(store, the_spec) if progress else None
    try:
        outcome = run_study(the_spec, store, resume=bool(resume), ray_address=ray_address,
                            on_change=display.refresh if display else None,
                            on_ready=display.start if display else None, show_teacher_progress=progress)
    finally:
        if display:
            display.stop()
    return summarize(store, the_spec, db_url, outcome.stopped_reason, outcome.wall_s, ties=outcome.ties,
                     refined=outcome.refined)


def summarize(store: Store, spec: StudySpec, db: str, stopped_reason: str, wall_s: float, *,
              ties: TiesReport | None = None, refined: tuple[Refined, ...] = ()) -> SearchSummary:
    """The summary of a study after a search: counts, search cost and its Pareto front."""
    info = store.get_study(spec.name)
    views = store.trials(spec.name)
    front = store.front(spec.name)  # the study's constraints apply, as on every front
    meters = tuple(sorted({v.meter for v in views if v.meter}))
    return SearchSummary(
        study=spec.name, db=db, objectives=[(o.metric, o.resolved_direction) for o in spec.objectives],
        front=front,
        n_complete=info.n_trials_complete,
        n_failed=info.n_trials_failed,
        n_pruned=info.n_trials_pruned,
        total_energy_j=info.total_energy_j, energy_meters=meters,
        energy_is_estimate=info.cost_includes_estimate or any(bool(v.is_estimate) for v in views),
        co2eq_g=info.co2eq_g, wall_s=wall_s, stopped_reason=stopped_reason,
        n_trials_unmetered=info.n_trials_unmetered, teacher=store.teacher_reference(spec.name), ties=ties,
        refined=refined, supernet=store.supernet(spec.name),
    )


def pareto(study: str, *, db: str = DEFAULT_DB, where: str | None = None, hardware: str | None = None,
           include_trivial: bool = False) -> Front:
    """The Pareto front of a stored study, derived from its complete trials, per hardware fingerprint.

    The study's ``constraints`` always apply (in :meth:`storage.Store.front`, as on every front);
    ``where`` narrows further (both are parsed, never evaluated as Python). Under the study's
    ``front.require_above_majority`` (default) trials whose dev accuracy is not above the dev
    majority-class rate are kept out (listed in ``Front.kept_out``); ``include_trivial=True`` lets them
    take part. A study with a measured teacher gives it in ``Front.teacher`` and each member's ratios
    to it in ``Front.ratios``. The database is opened read-only.
    """
    store = open_store(db, create=False, read_only=True)
    info = store.get_study(study)
    trials = store.front(study, where=where, hardware=hardware, include_trivial=include_trivial)
    kept_out = [] if include_trivial else store.trivial_trials(study, where=where, hardware=hardware)
    by_hw: dict[str, list[TrialView]] = {}
    for t in trials:
        by_hw.setdefault(t.hardware_fingerprint or NO_HARDWARE, []).append(t)
    teacher = store.teacher_reference(study)
    ratios = {t.number: t.ratios_to(teacher) for t in trials} if teacher is not None else {}
    return Front(study=study, objectives=list(info.objectives), trials=trials, by_hardware=by_hw,
                 kept_out=kept_out, teacher=teacher, ratios=ratios)
