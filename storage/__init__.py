"""Storage of studies, trials, energy readings, artefacts and Pareto fronts (layer L1).

Imports SQLAlchemy, Alembic, numpy and the L0 records only: no torch, no optuna. Optuna's own
``RDBStorage`` shares the database (see :mod:`storage.models`).

Usage::

    from storage import Store, TrialCost

    store = Store.open("nas.db")                       # or postgresql+psycopg://user@host/db
    store.create_study("default", spec_json, [("accuracy", "maximize"), ("energy_per_sample_j", "minimize")])
    store.start_trial("default", 0, candidate)
    store.finish_trial("default", 0, result, cost=TrialCost(train_energy_j=12.5, wall_s=30.0))
    store.front("default", where="weight_bits <= 8")

The contract is :class:`BaseStorage` (:mod:`storage.base`); :class:`Store` implements it, delegating to
:mod:`storage.studies`, :mod:`storage.trials`, :mod:`storage.fronts` and :mod:`storage.queries`.
"""

from __future__ import annotations

from storage.base import BaseStorage
from storage.store import ALLOWED_OBJECTIVES, Store, normalize_url
from storage.views import (
    FILTER_NAMES,
    NO_HARDWARE,
    ArtefactView,
    FrontEntry,
    ReadingView,
    StudyInfo,
    TrialCost,
    TrialView,
    candidate_hash,
    study_fidelity,
)

__all__ = [
    "BaseStorage",
    "Store",
    "normalize_url",
    "ALLOWED_OBJECTIVES",
    "FILTER_NAMES",
    "NO_HARDWARE",
    "ArtefactView",
    "FrontEntry",
    "ReadingView",
    "StudyInfo",
    "TrialCost",
    "TrialView",
    "candidate_hash",
    "study_fidelity",
]
