"""``--retrain STEPS``: train the chosen candidate longer, then re-measure accuracy and energy.

With saved weights, training continues from them for ``STEPS`` more optimizer steps (a fresh warmup and
cosine schedule, the study's optimiser settings, its teacher when the candidate distills). Without them,
the candidate is trained from scratch for ``STEPS`` steps by :func:`evaluators.pipeline.run_trial`, with
the same dense-then-compress schedule as the search. Either way the result is a new
:class:`~nas.records.TrialResult` measured with the study's own protocol (``spec.measure``), so the final
numbers are comparable with the search-time ones, which stay in the database untouched.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from nas.config import Candidate
from nas.errors import ConfigError
from nas.records import TrainSummary, TrialResult
from nas.spec import StudySpec

from .source import SavedWeights, load_weights

__all__ = ["retrain_from_scratch", "continue_training"]

log = logging.getLogger(__name__)


def retrain_from_scratch(candidate: Candidate, spec: StudySpec, steps: int) -> tuple[SavedWeights, TrialResult]:
    """Train ``candidate`` from scratch for ``steps`` steps on the study's task and measure it."""
    from evaluators.pipeline import run_trial

    cfg = spec.train.model_copy(update={"steps": steps, "max_seconds": None})
    with tempfile.TemporaryDirectory(prefix="nas-retrain-") as tmp:
        result = run_trial(candidate, spec.task, train_cfg=cfg, measure_cfg=spec.measure, teacher=spec.teacher,
                           weights_out=Path(tmp) / "weights")
        saved = load_weights(Path(tmp) / "weights", candidate)
    return saved, _without_weights_path(result)


def _without_weights_path(result: TrialResult) -> TrialResult:
    import dataclasses

    return dataclasses.replace(result, weights_path=None)


def continue_training(saved: SavedWeights, candidate: Candidate, spec: StudySpec, task: Any,
                      steps: int) -> TrialResult:
    """Train the loaded model ``steps`` more steps in place, then evaluate and measure it.

    Raises:
        ConfigError: The candidate distills but the study names no teacher.
        TrialFailedError: NaN loss, or the measurement could not run.
    """
    import torch

    from evaluators.meters import make_meter
    from evaluators.metrics import evaluate
    from evaluators.train import resolve_device, train
    from nas.compress import model_size_bytes
    from nas.models.flops import count_flops

    model = saved.model
    teacher = None
    if candidate.distill.kind != "none":
        if not spec.teacher:
            raise ConfigError("the candidate distills but the study spec names no teacher", field="teacher",
                              fix="set teacher in the study spec, or export without --retrain")
        from evaluators.teacher import load_teacher

        teacher = load_teacher(spec.teacher, task, seed=spec.train.seed)
    device = str(resolve_device(spec.train.device))
    meter = make_meter(spec.measure.meter, spec.measure, device=device)
    try:
        # A new seed so the extra steps see batches in a new order rather than replaying the search's.
        cfg = spec.train.model_copy(update={"steps": steps, "max_seconds": None, "seed": spec.train.seed + 1})
        model.train()
        res = train(model, task, cfg, teacher=teacher, distill=candidate.distill if teacher else None, meter=meter)
        model.eval()
        metrics = evaluate(model, task, batch_size=spec.train.eval_batch_size, test=True)

        from evaluators.pipeline import measure_serving

        inference = measure_serving(model, candidate, spec.measure, vocab_size=task.vocab_size, device=device,
                                    meter=meter)
    finally:
        meter.close()
    flops: float | None = None
    try:
        ids = torch.randint(1, max(2, task.vocab_size), (1, spec.measure.seq_len))
        flops = float(count_flops(model.cpu(), ids))
    except Exception as e:  # pragma: no cover - counting is best effort, as in the search
        log.debug("FLOP count failed: %s", e)
    summary = res.to_summary()
    train_summary = TrainSummary(**{**summary.to_dict(), "rung_accuracies": ()})
    return TrialResult(
        candidate=candidate, task=task.name, status="COMPLETE", metrics=metrics, train=train_summary,
        inference=inference, params=int(sum(p.numel() for p in model.parameters())),
        size_bytes=model_size_bytes(model), flops_per_sample=flops, kernels=inference.kernels,
    )
