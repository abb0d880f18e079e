"""The learned cost model's held-out error on a real CPU study (issue #16 item 2).

Runs (or reuses) a random-sampler study over the ``tiny`` preset space on this machine's CPU: few
training steps (inference energy does not depend on training, ARCHITECTURE.md decision 4), one trial at a
time so that no trial trains beside another's measurement. Then, per hardware fingerprint, it reports the
k-fold cross-validated error of :class:`nas.cost_model.CostModel` fitted on the other folds' trials:

* the median absolute percentage error (MdAPE) of J/sample and of p50 latency (the acceptance number);
* the mean absolute percentage error and the 90th percentile of the absolute percentage error;
* how often the measured value fell inside the model's 10%-90% interval (its calibration);
* a baseline: the same folds predicted by the training folds' median (what no model gets);
* the same MdAPE over ``--repeats`` other random fold assignments (how much it depends on the split).

Energy on a CPU-only machine comes from the ``estimate`` meter (CPU TDP x utilisation: this machine has no
RAPL): the result file names the meter of the readings, and an estimate is labelled as one.

    python benchmarks/cost_model.py --trials 40 --steps 10 --out benchmarks/results/cost_model.json

A rerun reuses the complete study in ``--db`` (and resumes an interrupted one); ``--fresh`` starts over.
``--db OTHER.db --study NAME`` evaluates any stored study instead.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from bench_common import git_commit  # benchmarks/ is sys.path[0] when a script here runs

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

STUDY = "cost-model-s0"


def spec_for(name: str, trials: int, steps: int, db: str, task: str, seed: int) -> Any:
    """A cheap CPU study: the whole ``tiny`` space, ``steps`` training steps, one trial at a time."""
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

    return StudySpec(
        name=name,
        task=task,
        space=SpaceRef(preset="tiny"),
        sampler=SamplerSpec(kind="random", seed=seed),
        budget=BudgetSpec(trials=trials),
        fidelity=FidelitySpec(rungs=[steps], enabled=False),
        train=TrainConfig(batch_size=32, lr=2e-3, steps=steps, seed=seed),
        measure=MeasureConfig(meter="estimate", window_s=0.5, n_windows=5, idle_s=0.5, warmup_iters=5,
                              batch_size=32, seq_len=64),
        resources=ResourcesSpec(cpus_per_trial=1, max_concurrent=1, torch_threads=1),
        storage=StorageSpec(url=db, retention="none"),
    )


def run_study(args: argparse.Namespace) -> None:
    """Run the study, resume it when interrupted, keep it when complete."""
    import nas
    from storage import Store

    Path(args.db).parent.mkdir(parents=True, exist_ok=True)
    if args.fresh:
        Path(args.db).unlink(missing_ok=True)
    with Store.open(args.db) as store:
        status = {s.name: s.status for s in store.list_studies()}.get(args.study)
    if status == "COMPLETE":
        print(f"{args.study}: complete in {args.db}, reused", flush=True)
    elif status is not None:
        nas.search(resume=args.study, db=args.db)
    else:
        nas.search(spec_for(args.study, args.trials, args.steps, args.db, args.task, args.seed))
    with contextlib.suppress(OSError):  # retention none: the driver leaves the artefacts folder empty
        (Path(args.db).parent / "nas_artefacts").rmdir()




def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--steps", type=int, default=10, help="training steps per trial (energy does not depend on them)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--task", default="builtin:sentiment")
    ap.add_argument("--db", default="benchmarks/results/cost_model.db")
    ap.add_argument("--study", default=STUDY)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=5, help="fold assignments (seeds) the MdAPE range is taken over")
    ap.add_argument("--no-search", action="store_true", help="only evaluate the stored --study of --db")
    ap.add_argument("--fresh", action="store_true", help="delete --db first")
    ap.add_argument("--out", default="benchmarks/results/cost_model.json")
    args = ap.parse_args()

    t0 = time.time()
    if not args.no_search:
        run_study(args)
    search_s = time.time() - t0

    from nas.cost_model import cross_validate
    from nas.cost_study import study_observations
    from storage import Store

    with Store.open(args.db, create=False, read_only=True) as store:
        groups = study_observations(store, args.study)
        spec = store.get_study(args.study).spec
    profile_s = time.time() - t0 - search_s
    per_hardware = []
    for (hardware, meter, estimate), rows in sorted(groups.items()):
        runs = [cross_validate(rows, hardware=hardware, meter=meter, is_estimate=estimate, folds=args.folds, seed=seed)
                for seed in range(args.repeats)]
        print(runs[0].describe(), flush=True)
        spread = {t: [r.summary[t]["median_abs_pct_error"] for r in runs] for t in runs[0].summary}
        per_hardware.append({
            **runs[0].to_dict(),
            "energy": f"meter {meter}: " + ("an ESTIMATE (CPU TDP x utilisation; no RAPL here), not a measurement"
                                            if estimate else "measured"),
            "median_abs_pct_error_over_fold_seeds": {t: {"seeds": list(range(args.repeats)), "values": v,
                                                         "min": min(v), "max": max(v)} for t, v in spread.items()},
        })
    result = {
        "command": " ".join(["python benchmarks/cost_model.py", *sys.argv[1:]]),
        "commit": git_commit(),
        "study": args.study,
        "db": args.db,
        "space": spec.get("space"),
        "measure": spec.get("measure"),
        "train_steps": spec.get("train", {}).get("steps"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "search_wall_s": round(search_s, 1),
        "profile_and_evaluate_wall_s": round(time.time() - t0 - search_s, 1),
        "profile_wall_s": round(profile_s, 1),
        "acceptance": "median absolute percentage error on held-out trials of the same hardware <= 15%",
        "per_hardware": per_hardware,
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
