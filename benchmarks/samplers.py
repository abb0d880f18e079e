"""TPE, NSGA-II, the GP sampler and regularized evolution against random search at an equal trial budget,
over several seeds.

Each (sampler, seed) pair runs a real search (Ray Tune + Optuna + the trial pipeline) on a built-in
task into one SQLite file. The model-based samplers (TPE, GP), NSGA-II's first population and
evolution's population start from ``max(4, trials // 4)`` random trials (fewer than the budget);
evolution's tournaments draw ``max(2, population // 4)`` members. For each seed, the hypervolume of
(accuracy, log10 J/sample) is computed against one reference point shared by the samplers of that
seed; the report gives

* the final hypervolume of each sampler divided by random's (>1 means better than random);
* the search energy (training + measurement joules, cumulative in trial order) each sampler needed to
  first reach random's final hypervolume (``null`` if it never did).

Energy on a CPU-only machine comes from the labelled ``estimate`` meter; the result file says so.

    python benchmarks/samplers.py --trials 16 --seeds 0 1 2 --out benchmarks/results/samplers.json

A rerun keeps the studies of ``--db`` that are complete and resumes an interrupted one, so a stopped
benchmark loses at most its running trials; ``--fresh`` starts over.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
from bench_common import git_commit  # benchmarks/ is sys.path[0] when a script here runs

SAMPLERS = ("random", "tpe", "nsga2", "gp", "evolution")


def spec_for(sampler: str, seed: int, trials: int, db: str, task: str, steps: int) -> Any:
    from nas.config import MeasureConfig, TrainConfig
    from nas.spec import (
        BudgetSpec,
        FidelitySpec,
        ResourcesSpec,
        SamplerSpec,
        SpaceRef,
        StorageSpec,
        StudySpec,
    )

    startup = min(max(4, trials // 4), trials - 1)
    evolution = {"population": startup, "sample_size": max(2, startup // 4)} if sampler == "evolution" else {}
    return StudySpec(
        name=f"{sampler}-s{seed}",
        task=task,
        space=SpaceRef(preset="tiny", overrides={"sparsity": ["none", "heads", "ffn"], "max_len": 64}),
        sampler=SamplerSpec(kind=sampler, seed=seed, n_startup_trials=startup, **evolution),
        budget=BudgetSpec(trials=trials),
        fidelity=FidelitySpec(rungs=[steps], enabled=False),
        train=TrainConfig(batch_size=32, lr=2e-3, steps=steps, seed=seed),
        measure=MeasureConfig(meter="estimate", window_s=0.3, n_windows=3, idle_s=0.3, warmup_iters=3,
                              batch_size=32, seq_len=64),
        resources=ResourcesSpec(cpus_per_trial=1, max_concurrent=2),
        storage=StorageSpec(url=db, retention="none"),
    )


def curve_points(store: Any, study: str) -> tuple[list[list[float]], list[float]]:
    """(accuracy, log10 J/sample) of complete trials in trial order, and cumulative search joules."""
    pts, cum, spent = [], [], 0.0
    for v in sorted(store.trials(study), key=lambda v: v.number):
        if v.cost is not None:
            spent += (v.cost.train_energy_j or 0.0) + (v.cost.measure_energy_j or 0.0)
        vals = v.values()
        if v.state == "COMPLETE" and vals.get("accuracy") is not None and vals.get("energy_per_sample_j"):
            pts.append([vals["accuracy"], math.log10(vals["energy_per_sample_j"])])
            cum.append(spent)
    return pts, cum




def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--task", default="builtin:sentiment")
    ap.add_argument("--db", default="benchmarks/results/samplers.db")
    ap.add_argument("--out", default="benchmarks/results/samplers.json")
    ap.add_argument("--samplers", nargs="+", choices=SAMPLERS, default=list(SAMPLERS),
                    help="which samplers to run (random is always added: it is the baseline)")
    ap.add_argument("--fresh", action="store_true",
                    help="delete --db first; by default a rerun keeps its complete studies and resumes the rest")
    args = ap.parse_args()
    samplers = ["random", *[s for s in args.samplers if s != "random"]]

    import nas
    from nas.dominance import hypervolume_curve
    from storage import Store

    Path(args.db).parent.mkdir(parents=True, exist_ok=True)
    if args.fresh:
        Path(args.db).unlink(missing_ok=True)
    t0 = time.time()
    for seed in args.seeds:
        for sampler in samplers:
            t, name = time.time(), f"{sampler}-s{seed}"
            with Store.open(args.db) as store:
                status = {s.name: s.status for s in store.list_studies()}.get(name)
            if status == "COMPLETE":
                print(f"{name}: complete in {args.db}, kept", flush=True)
                continue
            if status is not None:  # interrupted: continue it (what was stored stays)
                nas.search(resume=name, db=args.db)
            else:
                nas.search(spec_for(sampler, seed, args.trials, args.db, args.task, args.steps))
            print(f"{sampler} seed {seed}: {time.time() - t:.0f} s", flush=True)
    store = Store.open(args.db, create=False)
    directions = ["maximize", "minimize"]
    per_seed = []
    for seed in args.seeds:
        data = {s: curve_points(store, f"{s}-s{seed}") for s in samplers}
        allpts = np.array([p for s in samplers for p in data[s][0]])
        ref = [float(allpts[:, 0].min()) - 0.01, float(allpts[:, 1].max()) + 0.05]  # shared per seed
        row: dict[str, Any] = {"seed": seed, "reference": ref}
        curves = {s: hypervolume_curve(data[s][0], directions, ref) for s in samplers}
        target = curves["random"][-1] if curves["random"] else 0.0
        for s in samplers:
            final = curves[s][-1] if curves[s] else 0.0
            reach = next((data[s][1][i] for i, hv in enumerate(curves[s]) if hv >= target and target > 0), None)
            row[s] = {"final_hv": final, "complete_trials": len(data[s][0]),
                      "hv_ratio_vs_random": final / target if target > 0 else None,
                      "joules_to_reach_random_final_hv": reach,
                      "total_search_joules": data[s][1][-1] if data[s][1] else None}
        per_seed.append(row)
    summary = {}
    for s in samplers:
        ratios = [r[s]["hv_ratio_vs_random"] for r in per_seed if r[s]["hv_ratio_vs_random"] is not None]
        reach = [r[s]["joules_to_reach_random_final_hv"] for r in per_seed]
        summary[s] = {"median_hv_ratio_vs_random": statistics.median(ratios) if ratios else None,
                      "joules_to_reach_random_final_hv": reach}
    result = {
        "command": f"python benchmarks/samplers.py --trials {args.trials} --seeds {' '.join(map(str, args.seeds))} "
                   f"--steps {args.steps} --task {args.task} --samplers {' '.join(samplers)} --db {args.db} "
                   f"--out {args.out}",
        "space": spec_for("random", 0, args.trials, args.db, args.task, args.steps).space.model_dump(),
        "commit": git_commit(),
        "energy_meter": "estimate (CPU TDP x utilisation; this machine has no RAPL): an ESTIMATE, not a measurement",
        "hypervolume_space": "accuracy (max) x log10(J/sample) (min), reference shared by the samplers of a seed",
        "machine": f"{platform.processor() or platform.machine()}, {__import__('os').cpu_count()} CPUs",
        "wall_s_this_invocation": time.time() - t0, "per_seed": per_seed, "summary": summary,
    }
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
