"""The ``fidelity`` section of a study spec: ASHA rungs, measure-first, the cost-model skip, or a supernet.

Split from :mod:`nas.spec` (which re-exports everything here) to keep each module short.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from nas.candidate_parts import Frozen
from nas.config import TrainConfig

__all__ = ["PRESET_RUNGS", "FidelitySpec"]


#: The default ``fidelity.rungs`` of a study on each space preset (a spec that gives no rungs), chosen by
#: ``benchmarks/fidelity.py`` (docs/fidelity.md#benchmark-how-well-does-brief-training-rank-candidates).
#: No budget reaches the 0.85 rank correlation aimed at, because seeds disagree more than that:
#:
#: * ``tiny``, from ``--setting builtin`` (builtin:longmatch, 24 candidates x 3 seeds, against 1,600 steps):
#:   800 steps is the best whole budget measured (Spearman 0.73; noise ceiling 0.84), and a rung at 400
#:   steps of a longer run ranks 0.79 (at 100: 0.39), so ``[400, 800]``.
#: * ``base``, from ``--setting sst2`` (SST-2, 24 students cut from and distilled by a fine-tuned MiniLM-L6,
#:   x 3 seeds, against 200 steps): every budget is at the noise ceiling (0.75): a rung at 50 steps ranks
#:   0.78, a whole 25-step run 0.75, a rung at 25 only 0.67, so ``[50, 200]``: ASHA stops candidates a
#:   quarter of the way in at no measurable loss of ranking. 200 steps is the longest budget measured.
PRESET_RUNGS: dict[str, tuple[int, ...]] = {"tiny": (400, 800), "base": (50, 200)}


class FidelitySpec(Frozen):
    """Training-step rungs for ASHA-style early stopping on accuracy, and measure-first stopping on constraints.

    The energy of record is measured once, at the end, for candidates that reach the last rung. A study that
    gives no ``rungs`` gets its space preset's (:data:`PRESET_RUNGS`).

    ``measure_first`` (``auto``, ``true`` or ``false``): each trial first measures its built, compressed
    model, before any training, and is stopped at once (``FAIL``, kind ``infeasible``, its reading and cost
    stored) when it breaks a study constraint that can be judged then (:mod:`nas.feasibility`). ``auto``
    turns it on when such a constraint exists. ``measure_first_margin`` is the relative noise margin of
    that judgement: a trial is stopped only when the constraint fails even with each measured value moved
    this far (or twice the reading's CV, if larger) in its favour.

    ``predict_skip`` (``auto``, ``true`` or ``false``): before a sampled candidate is built, the study's learned
    cost model (:mod:`nas.cost_model`, fitted on its COMPLETE trials once there are
    :data:`~nas.cost_model.MIN_TRIALS` of one hardware and meter) predicts its J/sample and latency, and a
    candidate predicted to break a study constraint with high confidence is never built (``FAIL``, kind
    ``infeasible``, no metered joules; :mod:`nas.runner.cost_gate`). ``auto`` turns it on when a constraint
    reads a predicted value (:func:`nas.cost_model.predictable`). ``predict_skip_confidence`` is that
    confidence: a candidate is skipped only when even the ``1 - confidence`` quantile of its prediction breaks
    the constraint.

    ``kind: supernet`` (HAT, AutoTinyBERT, DynaBERT; :mod:`evaluators.supernet`): before the first trial,
    one weight-sharing SuperTransformer, the space's largest shape, is trained for ``steps`` steps with the
    sandwich rule (the largest, the smallest and ``sandwich`` random sub-networks per step; the largest
    distils from the teacher when there is one), checkpointed every ``checkpoint_every`` steps, so a
    killed search resumes it. Each trial then cuts its candidate from it, compresses it, fine-tunes it for
    ``subnet_steps`` steps, and evaluates and measures it. Before the search ends, its front is fine-tuned
    for ``final_steps`` steps from the supernet and measured again. The supernet's training joules count
    in the search cost. ``rungs`` and ASHA are not used. A cut sub-network is already trained, so it
    fine-tunes at ``finetune_lr_scale`` times ``train.lr``.
    """

    kind: Literal["rungs", "supernet"] = "rungs"
    rungs: list[int] = Field(default_factory=lambda: list(PRESET_RUNGS["tiny"]))
    reduction_factor: int = Field(default=2, ge=2)
    enabled: bool = True
    measure_first: bool | Literal["auto"] = "auto"
    measure_first_margin: float = Field(default=0.1, ge=0.0, lt=1.0)
    predict_skip: bool | Literal["auto"] = "auto"
    predict_skip_confidence: float = Field(default=0.98, gt=0.5, lt=1.0)
    steps: int = Field(default=600, ge=1, description="supernet training steps (kind: supernet)")
    sandwich: int = Field(default=2, ge=0, le=8)
    checkpoint_every: int = Field(default=50, ge=1)
    subnet_steps: int = Field(default=20, ge=1)
    final_steps: int = Field(default=100, ge=0)
    finetune_lr_scale: float = Field(default=0.1, gt=0, le=1)

    @field_validator("rungs")
    @classmethod
    def _increasing(cls, v: list[int]) -> list[int]:
        if not v:
            raise ValueError("needs at least one rung (the final training step count)")
        if any(r <= 0 for r in v) or sorted(set(v)) != v:
            raise ValueError("rungs must be positive and strictly increasing, e.g. [100, 200]")
        return v

    @property
    def max_steps(self) -> int:
        """A trial's training steps: the last rung, or ``subnet_steps`` when it is cut from a supernet."""
        return self.subnet_steps if self.kind == "supernet" else self.rungs[-1]

    def trial_train(self, train: TrainConfig) -> TrainConfig:
        """A trial's training settings: ``max_steps`` steps, at the fine-tuning rate when cut from a supernet."""
        if self.kind == "supernet":
            return train.model_copy(update={"steps": self.subnet_steps, "lr": train.lr * self.finetune_lr_scale})
        return train.model_copy(update={"steps": self.max_steps})

    @property
    def early_stopping(self) -> bool:
        """Whether ASHA stops trials at the rungs (never for a supernet study, whose trials are brief)."""
        return self.enabled and self.kind == "rungs" and len(self.rungs) > 1
