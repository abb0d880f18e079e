"""Regularized (aging) evolution as an Optuna sampler, for a define-by-run space with conditional knobs.

Real et al., 2019, "Regularized Evolution for Image Classifier Architecture Search":

* **Population:** the ``population`` trials that completed most recently (by completion time, then trial
  number). Each trial that completes pushes the oldest member out (aging): a model stays only through its
  children, never through one lucky evaluation. FAIL, PRUNED and running trials are not members.
* **Warm-up:** until ``population`` trials are COMPLETE, every knob is drawn at random (Real et al.'s random
  first population). ``n_startup_trials`` plays no part.
* **Tournament** (in ``before_trial``): ``sample_size`` distinct members drawn at random; the best is the
  parent. With one objective, the best value in the study's direction wins. With several, the lowest
  non-dominated rank within the whole population wins, ties going to the largest crowding distance within
  its front (NSGA-II's order, Deb et al., 2002). A study's constraints come first: a member that meets them
  all beats any that does not, and among the others the smaller total violation wins.
* **Mutation:** one of the parent's knobs that has more than one allowed value, chosen uniformly, is drawn
  anew until it differs from the parent's value (uniformly over its choices or range; log-uniformly on a
  log range; a different value, not a small step). Every other knob copies the parent's value where the
  parent has it and the value is allowed; a knob the parent lacks (the mutation opened a branch:
  ``window`` once attention became local, a layer's knobs once depth grew) is drawn at random.
* **Resume:** nothing is held in memory. The population is read from the study's storage, and each child
  records its parent's number (``evolution:parent``) and the mutated knob (``evolution:mutated``) in its
  trial's system attributes, so a fresh sampler on a resumed study continues the evolution.

The tournament and the mutation draw from a generator seeded by (seed, trial number): a run replays for a
seed, and two trials asked at once never share the draw. The random knobs come from a
:class:`~optuna.samplers.RandomSampler` with the same seed.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.trial import FrozenTrial, TrialState

from nas.dominance import crowding_distance, non_dominated_ranks
from nas.errors import ConfigError

__all__ = ["EvolutionSampler", "PARENT_KEY", "MUTATED_KEY", "population_of", "tournament_keys", "tournament"]

#: The system attribute holding a child's parent's trial number.
PARENT_KEY = "evolution:parent"
#: The system attribute holding the name of the knob a child mutated.
MUTATED_KEY = "evolution:mutated"
#: Redraws before a mutation gives up on differing from the parent (only a knob of two values drawn 100
#: times the same way, chance 2**-100, or a float range of a few representable values, gets there).
_MAX_REDRAWS = 100
_TOURNAMENT, _MUTATION = 0, 1

#: A member's place in a tournament, smaller is better: (constraint violation, non-dominated rank,
#: minus the crowding distance).
TournamentKey = tuple[float, int, float]


def population_of(study: optuna.Study, size: int) -> list[FrozenTrial]:
    """The ``size`` COMPLETE trials of ``study`` that completed last, oldest first."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    complete.sort(key=lambda t: (t.datetime_complete or datetime.min, t.number))
    return complete[-size:] if size > 0 else []


def _violation(trial: FrozenTrial) -> float:
    """How far a trial is from meeting its constraints (Optuna's: a value <= 0 is met); 0.0 when it meets them."""
    return float(sum(max(0.0, v) for v in trial.constraints.values()))


def tournament_keys(members: Sequence[FrozenTrial], directions: Sequence[str]) -> list[TournamentKey]:
    """Each member's tournament key, smaller is better.

    Members are grouped by constraint violation (0.0 for a member that meets every constraint, or for a
    study without any); within a group, the non-dominated rank and each front's crowding distance are
    computed among that group's members. With one objective the rank orders the values.

    Args:
        members: COMPLETE trials, each with one value per direction.
        directions: ``"maximize"`` or ``"minimize"`` per objective.
    """
    violation = np.array([_violation(t) for t in members], dtype=np.float64)
    values = np.array([t.values for t in members], dtype=np.float64).reshape(len(members), len(directions))
    keys: list[TournamentKey] = [(0.0, 0, 0.0)] * len(members)
    for level in np.unique(violation):
        group = np.flatnonzero(violation == level)
        ranks = non_dominated_ranks(values[group], directions)
        for rank in np.unique(ranks):
            front = group[ranks == rank]
            for i, crowd in zip(front, crowding_distance(values[front]), strict=True):
                keys[int(i)] = (float(level), int(rank), -float(crowd))
    return keys


def tournament(members: Sequence[FrozenTrial], directions: Sequence[str], sample_size: int,
               rng: np.random.Generator) -> FrozenTrial:
    """The best of ``sample_size`` distinct members drawn at random (the first drawn among equals)."""
    keys = tournament_keys(members, directions)
    drawn = rng.choice(len(members), size=min(sample_size, len(members)), replace=False)
    return members[int(min(drawn, key=lambda i: keys[int(i)]))]


def _internal(distribution: BaseDistribution, value: Any) -> float | None:
    """``value`` in ``distribution``'s internal form, or None when the distribution does not allow it."""
    try:
        internal = distribution.to_internal_repr(value)
    except (ValueError, TypeError):
        return None
    return internal if distribution._contains(internal) else None


class EvolutionSampler(BaseSampler):
    """Regularized (aging) evolution (Real et al., 2019) for define-by-run spaces; see the module docstring.

    Args:
        population: How many of the last COMPLETE trials form the population (at least 2).
        sample_size: How many members a tournament draws (2 to ``population``).
        seed: Seeds the tournaments, the mutations and the random knobs; ``None`` for a random seed.
    """

    def __init__(self, population: int, sample_size: int, seed: int | None = None) -> None:
        if population < 2:
            raise ConfigError("must be at least 2", field="population", value=population, fix="use e.g. 10")
        if not 2 <= sample_size <= population:
            raise ConfigError(f"must be from 2 to the population ({population})", field="sample_size",
                              value=sample_size, fix=f"use e.g. {max(2, population // 4)}")
        self._population = population
        self._sample_size = sample_size
        self._seed = secrets.randbits(32) if seed is None else seed
        self._random = RandomSampler(seed=self._seed)

    def reseed_rng(self) -> None:
        """A new seed (Optuna calls this in each thread of ``optimize(n_jobs > 1)``)."""
        self._seed = secrets.randbits(32)
        self._random.reseed_rng()

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        """An empty space: every knob is sampled on its own, as the define-by-run space reaches it."""
        return {}

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        """Nothing (the relative space is empty; see :meth:`infer_relative_search_space`)."""
        return {}

    def _rng(self, number: int, stream: int) -> np.random.Generator:
        return np.random.default_rng([self._seed, number, stream])

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Once the population is full, choose the trial's parent by tournament and the knob it mutates.

        Both are stored in the trial's system attributes (:data:`PARENT_KEY`, :data:`MUTATED_KEY`). A trial
        asked before the population is full, or whose parent has no knob with two or more allowed values,
        gets neither and is drawn at random.
        """
        members = population_of(study, self._population)
        if len(members) < self._population:
            return
        rng = self._rng(trial.number, _TOURNAMENT)
        directions = [d.name.lower() for d in study.directions]
        parent = tournament(members, directions, self._sample_size, rng)
        mutable = sorted(name for name, dist in parent.distributions.items() if not dist.single())
        if not mutable:
            return
        mutated = mutable[int(rng.integers(len(mutable)))]
        study._storage.set_trial_system_attr(trial._trial_id, PARENT_KEY, parent.number)
        study._storage.set_trial_system_attr(trial._trial_id, MUTATED_KEY, mutated)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        """The mutated knob anew, any other knob the parent's where it has an allowed one, else at random."""
        parent_number = trial.system_attrs.get(PARENT_KEY)
        if parent_number is None:
            return self._random.sample_independent(study, trial, param_name, param_distribution)
        storage = study._storage
        parent = storage.get_trial(storage.get_trial_id_from_study_id_trial_number(study._study_id,
                                                                                   int(parent_number)))
        had = _internal(param_distribution, parent.params[param_name]) if param_name in parent.params else None
        if trial.system_attrs.get(MUTATED_KEY) == param_name:
            return self._mutated(study, trial, param_name, param_distribution, had)
        if had is not None:
            return param_distribution.to_external_repr(had)
        return self._random.sample_independent(study, trial, param_name, param_distribution)

    def _mutated(self, study: optuna.Study, trial: FrozenTrial, name: str, distribution: BaseDistribution,
                 had: float | None) -> Any:
        """A value of ``distribution`` drawn at random until it differs from the parent's internal ``had``."""
        drawer = RandomSampler(seed=int(self._rng(trial.number, _MUTATION).integers(2**32)))
        value = drawer.sample_independent(study, trial, name, distribution)
        for _ in range(_MAX_REDRAWS):
            if had is None or distribution.to_internal_repr(value) != had:
                break
            value = drawer.sample_independent(study, trial, name, distribution)
        return value
