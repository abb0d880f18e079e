"""Measure first (issue #16 item 1): the training joules a J/sample constraint saves when each trial measures
its built, compressed model before it trains.

1. Every candidate of a small space (16: 1 or 6 layers, d_model 32 or 64, FFN ratio 1 or 2, softmax or
   linear attention) is built, compressed as it will be served and measured before training, with the
   studies' protocol; the constraint is set at the median J/sample of the space (the median of
   log J/sample: J/sample spans an order of magnitude, and with an even count the median falls between
   the two middle candidates), so about half the space is excluded.
2. The same study (same name, same random sampler and seed, so both draw the same candidates) runs twice,
   each into its own database: ``fidelity.measure_first: false`` (``off``: every trial trains, and the
   constraint is judged on the reading after training) and ``true`` (``on``).
3. The report gives each study's training joules (and measurement joules, and the sum), the saving in
   training joules, the meter they come from (read from the stored readings), whether both studies drew the
   same candidates, and whether every trial that meets the constraint in ``off`` is COMPLETE in ``on``. It
   also lists, per candidate, the reading before training (``on``) beside the one after (``off``).

Energy on a CPU-only machine comes from the labelled ``estimate`` meter (CPU TDP x utilisation; no RAPL):
every joule below is an ESTIMATE, and the result file says so.

    python benchmarks/measure_first.py --trials 10 --steps 200 --out benchmarks/results/measure_first.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_common import git_commit  # benchmarks/ is sys.path[0] when a script here runs

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

NAME = "measure-first"
OVERRIDES: dict[str, Any] = {
    "n_layers": [1, 6], "d_model": [32, 64], "n_heads": [2], "ffn_ratio": [1, 2], "attention": ["softmax", "linear"],
    "attention_bits": [32], "ffn_bits": [32], "embedding_bits": [32], "activation_bits": [32], "sparsity": ["none"],
    "rank_attention": [1.0], "rank_ffn": [1.0], "feature_map": ["elu"], "quant_scheme": ["symmetric"],
    "dropout": [0.0], "layer_shapes": ["uniform"], "sharing": ["none"], "drop_layers": [0], "max_len": 64,
}


def measure_cfg() -> Any:
    """The measurement protocol of both studies and of the median."""
    from nas.config import MeasureConfig

    return MeasureConfig(meter="estimate", window_s=0.4, n_windows=3, idle_s=0.3, warmup_iters=5, batch_size=32,
                         seq_len=64)


def spec_for(db: str, artefacts: str, constraint: str, measure_first: bool, trials: int, steps: int,
             seed: int) -> Any:
    """The study, with measure-first on or off."""
    from nas.spec import StudySpec

    return StudySpec.model_validate({
        "name": NAME, "task": "builtin:sentiment", "constraints": [constraint],
        "space": {"preset": "tiny", "overrides": OVERRIDES},
        "sampler": {"kind": "random", "seed": seed}, "budget": {"trials": trials},
        "fidelity": {"rungs": [steps], "enabled": False, "measure_first": measure_first},
        "train": {"batch_size": 32, "lr": 0.002, "seed": seed},
        "measure": measure_cfg().model_dump(),
        "resources": {"cpus_per_trial": 1, "max_concurrent": 2},
        "storage": {"url": db, "retention": "none", "artefacts_dir": artefacts},
    })


def space_candidates() -> list[Any]:
    """Every candidate of the space (drawn at random until no new one appears)."""
    import optuna

    from search_spaces import load_space, suggest
    from storage import candidate_hash

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = load_space("tiny", OVERRIDES)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    found: dict[str, Any] = {}
    for _ in range(400):
        cand = suggest(study.ask(), space)
        found.setdefault(candidate_hash(cand), cand)
    return list(found.values())


def median_j_per_sample(seed: int) -> tuple[float, list[dict[str, Any]]]:
    """The median J/sample of the space (geometric mean of the two middle ones), and every reading."""
    import torch

    from evaluators.measure_first import measure_before_training
    from evaluators.pipeline import TrialContext, cached_task
    from evaluators.train import build_for_task
    from nas.config import TrainConfig

    torch.set_num_threads(1)
    rows = []
    with TrialContext.open(TrainConfig(device="cpu"), measure_cfg()) as ctx:
        for cand in space_candidates():
            task = cached_task("builtin:sentiment", seed, cand.max_len)
            before = measure_before_training(build_for_task(cand, task, seed=seed), task, measure_cfg(),
                                             device=ctx.device, meter=ctx.meter, lane=ctx.lane)
            inf = before.inference
            assert inf is not None and inf.energy_per_sample_j is not None
            rows.append({"candidate": _label(cand), "energy_per_sample_j": inf.energy_per_sample_j, "cv": inf.cv,
                         "meter": inf.meter})
            print(f"  {rows[-1]['candidate']}: {inf.energy_per_sample_j:.5g} J/sample (CV {inf.cv:.2f})", flush=True)
    logs = [math.log(r["energy_per_sample_j"]) for r in rows]
    return math.exp(statistics.median(logs)), sorted(rows, key=lambda r: r["energy_per_sample_j"])


def _label(cand: Any) -> str:
    return f"{cand.n_layers}L d{cand.d_model} ffn{cand.d_ffn} {cand.attention.kind}"


def study_report(db: str, threshold: float) -> dict[str, Any]:
    """Training and measurement joules, the meter, and each budget-spending trial of the study in ``db``."""
    from storage import Store

    with Store.open(db, create=False) as store:
        views = [v for v in store.trials(NAME) if v.spends_budget]
        info = store.get_study(NAME)
        meters = sorted({r.meter for v in views for r in store.readings(NAME, v.number)})
    trials = []
    for v in sorted(views, key=lambda v: v.number):
        res = v.result
        first = res.first_reading if res is not None else None
        trials.append({
            "number": v.number, "candidate": _label(v.candidate), "hash": v.candidate_hash, "state": v.state,
            "fail_kind": v.fail_kind.value if v.fail_kind else None,
            "energy_per_sample_j": v.values().get("energy_per_sample_j"),
            "before_training_j_per_sample": (first.energy_per_sample_j if first else
                                             v.values().get("energy_per_sample_j") if v.fail_kind else None),
            "meets_constraint": (v.values().get("energy_per_sample_j") or math.inf) < threshold,
            "train_energy_j": v.cost.train_energy_j if v.cost else None,
            "measure_energy_j": v.cost.measure_energy_j if v.cost else None,
        })
    return {"train_energy_j": info.train_energy_j, "measure_energy_j": info.measure_energy_j,
            "total_energy_j": info.total_energy_j, "meters": meters, "is_estimate": info.cost_includes_estimate,
            "wall_s": info.wall_s, "trials": trials}




def compare(off: dict[str, Any], on: dict[str, Any]) -> dict[str, Any]:
    """The saving, whether both drew the same candidates, and whether any trial meeting the constraint was lost."""
    on_by_hash = {t["hash"]: t for t in on["trials"]}
    feasible = [t for t in off["trials"] if t["state"] == "COMPLETE" and t["meets_constraint"]]
    lost = [t["candidate"] for t in feasible if on_by_hash.get(t["hash"], {}).get("state") != "COMPLETE"]
    excluded = [t for t in off["trials"] if not t["meets_constraint"]]
    stopped = [t for t in on["trials"] if t["fail_kind"] == "infeasible"]
    ratios = [on_by_hash[t["hash"]]["before_training_j_per_sample"] / t["energy_per_sample_j"]
              for t in off["trials"] if t["hash"] in on_by_hash and t["energy_per_sample_j"]
              and on_by_hash[t["hash"]]["before_training_j_per_sample"]]
    return {
        "training_joules_saved_fraction": 1.0 - on["train_energy_j"] / off["train_energy_j"],
        "total_joules_saved_fraction": 1.0 - on["total_energy_j"] / off["total_energy_j"],
        "same_candidates_in_the_same_order": [t["hash"] for t in off["trials"]] == [t["hash"] for t in on["trials"]],
        "trials_meeting_the_constraint_in_off": len(feasible),
        "of_them_complete_in_on": len(feasible) - len(lost), "lost": lost,
        "trials_excluded_in_off": len(excluded), "stopped_before_training_in_on": len(stopped),
        "excluded_in_off_but_trained_in_on": [
            t["candidate"] for t in excluded if on_by_hash.get(t["hash"], {}).get("fail_kind") != "infeasible"],
        "on_reading_before_training_over_off_reading_after": [round(r, 3) for r in ratios],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--db", default="benchmarks/results/measure_first",
                    help="prefix of the two databases (PREFIX_off.db, PREFIX_on.db), overwritten")
    ap.add_argument("--out", default="benchmarks/results/measure_first.json")
    args = ap.parse_args()

    import nas

    t0 = time.time()
    artefacts = tempfile.mkdtemp(prefix="nas-measure-first-")  # retention none: Ray's logs only, removed after
    threshold, space = median_j_per_sample(args.seed)
    constraint = f"energy_per_sample_j < {threshold:.6g}"
    print(f"median J/sample of the space ({len(space)} candidates): {threshold:.6g}; constraint: {constraint}",
          flush=True)
    reports = {}
    for arm, on in (("off", False), ("on", True)):
        db = Path(f"{args.db}_{arm}.db")
        db.parent.mkdir(parents=True, exist_ok=True)
        db.unlink(missing_ok=True)
        t = time.time()
        nas.search(spec_for(str(db), artefacts, constraint, on, args.trials, args.steps, args.seed))
        reports[arm] = {**study_report(str(db), threshold), "search_wall_s": time.time() - t}
        shutil.rmtree(artefacts, ignore_errors=True)
        print(f"{arm}: training {reports[arm]['train_energy_j']:.0f} J, measuring "
              f"{reports[arm]['measure_energy_j']:.0f} J ({time.time() - t:.0f} s)", flush=True)
    result = {
        "command": f"python benchmarks/measure_first.py --trials {args.trials} --steps {args.steps} "
                   f"--seed {args.seed} --db {args.db} --out {args.out}",
        "commit": git_commit(),
        "energy_meter": f"{', '.join(reports['off']['meters'])} (CPU TDP x utilisation; this machine has no RAPL): "
                        "every joule here is an ESTIMATE, not a measurement",
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "space": OVERRIDES, "space_readings_before_training": space,
        "constraint": constraint, "margin": "fidelity.measure_first_margin 0.1, or 2 x the reading's CV if larger",
        "comparison": compare(reports["off"], reports["on"]),
        "off": reports["off"], "on": reports["on"], "wall_s": time.time() - t0,
    }
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result["comparison"], indent=2))


if __name__ == "__main__":
    main()
