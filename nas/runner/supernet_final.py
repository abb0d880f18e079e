"""Before a supernet study ends, its front is fine-tuned from the supernet and measured again.

A trial of a ``fidelity.kind: supernet`` study trains its sub-network only ``fidelity.subnet_steps`` steps:
enough to rank candidates, not to ship them. When the last trial is done, each member of the front (on
this machine) is cut from the supernet again, trained ``fidelity.final_steps`` steps, compressed, evaluated
and measured, in this process, with the study's protocol. The new result replaces the trial's
(:meth:`storage.Store.refine_trial`; the first result's readings stay, with origin ``None``, the new ones
have origin ``final``), its cost is added to the trial's, so the search cost counts it, and its weights
replace the trial's. A member whose fine-tuning fails keeps its first result, and the failure is reported.
A fine-tuned member can push another off the front, or fall off and let a trial in that was not fine-tuned:
that one is fine-tuned too, until every member of the front was (each trial at most once).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass

from evaluators.pipeline import run_trial
from evaluators.remeasure import this_hardware, torch_threads
from nas.config import TrainConfig
from nas.errors import NASError
from nas.spec import StudySpec
from storage import Store, TrialCost, TrialView

__all__ = ["Refined", "refine_front"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Refined:
    """One front member fine-tuned: its dev accuracy before and after, or why it kept its first result."""

    number: int
    accuracy_before: float | None
    accuracy_after: float | None = None
    failed: str | None = None


def refine_front(store: Store, spec: StudySpec, artefacts_dir: str, supernet: str | None,
                 *, device: str | None = None) -> tuple[Refined, ...]:
    """Fine-tune this machine's front of a supernet study from its supernet; one outcome per member.

    Nothing when the study is not a supernet study, ``fidelity.final_steps`` is 0, or the supernet is missing.
    """
    steps = spec.fidelity.final_steps
    if spec.fidelity.kind != "supernet" or steps == 0 or supernet is None or not os.path.isfile(supernet):
        return ()
    device = device or spec.train.device
    train_cfg = spec.train.model_copy(update={"steps": steps, "lr": spec.train.lr * spec.fidelity.finetune_lr_scale})
    out: list[Refined] = []
    while todo := [v for v in store.front(spec.name, hardware=this_hardware(device))
                   if v.number not in {r.number for r in out}]:  # a member that falls off lets another in: it too
        out.extend(_refine(store, spec, artefacts_dir, supernet, view, train_cfg) for view in todo)
    return tuple(out)


def _refine(store: Store, spec: StudySpec, artefacts_dir: str, supernet: str, view: TrialView,
            train_cfg: TrainConfig) -> Refined:
    """One member cut again, fine-tuned, measured and stored; on failure its first result stands."""
    assert view.candidate is not None  # a front member
    before = view.flat.get("accuracy")
    folder = (os.path.join(artefacts_dir, f"trial_{view.number:05d}-final") if spec.storage.retention != "none"
              else None)
    t0 = time.time()
    try:
        with torch_threads(spec.resources.torch_threads):
            result = run_trial(view.candidate, spec.task, train_cfg=train_cfg, measure_cfg=spec.measure,
                               teacher=spec.teacher, weights_out=folder, supernet=supernet)
        replaced = store.refine_trial(spec.name, view.number, result,
                                      TrialCost.from_result(result, wall_s=time.time() - t0))
    except NASError as e:
        log.warning("trial %d: fine-tuning from the supernet failed; its first result stands: %s", view.number, e)
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        return Refined(view.number, before, failed=str(e).splitlines()[0])
    for path in replaced:
        shutil.rmtree(path, ignore_errors=True)
    log.info("trial %d: fine-tuned %d steps from the supernet: dev accuracy %s -> %s", view.number,
             train_cfg.steps, before, result.accuracy)
    return Refined(view.number, before, result.accuracy)
