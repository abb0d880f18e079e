"""Optuna samplers by ``sampler.kind``: one factory per name of :data:`nas.vocab.SAMPLER`."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import optuna

from nas.runner.evolution import EvolutionSampler
from nas.spec import SamplerSpec
from nas.vocab import SAMPLER, Registry

__all__ = ["SamplerFactory", "SAMPLER_FACTORIES", "GP_MAX_OBJECTIVES", "make_sampler"]

#: The most objectives the GP sampler is given. Its multi-objective acquisition (log expected hypervolume
#: improvement) splits the region the front does not dominate into boxes whose count grows exponentially
#: with the objectives, and evaluates 2048 x 128 samples against every box at once. Optuna itself warns
#: beyond 4 ("might be significantly slow"). Measured with Optuna 5.0 on 2 CPU cores: with 5 objectives
#: one proposal took 37-127 s after 50 trials (a 25-member front already means ~1,500 boxes, a 15 GB
#: tensor); with 6, a proposal after 30 trials asked for 38.7 GB and failed.
GP_MAX_OBJECTIVES = 4

#: ``(the study's sampler spec, seed) -> sampler``. The seed is the driver's
#: (:func:`nas.runner.searcher.sampler_seed`, derived from ``spec.seed``), so that a resumed study draws anew.
SamplerFactory = Callable[[SamplerSpec, int], optuna.samplers.BaseSampler]
#: One factory per name of :data:`nas.vocab.SAMPLER`.
SAMPLER_FACTORIES: Registry[SamplerFactory] = Registry(SAMPLER, "sampler factory")


@SAMPLER_FACTORIES.register("tpe")
def _tpe(spec: SamplerSpec, seed: int) -> optuna.samplers.BaseSampler:
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=spec.n_startup_trials, multivariate=True,
                                      group=True, constant_liar=True)


@SAMPLER_FACTORIES.register("nsga2")
def _nsga2(spec: SamplerSpec, seed: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, spec.n_startup_trials))


@SAMPLER_FACTORIES.register("gp")
def _gp(spec: SamplerSpec, seed: int) -> optuna.samplers.BaseSampler:
    # The space is define-by-run with conditional knobs (``window`` only for local attention, ``k`` only
    # for low-rank): the GP models the knobs every complete trial has, and the others come from the
    # seeded random sampler, which is expected here, so Optuna's per-knob warning is off.
    return optuna.samplers.GPSampler(seed=seed, n_startup_trials=spec.n_startup_trials,
                                     independent_sampler=optuna.samplers.RandomSampler(seed=seed),
                                     warn_independent_sampling=False)


@SAMPLER_FACTORIES.register("evolution")
def _evolution(spec: SamplerSpec, seed: int) -> optuna.samplers.BaseSampler:
    return EvolutionSampler(population=spec.resolved_population, sample_size=spec.resolved_sample_size,
                            seed=seed)


@SAMPLER_FACTORIES.register("random")
def _random(spec: SamplerSpec, seed: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.RandomSampler(seed=seed)


SAMPLER_FACTORIES.require_complete()


def make_sampler(spec: SamplerSpec, seed: int | None = None) -> optuna.samplers.BaseSampler:
    """The Optuna sampler of ``spec``, seeded with ``seed`` (default: ``spec.seed``).

    A :class:`~nas.errors.ConfigError` names the allowed kinds for an unknown ``spec.kind``.
    """
    return SAMPLER_FACTORIES.lookup(spec.kind)(spec, spec.seed if seed is None else seed)
