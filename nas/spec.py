"""The study spec: one YAML file, validated by pydantic into a frozen :class:`StudySpec` (layer L0).

Unknown keys and bad values are :class:`nas.errors.ConfigError` naming the key. See
``examples/study.yaml`` for every field with its default.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from nas.candidate_parts import Frozen
from nas.config import MeasureConfig, TrainConfig, load_yaml, validate
from nas.errors import ConfigError
from nas.spec_fidelity import PRESET_RUNGS, FidelitySpec
from nas.vocab import OBJECTIVE, SAMPLER

__all__ = [
    "OBJECTIVE_METRICS",
    "Objective",
    "SpaceRef",
    "SamplerSpec",
    "EVOLUTION_POPULATION",
    "EVOLUTION_SAMPLE_SIZE",
    "BudgetSpec",
    "FidelitySpec",
    "TiesSpec",
    "PRESET_RUNGS",
    "ResourcesSpec",
    "StorageSpec",
    "FrontSpec",
    "FineTuneSpec",
    "TeacherSpec",
    "WandbSpec",
    "TrackingSpec",
    "StudySpec",
    "default_spec",
    "load_spec",
    "study_name_problem",
]

#: Metrics a study may optimise, with their default direction (from :data:`nas.vocab.OBJECTIVE`).
OBJECTIVE_METRICS: dict[str, str] = {
    name: OBJECTIVE[name].direction for name in OBJECTIVE.where(lambda t: t.objective)
}

SamplerKind = Annotated[str, SAMPLER]


#: 1-100 letters, digits, ``_``, ``.`` or ``-`` (ASCII only).
_STUDY_NAME_CHARS = re.compile(r"[A-Za-z0-9_.-]{1,100}")


def study_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a study, or ``None`` when it can.

    The one rule for study names (the spec, ``nas search --name`` and every HTTP route use it). A study
    name becomes a folder name (trial weights, exports, launched specs), so it is 1-100 of
    ``A-Z a-z 0-9 _ . -`` and does not start with a dot: ``.`` and ``..`` would leave the folder, and
    ``.hidden`` would hide it.
    """
    if not _STUDY_NAME_CHARS.fullmatch(name):
        return "a study name is 1-100 of A-Z a-z 0-9 _ . -; rename the study, e.g. 'my-study'"
    if name.startswith("."):
        return ("a study name may not start with a dot ('.', '..' and hidden names would misplace its "
                "artefact folder); rename the study, e.g. 'my-study'")
    return None


class Objective(Frozen):
    """One metric the search optimises; ``direction`` defaults to the metric's natural one."""

    metric: str = Field(json_schema_extra={"enum": list(OBJECTIVE_METRICS)})
    direction: Literal["maximize", "minimize"] | None = None

    @field_validator("metric")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in OBJECTIVE_METRICS:
            raise ValueError(f"unknown objective metric {v!r}; allowed: {sorted(OBJECTIVE_METRICS)}")
        return v

    @property
    def resolved_direction(self) -> str:
        """``direction``, or the metric's default from :data:`OBJECTIVE_METRICS`."""
        return self.direction or OBJECTIVE_METRICS[self.metric]


class SpaceRef(Frozen):
    """The search space: a preset's ranges with ``overrides`` laid on top."""

    preset: Literal["tiny", "base"] = "tiny"
    overrides: dict[str, Any] = Field(default_factory=dict)


#: ``sampler.population`` and ``sampler.sample_size`` of an ``evolution`` sampler that gives none. Real et al.
#: (2019) used 100 and 25 over thousands of models; a study here trains tens, and ``population`` random
#: trials come first, so a smaller population leaves most of a few-dozen-trial budget to evolution.
EVOLUTION_POPULATION = 10
EVOLUTION_SAMPLE_SIZE = 3


class SamplerSpec(Frozen):
    """The Optuna sampler, its seed and its random start-up trials.

    ``kind`` is one of :data:`nas.vocab.SAMPLER`: ``tpe``, ``nsga2``, ``gp`` (Optuna's Gaussian-process
    sampler: needs scipy, at most 4 objectives, and ``n_startup_trials`` below ``budget.trials``, checked
    before a search starts), ``evolution`` or ``random``. ``n_startup_trials`` is TPE's and the GP's number
    of random trials before their model is used, and NSGA-II's population size (at least 4); ``random``
    and ``evolution`` ignore it. ``population`` and ``sample_size`` are regularized evolution's (Real et
    al., 2019; :class:`nas.runner.evolution.EvolutionSampler`) and apply to ``kind: evolution`` only:
    the ``population`` most recently completed trials are the population (its first ``population``
    trials are random), and each child mutates one knob of the best of ``sample_size`` of them drawn at
    random (defaults :data:`EVOLUTION_POPULATION`, :data:`EVOLUTION_SAMPLE_SIZE`; ``population`` below
    ``budget.trials`` is checked before a search starts). The study's ``constraints`` reach every
    sampler (Optuna's ``Trial.set_constraint``), not only the front.
    """

    kind: SamplerKind = "tpe"
    seed: int = 0
    n_startup_trials: int = Field(default=6, ge=0)
    population: int | None = None
    sample_size: int | None = None

    @model_validator(mode="after")
    def _evolution(self) -> SamplerSpec:
        if self.kind != "evolution":
            for name in ("population", "sample_size"):
                if getattr(self, name) is not None:
                    hint = " (NSGA-II's population size is n_startup_trials)" if self.kind == "nsga2" else ""
                    raise ValueError(f"sampler.{name} only applies to kind 'evolution', not {self.kind!r}; "
                                     f"remove it{hint}")
            return self
        population, sample_size = self.resolved_population, self.resolved_sample_size
        if population < 2:
            raise ValueError(f"sampler.population={population} must be at least 2 (a tournament needs two "
                             f"members); use e.g. population: {EVOLUTION_POPULATION}")
        if not 2 <= sample_size <= population:
            default = " (the default)" if self.sample_size is None else ""
            raise ValueError(f"sampler.sample_size={sample_size}{default} must be from 2 to sampler.population "
                             f"({population}): a tournament compares 2 or more members of the population; use "
                             f"e.g. sample_size: {max(2, population // 4)}, or raise sampler.population")
        return self

    @property
    def resolved_population(self) -> int:
        """``population``, or :data:`EVOLUTION_POPULATION` when it is not given."""
        return EVOLUTION_POPULATION if self.population is None else self.population

    @property
    def resolved_sample_size(self) -> int:
        """``sample_size``, or :data:`EVOLUTION_SAMPLE_SIZE` when it is not given."""
        return EVOLUTION_SAMPLE_SIZE if self.sample_size is None else self.sample_size


class BudgetSpec(Frozen):
    """When the search stops: after ``trials`` trials, or once it has spent ``joules`` or ``wall_s``."""

    trials: int = Field(default=12, ge=1, le=100000)
    joules: float | None = Field(default=None, gt=0)
    wall_s: float | None = Field(default=None, gt=0)


class ResourcesSpec(Frozen):
    """What each trial gets (CPUs, GPUs, torch threads) and how many trials run at once."""

    cpus_per_trial: float = Field(default=1.0, gt=0)
    gpus_per_trial: float = Field(default=0.0, ge=0)
    max_concurrent: int = Field(default=2, ge=1)
    torch_threads: int = Field(default=1, ge=1)


class StorageSpec(Frozen):
    """The database, which trials keep their weights (``retention``) and where weights go."""

    url: str = "nas.db"
    retention: Literal["front", "all", "none"] = "front"
    artefacts_dir: str | None = None


class TiesSpec(Frozen):
    """How a search settles front members tied within the measurement noise before it ends (``front.ties``).

    Each round re-measures the tied members of the front, and the members that may dominate them, with
    ``windows_factor`` times the windows of their current reading; the new reading, with its narrower
    interval, becomes the trial's reading of record, and the front is recomputed. Rounds stop when no tie
    is left, after ``rounds``, or before the joules of the next re-measurement would take the settling past
    ``budget_fraction`` of what the search has spent so far. ``rounds: 0`` turns it off.
    """

    rounds: int = Field(default=1, ge=0, le=10)
    windows_factor: int = Field(default=4, ge=2, le=64)
    budget_fraction: float = Field(default=0.1, gt=0, le=1)


class FrontSpec(Frozen):
    """Which complete trials may stand on the Pareto front (the objectives say how they are ranked).

    ``require_above_majority``: keep a trial off the front unless its dev accuracy is strictly above
    the dev majority-class rate (always predicting the most frequent class): otherwise a chance-level
    model sits on the front just for being the cheapest. ``nas pareto --include-trivial`` shows them.

    ``noise``: ``aware`` (default) compares measured energy within its noise: a trial is kept off the front
    only when another is better beyond the noise of both readings, and each member is marked ``clear`` or
    ``tied`` (within noise) (:mod:`nas.noise`, docs/measurement.md); ``ignore`` uses plain dominance.

    ``ties``: how ties within noise are re-measured before a search ends (:class:`TiesSpec`; only with
    ``noise: aware``).
    """

    require_above_majority: bool = True
    noise: Literal["aware", "ignore"] = "aware"
    ties: TiesSpec = TiesSpec()


class FineTuneSpec(Frozen):
    """How a Hugging Face teacher is fine-tuned on the task (when its head does not fit, or when asked).

    The fine-tuned teacher is cached by content hash (model files, task, these settings, the study's
    seed), so a second study or ``nas teacher fit`` with the same inputs reuses it.
    """

    steps: int = Field(default=1000, ge=1)
    lr: float = Field(default=5e-5, gt=0, le=1.0)
    batch_size: int = Field(default=32, ge=1)
    max_examples: int | None = Field(default=None, ge=1, description="use only the first N training rows")
    warmup_fraction: float = Field(default=0.1, ge=0, le=0.5)
    group_by_length: bool = Field(default=True, description="batch rows of similar length together (faster "
                                  "on text of mixed lengths; see train.group_by_length)")


class TeacherSpec(Frozen):
    """The study's teacher: ``auto`` (self-trained and cached) or a local Hugging Face folder.

    A plain string in the YAML (``teacher: DIR``) is ``{path: DIR}``. A folder whose classification head
    does not fit the task's labels is fine-tuned on the task first (``fine_tune``, or its defaults); a
    folder with ``fine_tune`` given is fine-tuned even when its head fits.
    """

    path: str = Field(min_length=1, description="a local Hugging Face folder, or auto")
    fine_tune: FineTuneSpec | None = None

    @field_validator("path")
    @classmethod
    def _named(cls, v: str) -> str:
        v = v.strip()
        if v.lower() in ("", "none"):
            raise ValueError("a teacher needs a path (a local Hugging Face folder or auto); "
                             "for no teacher write teacher: null")
        return v

    @model_validator(mode="after")
    def _fine_tune_needs_a_folder(self) -> TeacherSpec:
        if self.is_auto and self.fine_tune is not None:
            raise ValueError("fine_tune applies to a Hugging Face folder, not to auto (the self-trained "
                             "teacher is trained on the task already); remove fine_tune or give a folder")
        return self

    @property
    def is_auto(self) -> bool:
        """Whether this is the self-trained teacher (``auto``)."""
        return self.path.lower() == "auto"


class WandbSpec(Frozen):
    """Weights & Biases through Ray Tune's ``WandbLoggerCallback``: one W&B run per trial, grouped by study.

    ``mode: offline`` (the default) writes the runs to disk only (``wandb sync`` uploads them later);
    ``online`` sends them as they run and needs ``wandb login`` or ``WANDB_API_KEY``.
    """

    project: str
    mode: Literal["offline", "online"] = "offline"

    @model_validator(mode="before")
    @classmethod
    def _named(cls, data: Any) -> Any:
        if isinstance(data, dict) and not str(data.get("project") or "").strip():
            raise ValueError("W&B files runs under a project; name one, e.g. "
                             "tracking: {wandb: {project: energy-nas, mode: offline}}")
        return data

    @field_validator("mode", mode="before")
    @classmethod
    def _mode(cls, v: Any) -> Any:
        if v not in ("offline", "online"):
            raise ValueError(f"unknown W&B mode {v!r}; use offline (runs written to disk only, `wandb sync` "
                             "uploads them) or online (sent as they run; needs `wandb login`)")
        return v


class TrackingSpec(Frozen):
    """Where per-trial curves go besides the database.

    TensorBoard event files are always written (Ray's results folder under the study's artefacts folder,
    kept per ``storage.retention``: see docs/tracking.md). ``wandb`` adds W&B runs; nothing is sent
    anywhere unless it is given with ``mode: online``.
    """

    wandb: WandbSpec | None = None


def _teacher_from_string(v: Any) -> Any:
    """``"DIR"`` -> ``{path: DIR}``; ``"none"``, ``""`` -> ``None``; anything else unchanged."""
    if isinstance(v, str):
        return None if v.strip().lower() in ("", "none") else {"path": v}
    return v


class StudySpec(Frozen):
    """Everything a search needs. ``train.steps`` is ignored in favour of ``fidelity.rungs[-1]``."""

    name: str = Field(default="default", description="1-100 of A-Z a-z 0-9 _ . -, not starting with a dot")
    task: str = "builtin:longmatch"
    teacher: TeacherSpec | None = None
    space: SpaceRef = SpaceRef()
    objectives: list[Objective] = Field(
        default_factory=lambda: [Objective(metric="accuracy"), Objective(metric="energy_per_sample_j")]
    )
    constraints: list[str] = Field(default_factory=list)
    front: FrontSpec = FrontSpec()
    sampler: SamplerSpec = SamplerSpec()
    budget: BudgetSpec = BudgetSpec()
    fidelity: FidelitySpec = FidelitySpec()
    train: TrainConfig = TrainConfig()
    measure: MeasureConfig = MeasureConfig()
    resources: ResourcesSpec = ResourcesSpec()
    storage: StorageSpec = StorageSpec()
    tracking: TrackingSpec = TrackingSpec()

    @field_validator("teacher", mode="before")
    @classmethod
    def _teacher_string(cls, v: Any) -> Any:
        return _teacher_from_string(v)

    @model_validator(mode="before")
    @classmethod
    def _preset_rungs(cls, data: Any) -> Any:
        """A spec that gives no ``fidelity.rungs`` gets its space preset's (:data:`PRESET_RUNGS`)."""
        if not isinstance(data, dict):
            return data
        space = data.get("space")
        if isinstance(space, SpaceRef):
            preset: Any = space.preset
        elif isinstance(space, dict):
            preset = space.get("preset", "tiny")
        else:
            preset = "tiny" if space is None else None
        rungs = PRESET_RUNGS.get(preset) if isinstance(preset, str) else None
        fidelity = data.get("fidelity")
        if rungs is None or isinstance(fidelity, FidelitySpec):
            return data
        if fidelity is None:
            return {**data, "fidelity": {"rungs": list(rungs)}}
        if isinstance(fidelity, dict) and "rungs" not in fidelity:
            return {**data, "fidelity": {**fidelity, "rungs": list(rungs)}}
        return data

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        problem = study_name_problem(v)
        if problem is not None:
            raise ValueError(problem)
        return v

    @model_validator(mode="after")
    def _check(self) -> StudySpec:
        if not self.objectives:
            raise ValueError("objectives: give at least one, e.g. [{metric: accuracy}]")
        names = [o.metric for o in self.objectives]
        if len(set(names)) != len(names):
            raise ValueError(f"objectives: each metric may appear once, got {names}")
        return self

    @property
    def directions(self) -> list[str]:
        """The objectives' resolved directions, in order."""
        return [o.resolved_direction for o in self.objectives]

    @property
    def objective_names(self) -> list[str]:
        """The objectives' metric names, in order."""
        return [o.metric for o in self.objectives]

    def with_overrides(self, **changes: Any) -> StudySpec:
        """A copy with dotted keys replaced (e.g. ``budget.trials=3``), validated again.

        Raises:
            ConfigError: The result is not a valid spec.
        """
        data = self.model_dump()
        for key, value in changes.items():
            node = data
            parts = key.split(".")
            for p in parts[:-1]:
                node = node[p]
            node[parts[-1]] = value
        return validate(StudySpec, data, source="study spec")


#: The built-in study's training steps, chosen by ``benchmarks/fidelity.py --setting builtin``
#: (``benchmarks/results/fidelity_builtin.json``): of 50..800 steps, 800 ranks 24 candidates closest to
#: their ranking after 1,600 steps (mean Spearman 0.73 over 3 seeds; 400 steps: 0.67, 200: 0.35). No budget
#: reaches 0.85: two seeds of the 1,600-step runs agree only to 0.84 (the noise ceiling).
DEFAULT_STEPS = 800


def default_spec() -> StudySpec:
    """The built-in study: the `tiny` space on the long-range `builtin:longmatch`, 14 trials, CPU-friendly.

    It trains every candidate for :data:`DEFAULT_STEPS`, without ASHA rungs, so that every trial yields a
    complete (accuracy, energy) point; ``examples/study.yaml`` shows rungs.
    """
    return StudySpec(
        budget=BudgetSpec(trials=14),
        fidelity=FidelitySpec(rungs=[DEFAULT_STEPS], enabled=False),
        train=TrainConfig(batch_size=32, lr=2e-3, steps=DEFAULT_STEPS),
        measure=MeasureConfig(window_s=0.5, n_windows=3, idle_s=0.5, batch_size=32, seq_len=64,
                              warmup_iters=5),
    )


def load_spec(path: str | Path) -> StudySpec:
    """Read and validate a study YAML; every error is one line naming the file and the key."""
    data = load_yaml(path, what="a study spec, e.g. name: my-study (see examples/study.yaml)")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values at the top level, got "
                          f"{type(data).__name__}", fix="write the spec as key: value pairs (see examples/study.yaml)")
    return validate(StudySpec, data, source=str(path))
