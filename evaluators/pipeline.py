"""One trial, end to end: load the task (and teacher), build the candidate, train it briefly (dense,
then compressed and fine-tuned), evaluate accuracy, measure inference energy in its serving form, and
return one frozen :class:`nas.records.TrialResult`.

Compression schedule: a candidate with pruning or quantization trains dense for ``DENSE_FRACTION`` of
its step budget, is then compressed in place (prune first, then fake-quant with a straight-through
estimator), and fine-tunes for the rest. A candidate without compression trains for the whole budget.
Training energy covers both phases (one meter window, ``train``).

The inference measurement runs on the form that really executes here: fake-quant weights are baked
(``materialize_``) so that no quantization arithmetic is timed; on CPU, 8-bit attention/FFN weights run
through torch's real int8 dynamic-quantization kernel where available. The record's ``kernels`` says
which, and whether the energy effect of the compression is only simulated.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from evaluators.lane import MeasurementLane
from nas.config import Candidate, MeasureConfig, TrainConfig
from nas.errors import ConfigError, TrialFailedError
from nas.records import EvalMetrics, TrainSummary, TrialResult

__all__ = ["run_trial", "DENSE_FRACTION", "save_trial_weights", "load_trial_model", "serving_copy",
           "measure_serving"]

log = logging.getLogger(__name__)

#: Share of the step budget trained dense before a compressed candidate is pruned/quantized.
DENSE_FRACTION = 0.5


@functools.lru_cache(maxsize=4)
def _cached_task(spec: str, seed: int, max_len: int) -> Any:
    from evaluators.tasks import load_task

    return load_task(spec, seed=seed, max_len=max_len)


@functools.lru_cache(maxsize=2)
def _cached_teacher(spec: str, task_key: tuple[str, int, int]) -> Any:
    from evaluators.teacher import load_teacher

    task = _cached_task(*task_key)
    return load_teacher(spec, task, seed=task_key[1])


def serving_copy(model: Any, candidate: Candidate, device: str) -> tuple[Any, str]:
    """A copy of ``model`` in the form that really runs (baked weights, real int8 where available),
    and the ``kernels`` label saying what runs and whether the compression's effect is only simulated."""
    import torch

    from nas.compress import convert_int8_for_cpu, materialize_

    serving = copy.deepcopy(model).eval()
    rep = getattr(model, "compression_report", None)
    kernels = rep.kernels if rep is not None else "dense fp32 (torch eager)"
    simulated = bool(rep.simulated) if rep is not None else False
    if rep is not None:
        materialize_(serving)
    q = candidate.quant
    if device == "cpu" and 8 in (q.attention_bits, q.ffn_bits) and not torch.cuda.is_available():
        int8 = convert_int8_for_cpu(serving, q)
        kernels = f"{int8.kernels}; {kernels}"
        simulated = simulated and int8.simulated
    if simulated:
        kernels += " [accuracy effect simulated; no energy saving measured from it]"
    return serving, kernels


def measure_serving(model: Any, candidate: Candidate, cfg: MeasureConfig, *, vocab_size: int, device: str,
                    meter: Any) -> Any:
    """Measure ``model``'s inference energy in its serving form, inside the device's exclusive lane."""
    serving, kernels = serving_copy(model, candidate, device)
    lane = MeasurementLane(_device_key(device))
    try:
        with lane.exclusive() as waited_s:
            inference = _measure(serving, cfg, vocab_size, device, meter, kernels)
        log.debug("waited %.2f s for the measurement lane", waited_s)
    finally:
        lane.close()
    return inference


def _phase_rungs(rungs: Sequence[int], start: int, end: int) -> list[int]:
    return [r - start for r in rungs if start < r <= end]


def run_trial(
    candidate: Candidate,
    task: str,
    *,
    train_cfg: TrainConfig,
    measure_cfg: MeasureConfig,
    teacher: str | None = None,
    rungs: Sequence[int] = (),
    on_rung: Callable[[int, float], bool | None] | None = None,
    weights_out: str | Path | None = None,
    progress: bool = False,
) -> TrialResult:
    """Train, compress, evaluate and measure ``candidate`` on ``task``.

    Args:
        candidate: the frozen candidate.
        task: ``builtin:NAME`` or a data file/folder.
        train_cfg: brief-training budget and optimiser settings.
        measure_cfg: energy protocol settings (meter, batch, sequence length, windows).
        teacher: ``None``, ``auto`` or a local Hugging Face folder. Needed when the candidate distills.
        rungs: training steps (global) at which dev accuracy is reported through ``on_rung``.
        on_rung: ``on_rung(step, accuracy)``; returning True stops training early.
        weights_out: folder to write the trained weights, candidate, tokenizer and labels to.
        progress: log progress at INFO level (the CLI shows it).

    Raises:
        ConfigError: the candidate and task do not fit (e.g. distillation without a teacher).
        TrialFailedError: NaN/inf loss, out-of-memory, or a measurement that could not run.
    """
    import torch

    from evaluators.meters import make_meter
    from evaluators.metrics import evaluate
    from evaluators.train import build_for_task, resolve_device, train
    from nas.compress import apply_candidate_compression, model_size_bytes

    t_start = time.time()
    device = str(resolve_device(train_cfg.device))
    task_key = (task, train_cfg.seed, candidate.max_len)
    task_data = _cached_task(*task_key)
    teach = None
    if candidate.distill.kind != "none":
        if not teacher:
            raise ConfigError(
                f"the candidate distills ({candidate.distill.kind!r}) but no teacher was given",
                field="teacher", fix="pass --teacher auto (a cached self-trained teacher) or a local HF folder, "
                "or set distill.kind: none",
            )
        teach = _cached_teacher(teacher, task_key)
        if teach is not None and getattr(teach.tokenizer, "is_hf", False):
            task_data = teach.adapt_task(task_data)
    model = build_for_task(candidate, task_data, seed=train_cfg.seed)

    meter = make_meter(measure_cfg.meter, measure_cfg, device=device)
    lane = MeasurementLane(_device_key(device))
    try:
        compress = not (candidate.quant.is_noop and candidate.sparsity.is_noop)
        total = train_cfg.steps
        dense_steps = max(1, int(total * DENSE_FRACTION)) if compress and total > 1 else total
        phases: list[tuple[int, int, bool]] = [(0, dense_steps, False)]
        if dense_steps < total:
            phases.append((dense_steps, total, True))
        rung_acc: list[tuple[int, float]] = []
        stopped = False
        steps_done = 0
        losses: list[float] = []
        wall_train = 0.0
        meter.begin("train")
        lane.enter_shared()
        for start, end, do_compress in phases:
            if do_compress:
                apply_candidate_compression(model)
            offset = start

            def report(step: int, acc: float, _o: int = offset) -> bool | None:
                rung_acc.append((step + _o, acc))
                return on_rung(step + _o, acc) if on_rung else None

            secs = None
            if train_cfg.max_seconds is not None:
                secs = train_cfg.max_seconds * (end - start) / total
            cfg = train_cfg.model_copy(update={"steps": end - start, "max_seconds": secs,
                                               "seed": train_cfg.seed + start})
            res = train(model, task_data, cfg, teacher=teach, distill=candidate.distill if teach else None,
                        rungs=_phase_rungs(rungs, start, end), report=report,
                        callback=lambda _step, _model: lane.step_boundary())
            steps_done += res.steps
            losses.append(res.final_loss)
            wall_train += res.wall_s
            if res.stopped_early:
                stopped = True
                break
        if compress and not hasattr(model, "compression_report"):
            apply_candidate_compression(model)  # a one-step budget: compress before evaluating
        lane.leave_shared()
        train_reading = meter.end("train")
        if stopped:
            return TrialResult(candidate=candidate, task=task_data.name, status="PRUNED",
                               error=f"stopped early at step {steps_done}")
        metrics: EvalMetrics = evaluate(model, task_data, batch_size=train_cfg.eval_batch_size, test=True)
        train_summary = TrainSummary(
            steps=steps_done, wall_s=wall_train, final_loss=losses[-1],
            energy_j=train_reading.energy_j, meter=train_reading.meter, is_estimate=train_reading.is_estimate,
            co2eq_g=train_reading.co2eq_g, device=device, teacher=getattr(teach, "name", None),
            rung_accuracies=tuple(rung_acc),
        )

        lane.close()  # the training lane handle; measure_serving takes the device exclusively
        inference = measure_serving(model, candidate, measure_cfg, vocab_size=task_data.vocab_size,
                                    device=device, meter=meter)
        kernels = inference.kernels
        flops = _flops(model, measure_cfg.seq_len, task_data.vocab_size)
        params = int(sum(p.numel() for p in model.parameters()))
        size = model_size_bytes(model)
        peak = torch.cuda.max_memory_allocated() if device.startswith("cuda") else None
        weights_path = None
        if weights_out is not None:
            weights_path = str(save_trial_weights(weights_out, model, candidate, task_data))
    except torch.cuda.OutOfMemoryError as e:
        raise TrialFailedError(f"out of memory: {e}", fix="lower batch_size or pick a smaller space") from e
    finally:
        if not lane.closed:
            lane.close()
        meter.close()

    log.info("trial done in %.1f s: accuracy %.4f, %s", time.time() - t_start, metrics.accuracy,
             inference.meter)
    return TrialResult(
        candidate=candidate, task=task_data.name, status="COMPLETE", metrics=metrics, train=train_summary,
        inference=inference, params=params, size_bytes=size, flops_per_sample=flops, peak_mem_bytes=peak,
        kernels=kernels, weights_path=weights_path,
    )


def _device_key(device: str) -> str:
    """The lane key: one lane per physical device (GPU UUID), or ``cpu``."""
    if device.startswith("cuda"):
        import torch

        idx = torch.device(device).index or 0
        uuid = getattr(torch.cuda.get_device_properties(idx), "uuid", None)
        return f"gpu-{uuid}" if uuid is not None else f"gpu-{idx}"
    return "cpu"


def _measure(model: Any, cfg: MeasureConfig, vocab_size: int, device: str, meter: Any, kernels: str) -> Any:
    from evaluators.measure import measure_inference

    return measure_inference(model, cfg, vocab_size=vocab_size, device=device, meter=meter, kernels=kernels)


def _flops(model: Any, seq_len: int, vocab_size: int) -> float | None:
    import torch

    from nas.models import EncoderClassifier
    from nas.models.flops import count_flops

    inner = model
    if not isinstance(inner, EncoderClassifier):
        return None
    ids = torch.randint(1, max(2, vocab_size), (1, seq_len))
    try:
        return float(count_flops(inner, ids))
    except Exception as e:  # int8 dynamic kernels are not counted by FlopCounterMode
        log.debug("FLOP count failed: %s", e)
        return None


def save_trial_weights(folder: str | Path, model: Any, candidate: Candidate, task: Any) -> Path:
    """Write ``model.safetensors``, ``candidate.json``, the tokenizer and ``labels.json`` to ``folder``.

    The model is rebuilt exactly by :func:`load_trial_model`: build, compress, load the state dict.
    """
    from safetensors.torch import save_file

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"))
    (out / "candidate.json").write_text(candidate.model_dump_json(indent=2))
    task.tokenizer.save(out / "tokenizer")
    (out / "labels.json").write_text(json.dumps({
        "label_names": list(task.label_names), "num_labels": task.num_labels, "max_len": task.max_len,
        "vocab_size": task.vocab_size, "task": task.name,
        "compressed": hasattr(model, "compression_report"),
    }, indent=2))
    return out


def load_trial_model(folder: str | Path) -> tuple[Any, Candidate, Any, dict[str, Any]]:
    """Rebuild a saved trial: ``(model, candidate, tokenizer, labels_info)``; the model is in eval mode."""
    from safetensors.torch import load_file

    from evaluators.tokenize import load_tokenizer
    from nas.compress import apply_candidate_compression
    from nas.models import build

    f = Path(folder)
    if not (f / "model.safetensors").exists():
        raise ConfigError(f"{f}: no model.safetensors here", fix="point at a folder written by a trial or export")
    candidate = Candidate.from_json((f / "candidate.json").read_text())
    info = json.loads((f / "labels.json").read_text())
    model = build(candidate, vocab_size=int(info["vocab_size"]), num_labels=int(info["num_labels"]))
    if info.get("compressed"):
        apply_candidate_compression(model)
    model.load_state_dict(load_file(str(f / "model.safetensors")))
    model.eval()
    tok = load_tokenizer(f / "tokenizer")
    return model, candidate, tok, info
