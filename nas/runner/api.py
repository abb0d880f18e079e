"""Python API of the search service: ``nas.search(spec)`` and ``nas.pareto(study, ...)``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nas.errors import ConfigError, SearchError
from nas.spec import StudySpec, default_spec, load_spec

__all__ = ["SearchSummary", "Front", "search", "pareto", "open_store", "resolve_spec"]


@dataclass(frozen=True)
class Front:
    """A Pareto front read from the database: trial views plus the objectives it is over.

    ``kept_out`` are the complete trials (matching the same filters) that the study's
    ``front.require_above_majority`` rule kept off the front: dev accuracy at or below the dev
    majority-class rate. Empty when the rule is off or ``include_trivial`` was asked for.
    """

    study: str
    objectives: list[tuple[str, str]]
    trials: list[Any]
    by_hardware: dict[str, list[Any]] = field(default_factory=dict)
    kept_out: list[Any] = field(default_factory=list)


@dataclass(frozen=True)
class SearchSummary:
    study: str
    db: str
    objectives: list[tuple[str, str]]
    front: list[Any]
    n_complete: int
    n_failed: int
    n_pruned: int
    total_energy_j: float | None
    energy_meters: tuple[str, ...]
    energy_is_estimate: bool
    co2eq_g: float | None
    wall_s: float
    stopped_reason: str

    def describe(self) -> str:
        label = " (ESTIMATE)" if self.energy_is_estimate else ""
        j = f"{self.total_energy_j:.1f} J{label}, meter {', '.join(self.energy_meters) or 'none'}" \
            if self.total_energy_j is not None else "not metered"
        return (f"study {self.study!r} in {self.db}: {self.n_complete} complete, {self.n_pruned} pruned, "
                f"{self.n_failed} failed; front of {len(self.front)}; search cost {j}; "
                f"{self.wall_s:.0f} s wall; {self.stopped_reason}.\n"
                f"Query it: nas pareto {self.study} --db {self.db}   |   nas show {self.study} TRIAL --db {self.db}")


def open_store(db: str, *, create: bool = True) -> Any:
    """Open the study database; a read command on a SQLite file that does not exist says so."""
    from storage import Store

    if not create and "://" not in db and not Path(db).exists():
        from nas.errors import StorageError

        raise StorageError(f"no database at {db}", field="--db",
                           fix="run `nas search` first, or point --db (or NAS_DB) at an existing database")

    return Store.open(db, create=create)


def resolve_spec(spec: StudySpec | str | Path | None) -> StudySpec:
    if spec is None:
        return default_spec()
    if isinstance(spec, StudySpec):
        return spec
    return load_spec(spec)


def search(
    spec: StudySpec | str | Path | None = None,
    *,
    resume: str | None = None,
    db: str | None = None,
    ray_address: str | None = None,
    trials: int | None = None,
    name: str | None = None,
    executor: str = "auto",
    progress: bool = False,
) -> SearchSummary:
    """Run a search (or resume one) and return its summary with the Pareto front.

    Args:
        spec: a :class:`StudySpec`, a YAML path, or None for the built-in default study.
        resume: name of a stored study to continue; its spec is read from the database.
        db: database URL or SQLite path; overrides ``spec.storage.url``.
        ray_address: join an existing Ray cluster instead of starting local Ray.
        trials: override the trial budget.
        name: override the study name.
        progress: show a rich progress display (CLI).
    """
    from nas.runner.driver import run_study

    if executor not in ("auto", "ray"):
        raise ConfigError("only the Ray executor exists", field="--executor", value=executor,
                          fix="use --executor ray (the default)")
    db_url = db
    if resume:
        store = open_store(db_url or "nas.db", create=False)
        info = store.get_study(resume)
        the_spec = StudySpec.model_validate_json(info.spec_json)
        if trials is not None:
            the_spec = the_spec.with_overrides(**{"budget.trials": trials})
    else:
        the_spec = resolve_spec(spec)
        overrides: dict[str, Any] = {}
        if trials is not None:
            overrides["budget.trials"] = trials
        if name is not None:
            overrides["name"] = name
        if overrides:
            the_spec = the_spec.with_overrides(**overrides)
        db_url = db_url or the_spec.storage.url
        store = open_store(db_url, create=True)
        existing = {s.name for s in store.list_studies()}
        if the_spec.name in existing:
            stored = StudySpec.model_validate_json(store.get_study(the_spec.name).spec_json)
            if stored.model_dump() != the_spec.with_overrides(**{"budget.trials": stored.budget.trials}).model_dump():
                raise SearchError(
                    f"study {the_spec.name!r} already exists in {db_url} with a different spec",
                    field="name", fix=f"resume it with `nas search --resume {the_spec.name}`, or pick a new --name",
                )
            resume = the_spec.name  # same spec: continue it (e.g. the default study run twice)
            the_spec = stored if trials is None else stored.with_overrides(**{"budget.trials": trials})
        else:
            store.create_study(the_spec.name, the_spec.model_dump_json(),
                               [(o.metric, o.resolved_direction) for o in the_spec.objectives],
                               budget_trials=the_spec.budget.trials, budget_energy_j=the_spec.budget.joules)
    if trials is not None or resume:
        store.update_study_spec(the_spec.name, the_spec.model_dump_json(), budget_trials=the_spec.budget.trials)

    check_constraints(the_spec)
    display = None
    if progress:
        from nas.runner.progress import SearchProgress

        display = SearchProgress(store, the_spec)
    try:
        if display:
            display.start()
        outcome = run_study(the_spec, store, resume=bool(resume), ray_address=ray_address,
                            on_change=display.refresh if display else None)
    finally:
        if display:
            display.stop()
    return summarize(store, the_spec, db_url or "nas.db", outcome.stopped_reason, outcome.wall_s)


def combine_where(constraints: list[str], where: str | None) -> str | None:
    """The study's constraints and a user filter, as one filter expression (each parenthesised)."""
    parts = [c for c in [*constraints, where or ""] if c.strip()]
    return " and ".join(f"({p})" for p in parts) or None


def check_constraints(spec: StudySpec) -> None:
    """Parse every constraint before a search starts, so a typo fails at once, naming the constraint."""
    from nas.where import compile_where
    from storage import FILTER_NAMES

    for i, c in enumerate(spec.constraints):
        try:
            compile_where(c, FILTER_NAMES)
        except ConfigError as e:
            raise ConfigError(f"{e}", field=f"constraints[{i}]", fix="see `nas pareto --help` for the syntax") from e


def summarize(store: Any, spec: StudySpec, db: str, stopped_reason: str, wall_s: float) -> SearchSummary:
    info = store.get_study(spec.name)
    views = store.trials(spec.name)
    front = store.front(spec.name, where=combine_where(spec.constraints, None))
    meters = tuple(sorted({v.meter for v in views if getattr(v, "meter", None)}))
    return SearchSummary(
        study=spec.name, db=db, objectives=[(o.metric, o.resolved_direction) for o in spec.objectives],
        front=front,
        n_complete=sum(v.state == "COMPLETE" for v in views),
        n_failed=sum(v.state == "FAIL" for v in views),
        n_pruned=sum(v.state == "PRUNED" for v in views),
        total_energy_j=info.total_energy_j, energy_meters=meters,
        energy_is_estimate=any(getattr(v, "is_estimate", False) for v in views),
        co2eq_g=info.co2eq_g, wall_s=wall_s, stopped_reason=stopped_reason,
    )


def pareto(study: str, *, db: str = "nas.db", where: str | None = None, hardware: str | None = None,
           include_trivial: bool = False) -> Front:
    """The Pareto front of a stored study, derived from its complete trials, per hardware fingerprint.

    The study's ``constraints`` always apply; ``where`` narrows further (both are parsed, never
    evaluated as Python). Under the study's ``front.require_above_majority`` (default) trials whose dev
    accuracy is not above the dev majority-class rate are kept out (listed in ``Front.kept_out``);
    ``include_trivial=True`` lets them take part."""
    store = open_store(db, create=False)
    info = store.get_study(study)
    try:
        constraints = StudySpec.model_validate_json(info.spec_json).constraints
    except ValueError:  # a study created outside `nas search` may hold no spec
        constraints = []
    combined = combine_where(constraints, where)
    trials = store.front(study, where=combined, hardware=hardware, include_trivial=include_trivial)
    kept_out = [] if include_trivial else store.trivial_trials(study, where=combined, hardware=hardware)
    by_hw: dict[str, list[Any]] = {}
    for t in trials:
        by_hw.setdefault(t.hardware_fingerprint or "unknown", []).append(t)
    return Front(study=study, objectives=list(info.objectives), trials=trials, by_hardware=by_hw,
                 kept_out=kept_out)
