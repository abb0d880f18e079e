"""Measure first: which study constraints a trial can be judged on before it trains (layer L0).

Inference energy depends on the architecture, the compression and the served form, not on the weights'
values (ARCHITECTURE decisions 4 and 12). So a trial can build its candidate, compress it as it will be
served, measure it, and stop at once when a study constraint excludes it, before it spends any training
joules. This module is the one place that says which constraints can be judged that early, and how.

* **Known before training** (:data:`BEFORE_TRAINING_NAMES`): every candidate field
  (:meth:`nas.config.Candidate.flat`); every metric whose vocabulary entry says so
  (:data:`nas.vocab.OBJECTIVE`, ``before_training``): J/sample, latency and throughput are ``measured``,
  parameters, size and FLOPs ``exact``; and the reading's ``meter``, ``is_estimate`` and ``hardware``.
  Accuracy, macro-F1, the test metrics and training energy are not.
* **Judgeable** (:func:`judgeable`): a constraint every name of which is known before training.
  ``energy_per_sample_j < 0.002`` is; ``accuracy > 0.8 or energy_per_sample_j < 0.002`` is not (the
  trial might meet it by its accuracy), and such a constraint waits for the trained trial.
* **Within the noise** (:meth:`MeasureFirst.violated`): a measured value is known to within its noise,
  and the reading after training is a second draw of it. A trial is stopped only when a constraint fails
  for every value within the margin of each measured value it reads: ``margin`` (relative), or twice the
  reading's coefficient of variation when that is larger. A constraint whose measured value is missing (a
  meter that gave no number) is not judged: the trial trains.

The reading after training stays the one of record; the one before training only decides whether to
train.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from nas.config import Candidate
from nas.errors import ConfigError
from nas.records import TrialResult
from nas.vocab import OBJECTIVE
from nas.where import Predicate, compile_where, names_read

__all__ = ["MEASURED_NAMES", "BEFORE_TRAINING_NAMES", "MeasureFirstSetting", "judgeable", "judgeable_constraints",
           "values_before_training", "MeasureFirst"]

#: Metrics read from a measurement before training: known within the reading's noise.
MEASURED_NAMES: frozenset[str] = frozenset(OBJECTIVE.where(lambda t: t.before_training == "measured"))
#: Every value name a constraint may read and still be judged before training.
BEFORE_TRAINING_NAMES: frozenset[str] = frozenset({
    *OBJECTIVE.where(lambda t: t.before_training != "no"), *Candidate().flat(), "meter", "is_estimate", "hardware",
})
#: ``fidelity.measure_first``: on, off, or ``auto`` (on when a study constraint is judgeable).
MeasureFirstSetting = bool | Literal["auto"]


def judgeable(constraint: str | Predicate) -> bool:
    """Whether every name ``constraint`` reads is known before training.

    Raises:
        ConfigError: ``constraint`` is text that does not parse.
    """
    names = constraint.names if isinstance(constraint, Predicate) else names_read(constraint)
    return names <= BEFORE_TRAINING_NAMES


def judgeable_constraints(constraints: Iterable[str]) -> tuple[str, ...]:
    """The constraints of ``constraints`` that can be judged before training, in order."""
    return tuple(c for c in constraints if judgeable(c))


def values_before_training(result: TrialResult) -> dict[str, Any]:
    """The values a constraint judged before training reads, from a trial's record before training.

    The candidate's fields, the metrics known before training (the others are absent), and the reading's
    meter, ``is_estimate`` and hardware fingerprint.
    """
    inf = result.inference
    known = {k: v for k, v in result.objectives().items() if k in BEFORE_TRAINING_NAMES}
    return {**result.candidate.flat(), **known, "meter": inf.meter if inf else None,
            "is_estimate": inf.is_estimate if inf else None,
            "hardware": inf.provenance.hardware_fingerprint if inf else None}


def _near(value: float, tolerance: float) -> tuple[float, float, float]:
    spread = tolerance * abs(value)
    return value - spread, value, value + spread


@dataclass(frozen=True)
class MeasureFirst:
    """A study's measure-first rule: its judgeable constraints and the noise margin they are judged within.

    Attributes:
        checks: Each judgeable constraint's text and predicate, in the study's order.
        margin: The relative margin around every measured value (``fidelity.measure_first_margin``).
    """

    checks: Mapping[str, Predicate]
    margin: float

    @classmethod
    def for_study(cls, constraints: Sequence[str], *, setting: MeasureFirstSetting,
                  margin: float) -> MeasureFirst | None:
        """The rule of a study with ``constraints``, or ``None`` when its trials do not measure first.

        ``setting`` ``False`` turns it off; ``"auto"`` turns it on when a constraint is judgeable; ``True``
        asks for it.

        Raises:
            ConfigError: ``setting`` is ``True`` but no constraint can be judged before training.
        """
        if setting is False:
            return None
        usable = judgeable_constraints(constraints)
        if not usable:
            if setting is True:
                raise ConfigError(
                    "fidelity.measure_first is true, but no constraint can be judged before training "
                    f"(constraints: {list(constraints) or 'none'})", field="fidelity.measure_first", value=True,
                    fix="add a constraint that reads only energy, latency, throughput, params, size_bytes, "
                    "flops_per_sample or candidate fields (e.g. energy_per_sample_j < 0.002), or set "
                    "fidelity.measure_first: auto")
            return None
        return cls(checks={c: compile_where(c, BEFORE_TRAINING_NAMES) for c in usable}, margin=margin)

    def tolerance(self, cv: float | None) -> float:
        """The relative margin of a reading whose coefficient of variation is ``cv``."""
        noise = 2.0 * cv if cv is not None and math.isfinite(cv) else 0.0
        return max(self.margin, noise)

    def violated(self, values: Mapping[str, Any], *, cv: float | None = None) -> tuple[str, ...]:
        """The constraints ``values`` break beyond the noise (see the module docstring), in order."""
        tol = self.tolerance(cv)
        out = []
        for text, check in self.checks.items():
            measured = sorted(check.names & MEASURED_NAMES)
            if any(not isinstance(values.get(n), (int, float)) or not math.isfinite(values[n]) for n in measured):
                continue  # a missing measured value is not judged
            grid = itertools.product(*(_near(float(values[n]), tol) for n in measured))
            if not any(check({**values, **dict(zip(measured, point, strict=True))}) for point in grid):
                out.append(text)
        return tuple(out)

    def gate(self, result: TrialResult) -> str | None:
        """Why the trial whose record before training is ``result`` is stopped, or ``None`` to train it."""
        values = values_before_training(result)
        cv = result.inference.cv if result.inference is not None else None
        broken = self.violated(values, cv=cv)
        if not broken:
            return None
        read = sorted(set().union(*(self.checks[c].names for c in broken)) & set(values))
        shown = ", ".join(f"{n} {_show(values[n])}" for n in read)
        return (f"infeasible, measured before training: breaks {', '.join(repr(c) for c in broken)} "
                f"({shown}; meter {values.get('meter') or 'none'}; margin {self.tolerance(cv):.0%})")


def _show(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
