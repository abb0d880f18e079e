"""Measurement overhead inside a real trial's training window.

Trains the same candidate on the same task, alternating two arms, ``--repeats`` times each:

* ``bare``: ``evaluators.train.train`` alone;
* ``metered``: what ``evaluators.pipeline.run_trial`` adds around training: a meter window
  (``begin("train")``/``end("train")``, with the meter's polling thread if it has one) and the
  measurement lane (a shared lock taken and released at every step boundary).

Reports the median wall time of each arm and the relative overhead, and writes
``benchmarks/results/trial_overhead.json``.

    python benchmarks/trial_overhead.py --meter codecarbon --steps 300 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--meter", default="codecarbon")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--task", default="builtin:longmatch")
    ap.add_argument("--out", default="benchmarks/results/trial_overhead.json")
    args = ap.parse_args()

    import torch

    from evaluators.lane import MeasurementLane
    from evaluators.meters import make_meter
    from evaluators.tasks import load_task
    from evaluators.train import build_for_task, train
    from nas.config import Candidate, MeasureConfig, TrainConfig

    torch.set_num_threads(1)
    cand = Candidate(max_len=64)
    task = load_task(args.task, max_len=64)
    cfg = TrainConfig(steps=args.steps, lr=2e-3, device="cpu")
    meter = make_meter(args.meter, MeasureConfig(meter=args.meter), device="cpu")  # type: ignore[arg-type]
    lane = MeasurementLane("cpu")
    times: dict[str, list[float]] = {"bare": [], "metered": []}
    for _ in range(args.repeats):
        for arm in ("bare", "metered"):
            model = build_for_task(cand, task, seed=0)
            t0 = time.perf_counter()
            if arm == "bare":
                train(model, task, cfg)
            else:
                meter.begin("train")
                lane.enter_shared()
                train(model, task, cfg, callback=lambda _s, _m: lane.step_boundary())
                lane.leave_shared()
                meter.end("train")
            times[arm].append(time.perf_counter() - t0)
    # Components, measured directly (the end-to-end difference above is within run-to-run noise):
    n = 20000
    lane.enter_shared()
    t0 = time.perf_counter()
    for _ in range(n):
        lane.step_boundary()
    lane_step_s = (time.perf_counter() - t0) / n
    lane.leave_shared()
    t0 = time.perf_counter()
    for i in range(20):
        meter.begin(f"w{i}")
        meter.end(f"w{i}")
    window_pair_s = (time.perf_counter() - t0) / 20
    cpu0, w0 = time.process_time(), time.perf_counter()
    meter.begin("idle")
    time.sleep(10.0)
    meter.end("idle")
    poll_cpu_per_s = (time.process_time() - cpu0) / (time.perf_counter() - w0)
    meter.close()
    lane.close()
    bare, metered = statistics.median(times["bare"]), statistics.median(times["metered"])
    pairs = [m / b - 1.0 for b, m in zip(times["bare"], times["metered"], strict=True)]
    result = {
        "command": f"python benchmarks/trial_overhead.py --meter {args.meter} --steps {args.steps} "
                   f"--repeats {args.repeats} --task {args.task}",
        "meter": args.meter, "steps": args.steps, "repeats": args.repeats, "torch_threads": 1,
        "load_average_1min_at_end": float(Path("/proc/loadavg").read_text().split()[0]),
        "cpus": os.cpu_count(),
        "bare_s": times["bare"], "metered_s": times["metered"],
        "bare_median_s": bare, "metered_median_s": metered,
        "overhead_rel_median_of_pairs": statistics.median(pairs),
        "overhead_rel_of_medians": metered / bare - 1.0,
        "lane_step_boundary_s": lane_step_s,
        "meter_begin_end_pair_s": window_pair_s,
        "meter_background_cpu_s_per_s": poll_cpu_per_s,
        "overhead_bound_rel": (args.steps * lane_step_s + window_pair_s + poll_cpu_per_s * bare) / bare,
        "overhead_bound_note": "steps x lane cost + one window pair + the meter thread's CPU share over the "
                               "bare training time: an upper bound, since the thread mostly sleeps",
    }
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if not isinstance(v, list)}, indent=2))


if __name__ == "__main__":
    main()
