"""The typed seam between Ray Tune workers and the driver.

Tune moves plain dicts: a trial's ``config`` (driver -> worker) and its reports (worker -> driver).
These frozen records are what the two sides actually mean, with one ``to_tune`` / ``from_tune`` pair
each, so that no other module reads or writes a Tune dict by string key. The reserved report keys:

* ``status``: ``RUNNING`` (a rung), ``COMPLETE``, ``FAIL`` or ``PRUNED``;
* ``step`` and ``rung_accuracy``: what Tune's ASHA scheduler reads (``time_attr`` and ``metric``);
* ``objectives_json``: the objective values of a COMPLETE trial (also flat, for Tune's tables);
* ``rung_json`` / ``trial_result_json``: the frozen records themselves.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from nas.config import Candidate
from nas.records import FailKind, RungReport, TrialResult

__all__ = ["TrialConfig", "TrialReport", "ReportStatus"]

ReportStatus = Literal["RUNNING", "COMPLETE", "FAIL", "PRUNED"]


@dataclass(frozen=True)
class TrialConfig:
    """What the driver sends a worker: the candidate, its Optuna trial number and its hash."""

    candidate: Candidate
    number: int
    candidate_hash: str

    def to_tune(self) -> dict[str, Any]:
        """The Tune ``config`` dict that carries this record to a worker."""
        return {"candidate_json": self.candidate.model_dump_json(), "optuna_number": self.number,
                "candidate_hash": self.candidate_hash}

    @classmethod
    def from_tune(cls, config: Mapping[str, Any]) -> TrialConfig:
        """The record a worker reads back from its Tune ``config``."""
        return cls(candidate=Candidate.model_validate_json(config["candidate_json"]),
                   number=int(config["optuna_number"]), candidate_hash=str(config.get("candidate_hash", "")))


@dataclass(frozen=True)
class TrialReport:
    """One report from a worker: a rung (``RUNNING``) or the trial's end.

    Attributes:
        status: ``RUNNING`` at a rung; ``COMPLETE``, ``FAIL`` or ``PRUNED`` at the end.
        step: Training steps done (Tune's ``time_attr``).
        rung: The rung report (accuracy and cost so far), at a rung.
        result: The trial's record at the end; for ``FAIL``, what it did before failing (may be None
            when it failed before any work).
        error: Why it failed.
        fail_kind: What kind of failure (``FAIL`` only): whether it spends budget and whether the
            candidate may be sampled again (:class:`~nas.records.FailKind`).
        traceback: The worker's traceback of a failure, for the logs.
        objectives: The study's objective values of a ``COMPLETE`` trial (all present).
    """

    status: ReportStatus
    step: int
    rung: RungReport | None = None
    result: TrialResult | None = None
    error: str | None = None
    fail_kind: FailKind | None = None
    traceback: str | None = None
    objectives: Mapping[str, float] = dataclasses.field(default_factory=dict)

    def to_tune(self) -> dict[str, Any]:
        """The Tune report dict: the reserved keys above, plus the objective values flat."""
        d: dict[str, Any] = {"status": self.status, "step": self.step}
        if self.fail_kind is not None:
            d["fail_kind"] = self.fail_kind.value
        if self.rung is not None:
            d["rung_accuracy"] = self.rung.accuracy
            d["rung_json"] = json.dumps(dataclasses.asdict(self.rung))
        if self.result is not None:
            d["trial_result_json"] = json.dumps(self.result.to_dict(), default=str)
            if self.result.accuracy is not None:
                d["rung_accuracy"] = self.result.accuracy
        if self.error is not None:
            d["error"] = self.error
        if self.traceback is not None:
            d["traceback"] = self.traceback
        if self.objectives:
            d["objectives_json"] = json.dumps(dict(self.objectives))
            d.update(self.objectives)  # flat too, for Tune's own tables
        return d

    @classmethod
    def from_tune(cls, d: Mapping[str, Any] | None) -> TrialReport | None:
        """The report in a Tune result dict; ``None`` for an empty one (the worker never reported)."""
        if not d or "status" not in d:
            return None
        rung = RungReport(**json.loads(d["rung_json"])) if d.get("rung_json") else None
        result = TrialResult.from_dict(json.loads(d["trial_result_json"])) if d.get("trial_result_json") else None
        objectives = {str(k): float(v) for k, v in json.loads(d.get("objectives_json") or "{}").items()}
        return cls(status=d["status"], step=int(d.get("step") or 0), rung=rung, result=result,
                   error=d.get("error"), fail_kind=FailKind(d["fail_kind"]) if d.get("fail_kind") else None,
                   traceback=d.get("traceback"), objectives=objectives)

    @property
    def spent(self) -> RungReport | TrialResult | None:
        """What tells this trial's cost: its result, else its last rung."""
        return self.result if self.result is not None else self.rung
