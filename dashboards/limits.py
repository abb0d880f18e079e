"""Caps on the searches a client may launch over HTTP (``nas serve --max-...``).

Kept apart from :mod:`dashboards.launch` and free of heavy imports, so the CLI can take its option
defaults from :class:`LaunchLimits` without slowing ``nas --help``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

from nas.errors import ConfigError

if TYPE_CHECKING:
    from nas.spec import StudySpec

__all__ = ["LaunchLimits", "LaunchLimitError"]


class LaunchLimitError(ConfigError):
    """The server already runs as many launched searches as it allows (HTTP 429)."""


#: For each cap: the spec field it bounds (for messages) and the ``nas serve`` option that raises it.
_CAP_OPTIONS = {
    "max_running": ("searches running at once", "--max-launches"),
    "max_concurrent": ("resources.max_concurrent", "--max-trial-concurrency"),
    "max_cpus_per_trial": ("resources.cpus_per_trial", "--max-cpus-per-trial"),
    "max_gpus_per_trial": ("resources.gpus_per_trial", "--max-gpus-per-trial"),
    "max_trials": ("budget.trials", "--max-trials"),
}


@dataclass(frozen=True)
class LaunchLimits:
    """Caps on what one client may start over HTTP (``nas serve --max-...``; the CLI's defaults are these).

    Attributes:
        max_running: Searches launched from this server that may run at once (more is HTTP 429).
        max_concurrent: Largest ``resources.max_concurrent`` (trials at once within one search).
        max_cpus_per_trial: Largest ``resources.cpus_per_trial``; ``resources.torch_threads`` may not
            exceed it either.
        max_gpus_per_trial: Largest ``resources.gpus_per_trial`` (0 keeps launched searches off GPUs).
        max_trials: Largest ``budget.trials``.
    """

    max_running: int = 1
    max_concurrent: int = 2
    max_cpus_per_trial: float = 2.0
    max_gpus_per_trial: float = 1.0
    max_trials: int = 200

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            zero_ok = f.name == "max_gpus_per_trial"
            if value < 0 or (value == 0 and not zero_ok):
                option = _CAP_OPTIONS[f.name][1]
                raise ConfigError(f"a launch cap must be {'0 or more' if zero_ok else 'positive'}", field=option,
                                  value=value, fix=f"pass {option} {0 if zero_ok else 1} or more")

    def check(self, spec: StudySpec) -> None:
        """:class:`ConfigError` naming the first field of ``spec`` over its cap, the value, cap and fix."""
        res = spec.resources
        asked = {"max_concurrent": res.max_concurrent, "max_cpus_per_trial": res.cpus_per_trial,
                 "max_gpus_per_trial": res.gpus_per_trial, "max_trials": spec.budget.trials}
        for cap_name, value in asked.items():
            cap = getattr(self, cap_name)
            if value > cap:
                field, option = _CAP_OPTIONS[cap_name]
                raise ConfigError(f"over this server's cap of {cap} for searches launched over HTTP", field=field,
                                  value=value, fix=f"ask for at most {cap}, or restart nas serve with {option} {value}")
        max_threads = max(1, int(self.max_cpus_per_trial))
        if res.torch_threads > max_threads:
            raise ConfigError(f"over this server's cap of {max_threads} threads per trial (its CPU cap)",
                              field="resources.torch_threads", value=res.torch_threads,
                              fix=f"ask for at most {max_threads}, or restart nas serve with "
                                  f"--max-cpus-per-trial {res.torch_threads}")
