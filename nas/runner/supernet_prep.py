"""The supernet of a ``fidelity.kind: supernet`` study: trained once by the driver, before the first trial.

:func:`prepare_supernet` trains the space's weight-sharing supernet (:mod:`evaluators.supernet`) in the
study's artefacts folder (``supernet/``), metered with the study's meter, distilling from the study's
teacher when there is one. Each checkpoint stores the record (progress and the joules spent so far, over
every run) in the study's ``nas_supernets`` row, so a driver killed with SIGKILL loses at most
``fidelity.checkpoint_every`` steps, and the joules it spent still count. ``nas search --resume`` continues
from the checkpoint. Trials then cut their candidates from ``supernet/supernet.pt``
(:func:`supernet_file`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from torch import Tensor

from evaluators.pipeline import TrialContext, cached_task, load_teacher_for
from evaluators.supernet import FINAL, SupernetConfig, supernet_candidate, supernet_key, train_supernet
from nas.records import TrainSummary
from nas.runner.teacher_prep import progress_bars
from nas.spec import StudySpec
from nas.supernet_record import SupernetRecord
from search_spaces import load_space
from storage import Store

__all__ = ["supernet_folder", "supernet_file", "supernet_config", "prepare_supernet"]

log = logging.getLogger(__name__)


def supernet_folder(artefacts_dir: str) -> str:
    """Where a study's supernet, and its checkpoint, are kept."""
    return os.path.join(artefacts_dir, "supernet")


def supernet_file(artefacts_dir: str) -> str:
    """The trained supernet that trials cut their candidates from."""
    return os.path.join(supernet_folder(artefacts_dir), FINAL)


def supernet_config(spec: StudySpec) -> SupernetConfig:
    """The supernet's training settings: ``fidelity`` (steps, sandwich, checkpoints) and ``train`` (optimiser)."""
    f, t = spec.fidelity, spec.train
    return SupernetConfig(steps=f.steps, sandwich=f.sandwich, checkpoint_every=f.checkpoint_every,
                          batch_size=t.batch_size, lr=t.lr, weight_decay=t.weight_decay,
                          warmup_fraction=t.warmup_fraction, grad_clip=t.grad_clip, seed=t.seed)


def prepare_supernet(spec: StudySpec, store: Store, artefacts_dir: str, *, progress: bool = False) -> str | None:
    """Train the study's supernet, or resume or reuse it; the file trials cut from (None: not a supernet study).

    Args:
        spec: The study (its teacher already resolved to a folder by :func:`prepare_teacher`).
        store: Where the study's supernet record goes, at every checkpoint.
        artefacts_dir: The study's artefacts folder.
        progress: Draw a progress bar (the CLI).

    Raises:
        TrialFailedError: The supernet's loss diverged (its last checkpoint stays).
        ConfigError: The teacher or the task cannot be loaded.
    """
    if spec.fidelity.kind != "supernet":
        return None
    space = load_space(spec.space.preset, spec.space.overrides)
    cfg = supernet_config(spec)
    task = cached_task(spec.task, cfg.seed, space.max_len)
    shape = supernet_candidate(space)
    with TrialContext.open(spec.train, spec.measure) as ctx, progress_bars(progress) as bars:
        teach = load_teacher_for(spec.teacher, task, cfg.seed, ctx) if spec.teacher is not None else None
        teacher: Callable[[Tensor, Tensor], Tensor] | None = None
        if teach is not None:
            task = teach.adapt_task(task)  # the supernet, like every student, speaks the teacher's tokenizer

            def teacher(ids: Tensor, mask: Tensor) -> Tensor:
                return teach(ids, attention_mask=mask).logits  # type: ignore[no-any-return]
        key = supernet_key(space, task.source, cfg, teach.name if teach is not None else None)
        final = supernet_file(artefacts_dir)

        def record(done: int, train: TrainSummary, resumed: int | None = None) -> SupernetRecord:
            return SupernetRecord(path=final, key=key, candidate=shape, steps_done=done, steps_total=cfg.steps,
                                  train=train, resumed_from=resumed)

        run = train_supernet(space, task, cfg, folder=supernet_folder(artefacts_dir), key=key, meter=ctx.meter,
                             device=ctx.device, teacher=teacher,
                             on_checkpoint=lambda done, train: store.put_supernet(spec.name, record(done, train)),
                             progress=bars.callback("training the supernet"))
    store.put_supernet(spec.name, record(run.steps, run.train, run.resumed_from))
    if run.resumed_from:
        log.info("supernet: resumed from step %d; %d steps done", run.resumed_from, run.steps)
    return run.path
