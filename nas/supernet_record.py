"""The record of a study's weight-sharing supernet (``fidelity.kind: supernet``; layer L0)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nas.config import Candidate
from nas.records import TrainSummary

__all__ = ["SupernetRecord"]


@dataclass(frozen=True)
class SupernetRecord:
    """A study's weight-sharing supernet (``fidelity.kind: supernet``): how far it trained and what it cost.

    Attributes:
        path: The trained supernet's file (or, while training, where it will be).
        key: What it was trained from, hashed (:func:`evaluators.supernet.supernet_key`).
        candidate: Its shape: the space's largest.
        steps_done: Steps trained so far, over every run (a killed search resumes from its checkpoint).
        steps_total: ``fidelity.steps``.
        train: What training cost so far, over every run (joules, CO2, seconds, meter).
        resumed_from: The checkpoint step the last run continued from, if it resumed.
    """

    path: str
    key: str
    candidate: Candidate
    steps_done: int
    steps_total: int
    train: TrainSummary
    resumed_from: int | None = None

    @property
    def complete(self) -> bool:
        """Whether every step is done."""
        return self.steps_done >= self.steps_total

    def to_dict(self) -> dict[str, Any]:
        """The record as a JSON-ready dict."""
        return {"path": self.path, "key": self.key, "candidate": self.candidate.model_dump(mode="json"),
                "steps_done": self.steps_done, "steps_total": self.steps_total, "train": self.train.to_dict(),
                "resumed_from": self.resumed_from}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SupernetRecord:
        """Rebuild from :meth:`to_dict` output."""
        return cls(path=d["path"], key=d["key"], candidate=Candidate.model_validate(d["candidate"]),
                   steps_done=int(d["steps_done"]), steps_total=int(d["steps_total"]),
                   train=TrainSummary.from_dict(d["train"]), resumed_from=d.get("resumed_from"))
