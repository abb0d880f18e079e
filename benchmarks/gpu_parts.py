"""Campaign parts about the meters and the device: meter truth, attribution under packing, packing throughput.

Each part takes the :class:`gpu_campaign.Campaign` and returns a JSON-ready dict with its figures,
``targets`` (the acceptance figures, met or not, with why not) and ``skipped`` (what could not run here,
and why). See ``benchmarks/gpu_campaign.py``.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing as mp
import os
import statistics
import time
from typing import Any

import torch
from gpu_campaign import Campaign, energy_row, target

from evaluators.measure import coefficient_of_variation, make_inputs, measure_inference
from evaluators.meters import EnergyMeter, make_meter, synchronize
from evaluators.serving import measure_serving
from nas.config import Candidate, TrainConfig
from nas.errors import MeterUnavailableError
from nas.models import build

__all__ = ["meter_truth", "attribution", "packing", "paired_windows", "VOCAB"]

#: Vocabulary of the random-token measurements (BERT's); the dry run uses a small one.
VOCAB = 30522
DRY_VOCAB = 1000


def _vocab(c: Campaign) -> int:
    return DRY_VOCAB if c.dry_run else VOCAB


def _model(c: Campaign, cand: Candidate) -> Any:
    torch.manual_seed(0)
    return build(cand, vocab_size=_vocab(c), num_labels=2).to(c.device).eval()


def _runner(c: Campaign, model: Any) -> tuple[Any, float]:
    """``run(n)`` running ``n`` batches of the protocol's shape, and its seconds per batch (warm)."""
    ids, mask = make_inputs(c.measure.batch_size, c.measure.seq_len, _vocab(c), device=c.device)

    def run(n: int) -> None:
        with torch.inference_mode():
            for _ in range(n):
                model(ids, mask)

    run(3)
    synchronize(c.device)
    t0 = time.perf_counter()
    run(5)
    synchronize(c.device)
    return run, max((time.perf_counter() - t0) / 5, 1e-6)


def paired_windows(primary: EnergyMeter, other: EnergyMeter, run: Any, iters: int, n: int,
                   device: str) -> list[dict[str, Any]]:
    """``n`` windows of ``iters`` batches read by both meters at once (``other`` nested in ``primary``)."""
    rows = []
    for i in range(n):
        key = f"pair-{i}"
        synchronize(device)
        primary.begin(key)
        other.begin(key)
        run(iters)
        synchronize(device)
        b = other.end(key)
        a = primary.end(key)
        # On a GPU the primary meter reads the board: compare the other meter's GPU share when it has one
        # (CodeCarbon's total adds CPU and RAM).
        b_j = b.gpu_energy_j if device.startswith("cuda") and b.gpu_energy_j is not None else b.energy_j
        ratio = (b_j / a.energy_j) if a.energy_j and b_j is not None else None
        rows.append({"primary_j": a.energy_j, "other_j": b_j, "other_total_j": b.energy_j,
                     "primary_s": a.duration_s, "other_s": b.duration_s, "other_over_primary": ratio,
                     "other_is_estimate": b.is_estimate})
    return rows


def _compare(c: Campaign, primary: EnergyMeter, run: Any, iter_s: float) -> tuple[dict[str, Any], list[dict], list]:
    comparisons: dict[str, Any] = {}
    skipped, targets = [], []
    for name in c.compare:
        try:
            other = make_meter(name, c.measure, device=c.device)
        except MeterUnavailableError as e:
            skipped.append({"what": f"{c.meter} against {name}", "why": str(e).splitlines()[0]})
            continue
        window_s = c.measure.window_s * (3 if name == "codecarbon" else 2)
        n = 1 if name == "codecarbon" else c.repeats
        with contextlib.closing(other):
            rows = paired_windows(primary, other, run, max(1, math.ceil(window_s / iter_s)), n, c.device)
        ratios = [r["other_over_primary"] for r in rows if r["other_over_primary"] is not None]
        gap = abs(statistics.fmean(ratios) - 1.0) if ratios else None
        comparisons[name] = {"meter": other.name, "is_estimate": other.is_estimate, "windows": rows,
                             "mean_ratio": statistics.fmean(ratios) if ratios else None, "gap": gap}
        if name == "nvml-power":
            targets.append(target("NVML counter vs integrated instant power (gap)", gap, "<= 5%",
                                  lambda g: g <= 0.05, "the two NVML sources disagree beyond 5% over "
                                  "the same windows; see the per-window rows"))
    return comparisons, skipped, targets


def meter_truth(c: Campaign) -> dict[str, Any]:
    """The large candidate measured ``repeats`` times (CV of J/sample), and the meters compared on one window set."""
    cand = c.large()
    model = _model(c, cand)
    n_params = sum(p.numel() for p in model.parameters())
    meter = make_meter(c.meter, c.measure, device=c.device)
    with contextlib.closing(meter):
        repeats = [energy_row(measure_inference(model, c.measure, vocab_size=_vocab(c), device=c.device, meter=meter))
                   for _ in range(c.repeats)]
        run, iter_s = _runner(c, model)
        comparisons, skipped, targets = _compare(c, meter, run, iter_s)
    per = [r["j_per_sample"] for r in repeats if r["j_per_sample"] is not None]
    cv = coefficient_of_variation(per)
    targets.insert(0, target(f"repeat CV of J/sample ({n_params / 1e6:.1f}M params)", cv, "<= 2%",
                             lambda v: v <= 0.02, "repeats differ beyond 2%: see the per-repeat rows "
                             "(window length, clocks, temperature)"))
    return {"candidate": cand.model_dump(mode="json"), "n_params": n_params, "meter": meter.name,
            "is_estimate": meter.is_estimate, "repeats": repeats, "repeat_cv": cv, "comparisons": comparisons,
            "skipped": skipped, "targets": targets}


# ----------------------------------------------------------------------------------------- attribution
def _trainer(device: str, seconds: float, steps: Any, ready: Any) -> None:
    """A trial's training on ``device`` through the lane, as the pipeline runs it (a child process)."""
    from evaluators.lane import MeasurementLane
    from evaluators.serving import device_key
    from evaluators.tasks import load_task
    from evaluators.train import build_for_task, train

    torch.set_num_threads(1)
    task = load_task("builtin:longmatch", max_len=64)
    model = build_for_task(Candidate(n_layers=2, d_model=128, n_heads=4, d_ffn=256, max_len=64), task)
    lane = MeasurementLane(device_key(device))
    lane.enter_shared()

    def step(i: int, _model: Any) -> None:
        with steps.get_lock():
            steps.value += 1
        ready.set()
        lane.step_boundary()

    try:
        train(model, task, TrainConfig(steps=10**7, max_seconds=seconds, device=device, batch_size=32), callback=step)
    finally:
        lane.close()


def attribution(c: Campaign) -> dict[str, Any]:
    """The large candidate's J/sample alone, then while two trials train on the device through the lane."""
    os.environ.setdefault("NAS_LANE_DIR", str(c.out / "lanes"))  # the children inherit it
    cand = c.large()
    model = _model(c, cand)
    meter = make_meter(c.meter, c.measure, device=c.device)
    ctx = mp.get_context("spawn")
    steps, ready = ctx.Value("l", 0), [ctx.Event() for _ in range(2)]
    procs = [ctx.Process(target=_trainer, args=(c.device, 30.0 if c.dry_run else 90.0, steps, r), daemon=True)
             for r in ready]
    with contextlib.closing(meter):
        alone = measure_serving(model, cand, c.measure, vocab_size=_vocab(c), device=c.device, meter=meter)
        for p in procs:
            p.start()
        try:
            # Both trainers must be stepping (lane members): one still starting up is invisible to the lane.
            if not all(r.wait(120) for r in ready):
                raise RuntimeError("the training processes did not start a step within 120 s")
            before = steps.value
            packed = measure_serving(model, cand, c.measure, vocab_size=_vocab(c), device=c.device, meter=meter)
            during = steps.value - before
        finally:
            for p in procs:
                p.terminate()
                p.join(10)
    a, b = alone.energy_per_sample_j, packed.energy_per_sample_j
    gap = abs(b / a - 1.0) if a and b else None
    return {"candidate": cand.model_dump(mode="json"), "alone": energy_row(alone), "packed": energy_row(packed),
            "packed_device_use": packed.provenance.device_use, "trainer_steps_during_measurement": during,
            "gap": gap, "targets": [target("J/sample with two trials training vs alone (gap)", gap, "<= 5%",
                                           lambda g: g <= 0.05, "the lane did not keep the other trials' "
                                           "work out of the windows; see packed_device_use")]}


# ------------------------------------------------------------------------------------------- packing
def _packing_spec(c: Campaign, name: str, gpus: float, concurrent: int) -> Any:
    from nas.spec import default_spec

    changes: dict[str, Any] = {
        "name": name, "budget.trials": c.packing_trials, "resources.gpus_per_trial": gpus,
        "resources.max_concurrent": concurrent, "resources.cpus_per_trial": 1,
        "storage.url": str(c.out / "packing.db"), "storage.retention": "none",
    }
    if c.packing_wall_s < 1e8:
        changes["budget.wall_s"] = c.packing_wall_s
    if c.dry_run:
        changes.update({"train.steps": 5, "fidelity.rungs": [5], "measure": c.measure.model_dump()})
    return default_spec().with_overrides(**changes)


def _arm(c: Campaign, label: str, gpus: float, concurrent: int) -> dict[str, Any]:
    from nas.runner.api import open_store, search

    spec = _packing_spec(c, f"packing-{concurrent}x", gpus, concurrent)
    summary = search(spec)
    done = [t for t in open_store(str(c.out / "packing.db")).trials(spec.name) if t.state == "COMPLETE"]
    starts = [t.started_utc for t in done if t.started_utc]
    ends = [t.finished_utc for t in done if t.finished_utc]
    span = (max(ends) - min(starts)).total_seconds() if starts and ends else None
    return {"label": label, "gpus_per_trial": gpus, "max_concurrent": concurrent, "complete": len(done),
            "failed": summary.n_failed, "search_wall_s": summary.wall_s, "trials_span_s": span,
            "trials_per_min": len(done) / span * 60 if span else None,
            "energy_meters": list(summary.energy_meters), "energy_is_estimate": summary.energy_is_estimate}


def packing(c: Campaign) -> dict[str, Any]:
    """The default study's trials per minute, one trial per device against four (two on a CPU dry run)."""
    gpu = c.device.startswith("cuda")
    arms = ([("1.0 GPU per trial", 1.0, 1), ("0.25 GPU per trial", 0.25, 4)] if gpu
            else [("one CPU trial at a time", 0.0, 1), ("two CPU trials at once", 0.0, 2)])
    import ray

    (c.out / "packing.db").unlink(missing_ok=True)  # a rerun measures afresh, never resumes
    ray.init(address="local", include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:  # one Ray for both arms: a search leaves a Ray it did not start running
        rows = [_arm(c, *arm) for arm in arms]
    finally:
        ray.shutdown()
    a, b = rows[0]["trials_per_min"], rows[1]["trials_per_min"]
    gain = b / a if a and b else None
    return {"arms": rows, "gain": gain,
            "note": "trials per minute = complete trials / (last finish - first start); Ray's start-up is "
                    "outside that span",
            "targets": [target(f"trials per minute, {arms[1][0]} vs {arms[0][0]}", gain, ">= 3x",
                               lambda g: g >= 3.0, "the packed trials contend for the device (or the CPU "
                               "feeding it); see each arm's span")]}
