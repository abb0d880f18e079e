"""Why a trial failed, and what that failure costs the search (layer L0: standard library only).

Re-exported by :mod:`nas.records`, where the records that carry a :class:`FailKind` live.
"""

from __future__ import annotations

import enum

__all__ = ["FailKind", "spends_budget"]


class FailKind(str, enum.Enum):
    """Why a trial failed, which decides what its failure costs the search.

    * ``CANDIDATE``: the candidate's own fault (NaN loss, out of memory, a worker that died on it, an
      objective it cannot have). It spends budget and the candidate is never sampled again.
    * ``INTERRUPTED``: the driver or the search stopped before the trial finished. No budget; the
      candidate may be sampled again.
    * ``DEVICE``: the device failed the trial (its meter or NVML broke, e.g. a GPU that fell off the bus),
      or other work shared it during every measurement attempt. No budget; the
      candidate may be sampled again.
    * ``INVALID``: the sampled configuration is not a valid candidate; it never reached a worker.
    * ``NOT_EVALUATED``: the candidate repeats one that failed or was already evaluated; skipped.
    * ``INFEASIBLE``: measured before training, it breaks a study constraint (measure-first,
      :mod:`nas.feasibility`), so it was never trained; or the study's cost model predicted it breaks one
      with high confidence (``fidelity.predict_skip``), so it was never built. It spends budget and is never
      sampled again.
    """

    CANDIDATE = "candidate"
    INTERRUPTED = "interrupted"
    DEVICE = "device"
    INVALID = "invalid"
    NOT_EVALUATED = "not_evaluated"
    INFEASIBLE = "infeasible"

    @property
    def retryable(self) -> bool:
        """The candidate is not to blame and may be sampled (and evaluated) again."""
        return self in (FailKind.INTERRUPTED, FailKind.DEVICE)

    @property
    def spends_budget(self) -> bool:
        """The failure counts against the study's trial budget."""
        return self in (FailKind.CANDIDATE, FailKind.INFEASIBLE)

    @property
    def blocks_candidate(self) -> bool:
        """The candidate is never sampled (nor evaluated) again in the study."""
        return self in (FailKind.CANDIDATE, FailKind.INFEASIBLE)


def spends_budget(state: str, fail_kind: FailKind | None) -> bool:
    """Whether a trial in ``state`` spent budget.

    Every finished trial does, except a failure whose kind says otherwise; a RUNNING trial has not yet. A
    FAIL without a kind is taken as the candidate's.
    """
    if state == "RUNNING":
        return False
    if state == "FAIL":
        return fail_kind is None or fail_kind.spends_budget
    return True
