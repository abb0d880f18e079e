"""Optuna samplers by ``sampler.kind``: one factory per name of :data:`nas.vocab.SAMPLER`."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import optuna

from nas.vocab import SAMPLER, Registry

__all__ = ["SamplerFactory", "SAMPLER_FACTORIES", "make_sampler"]

#: ``(seed, n_startup_trials) -> sampler``.
SamplerFactory = Callable[[int, int], optuna.samplers.BaseSampler]
#: One factory per name of :data:`nas.vocab.SAMPLER`.
SAMPLER_FACTORIES: Registry[SamplerFactory] = Registry(SAMPLER, "sampler factory")


@SAMPLER_FACTORIES.register("tpe")
def _tpe(seed: int, n_startup_trials: int) -> optuna.samplers.BaseSampler:
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup_trials, multivariate=True,
                                      group=True, constant_liar=True)


@SAMPLER_FACTORIES.register("nsga2")
def _nsga2(seed: int, n_startup_trials: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, n_startup_trials))


@SAMPLER_FACTORIES.register("random")
def _random(seed: int, n_startup_trials: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.RandomSampler(seed=seed)


SAMPLER_FACTORIES.require_complete()


def make_sampler(kind: str, seed: int, n_startup_trials: int) -> optuna.samplers.BaseSampler:
    """The Optuna sampler ``kind`` (a :class:`ConfigError` names the allowed kinds for an unknown one)."""
    return SAMPLER_FACTORIES.lookup(kind)(seed, n_startup_trials)
