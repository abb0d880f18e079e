"""Energy-aware neural architecture search for Transformer models.

``import nas`` stays light: torch, optuna, ray, sqlalchemy and transformers load only when a function
that needs them is called.

Python API::

    import nas
    study = nas.search("study.yaml")                 # or a StudySpec, or None for the built-in study
    front = nas.pareto("default", where="energy_per_sample_j < 0.01")
    model = nas.load("exported_dir"); model.predict(["a fine film"])
"""

from __future__ import annotations

from typing import Any

from nas.config import Candidate, MeasureConfig, TrainConfig
from nas.errors import NASError
from nas.version import VERSION

__version__ = VERSION

__all__ = ["Candidate", "TrainConfig", "MeasureConfig", "NASError", "search", "pareto", "load", "__version__"]


def search(spec: Any = None, **kwargs: Any) -> Any:
    """Run (or resume) a search. See :func:`nas.runner.api.search`."""
    from nas.runner.api import search as _search

    return _search(spec, **kwargs)


def pareto(study: str, **kwargs: Any) -> Any:
    """Pareto-optimal trials of a stored study. See :func:`nas.runner.api.pareto`."""
    from nas.runner.api import pareto as _pareto

    return _pareto(study, **kwargs)


def load(path: Any) -> Any:
    """Load an exported model folder. See :func:`nas.export.load`."""
    from nas.export import load as _load

    return _load(path)
