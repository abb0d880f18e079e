"""Search efficiency at an equal search-joule budget: random, from-scratch TPE, and a supernet search with the
cost model on (issue #16 item 5).

Each (method, seed) pair runs a real search (Ray Tune + Optuna + the trial pipeline) into one SQLite file,
each stopped by the same ``budget.joules``. Every trial's joules count, and so do the supernet's. All three
share a J/sample constraint that excludes the costliest part of the space, so the cost model has
something to skip. Hypervolume is over the feasible trials.

* ``random``: random sampling, every candidate trained from scratch for ``--steps``, with the product's
  defaults for such a constraint: measure-first on, and the cost model's skip on (``predict_skip: auto``).
* ``tpe``: TPE, otherwise the same.
* ``supernet``: TPE over candidates cut from one weight-sharing supernet (``fidelity.kind: supernet``,
  ``--supernet-steps``), each fine-tuned ``--subnet-steps``, with the cost model skipping candidates it
  predicts infeasible (``fidelity.predict_skip: true``). There is no final fine-tuning of the front
  (``final_steps: 0``), because it runs after the budget is spent and would be spent beyond it.
  Measure-first is off: a trial this brief costs less to train than to measure twice.

For each seed, the hypervolume of (accuracy, log10 J/sample) is computed against one reference point
shared by the three methods. Cumulative joules follow trial order, and a supernet search starts at its
supernet's joules. The report gives:

* each method's hypervolume at the budget, and its ratio to TPE's and to random's;
* the joules each method needed to reach random's final hypervolume (``null``: never).

The acceptance of #16 is a median over seeds: at least 1.3 x TPE's hypervolume, and random's final
hypervolume reached with at most 30% of random's joules. Energy on a CPU-only machine comes from the
labelled ``estimate`` meter, and the result file says so.

    python benchmarks/efficiency.py --seeds 0 1 2 --budget-j 6000 --out benchmarks/results/efficiency_builtin.json

A rerun keeps the complete studies of ``--db`` and resumes an interrupted one (a rerun after a complete run only
recomputes the report and the plot, ``--out`` with ``.svg``); ``--fresh`` starts over.
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

METHODS = ("random", "tpe", "supernet")


def spec_for(method: str, seed: int, args: argparse.Namespace) -> Any:
    from nas.spec import StudySpec

    supernet = method == "supernet"
    fidelity: dict[str, Any] = {"rungs": [args.steps], "enabled": False}
    if supernet:
        fidelity.update(kind="supernet", steps=args.supernet_steps, sandwich=args.sandwich,
                        subnet_steps=args.subnet_steps, final_steps=0,
                        checkpoint_every=100, measure_first=False, predict_skip=True)
    return StudySpec.model_validate({
        "name": f"{method}-s{seed}",
        "task": args.task,
        "space": {"preset": "tiny", "overrides": {"sparsity": ["none", "heads", "ffn"], "max_len": 64,
                                                  "dropout": [0.0, 0.1]}},
        "constraints": [f"energy_per_sample_j < {args.max_j}"],
        "front": {"require_above_majority": True, "ties": {"rounds": 0}},
        "sampler": {"kind": "random" if method == "random" else "tpe", "seed": seed,
                    "n_startup_trials": args.startup},
        "budget": {"trials": args.max_trials, "joules": args.budget_j},
        "fidelity": fidelity,
        "train": {"batch_size": 32, "lr": 2e-3, "steps": args.steps, "seed": seed},
        "measure": {"meter": "estimate", "window_s": 0.3, "n_windows": 3, "idle_s": 0.3, "warmup_iters": 3,
                    "batch_size": 32, "seq_len": 64},
        "resources": {"cpus_per_trial": 1, "max_concurrent": 2},
        "storage": {"url": args.db, "retention": "front" if supernet else "none"},
    })


def curve_points(store: Any, study: str, max_j: float) -> tuple[list[list[float]], list[float], float]:
    """Feasible (accuracy, log10 J/sample) in trial order, the cumulative joules at each, and the total."""
    rec = store.supernet(study)
    spent = (rec.train.energy_j or 0.0) if rec is not None else 0.0
    pts, cum = [], []
    for v in sorted(store.trials(study), key=lambda v: v.number):
        if v.cost is not None:
            spent += (v.cost.train_energy_j or 0.0) + (v.cost.measure_energy_j or 0.0)
        vals = v.values()
        e, acc = vals.get("energy_per_sample_j"), vals.get("accuracy")
        if v.state == "COMPLETE" and acc is not None and e and e < max_j:
            pts.append([acc, math.log10(e)])
            cum.append(spent)
    return pts, cum, spent


def _run(method: str, seed: int, args: argparse.Namespace) -> None:
    import nas
    from storage import Store

    name = f"{method}-s{seed}"
    with Store.open(args.db) as store:
        status = {s.name: s.status for s in store.list_studies()}.get(name)
    if status == "COMPLETE":
        print(f"{name}: complete in {args.db}, kept", flush=True)
        return
    t = time.time()
    if status is not None:  # interrupted: continue it (what was stored stays; a supernet resumes)
        nas.search(resume=name, db=args.db)
    else:
        nas.search(spec_for(method, seed, args))
    print(f"{name}: {time.time() - t:.0f} s", flush=True)


def _at_budget(curve: list[float], cum: list[float], budget: float) -> float:
    """The hypervolume reached with at most ``budget`` joules spent (0 before the first feasible point)."""
    return max([hv for hv, j in zip(curve, cum, strict=True) if j <= budget], default=0.0)


def _seed_row(store: Any, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    from nas.dominance import hypervolume_curve

    data = {m: curve_points(store, f"{m}-s{seed}", args.max_j) for m in METHODS}
    allpts = np.array([p for m in METHODS for p in data[m][0]])
    ref = [float(allpts[:, 0].min()) - 0.01, float(allpts[:, 1].max()) + 0.05]
    curves = {m: hypervolume_curve(data[m][0], ["maximize", "minimize"], ref) for m in METHODS}
    hv = {m: _at_budget(curves[m], data[m][1], args.budget_j) for m in METHODS}
    row: dict[str, Any] = {"seed": seed, "reference": ref}
    for m in METHODS:
        reach = next((j for c, j in zip(curves[m], data[m][1], strict=True) if hv["random"] > 0 and c >= hv["random"]),
                     None)
        row[m] = {"hv_at_budget": hv[m], "feasible_complete_trials": len(data[m][0]),
                  "hv_ratio_vs_tpe": hv[m] / hv["tpe"] if hv["tpe"] > 0 else None,
                  "hv_ratio_vs_random": hv[m] / hv["random"] if hv["random"] > 0 else None,
                  "joules_to_reach_random_hv": reach, "total_search_joules": data[m][2],
                  "curve": [[j, c] for c, j in zip(curves[m], data[m][1], strict=True)]}
    sn = store.supernet(f"supernet-s{seed}")
    row["supernet"]["supernet_joules"] = sn.train.energy_j if sn is not None else None
    trials = store.trials(f"supernet-s{seed}")
    row["supernet"]["skipped_by_cost_model"] = sum(1 for v in trials if v.fail_reason and
                                                   v.fail_reason.startswith("predicted infeasible"))
    return row


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def med(xs: list[float | None]) -> float | None:
        known = [x for x in xs if x is not None]
        return statistics.median(known) if known else None

    out: dict[str, Any] = {}
    for m in METHODS:
        reach = [r[m]["joules_to_reach_random_hv"] for r in rows]
        share = [j / r["random"]["total_search_joules"] if j is not None else None for j, r in zip(reach, rows,
                                                                                                  strict=True)]
        out[m] = {"median_hv_ratio_vs_tpe": med([r[m]["hv_ratio_vs_tpe"] for r in rows]),
                  "median_hv_ratio_vs_random": med([r[m]["hv_ratio_vs_random"] for r in rows]),
                  "joules_to_reach_random_hv": reach, "share_of_random_joules": share,
                  "median_share_of_random_joules": med(share) if all(s is not None for s in share) else None}
    ratio, share = out["supernet"]["median_hv_ratio_vs_tpe"], out["supernet"]["median_share_of_random_joules"]
    out["acceptance"] = {"hv_at_least_1.3x_tpe": ratio is not None and ratio >= 1.3,
                         "random_hv_with_at_most_30pct_of_its_joules": share is not None and share <= 0.3}
    return out


COLOURS = {"random": "#7f7f7f", "tpe": "#1f77b4", "supernet": "#d62728"}


def plot_svg(rows: list[dict[str, Any]], budget: float, title: str, path: Path) -> None:
    """Hypervolume (as a share of random's final) against search joules, one step line per method and seed."""
    w, h, left, top, right, bottom = 640, 340, 56, 34, 150, 44
    curves = []
    for r in rows:
        scale = r["random"]["hv_at_budget"] or 1.0
        for m in METHODS:
            curves.append((m, [(j, hv / scale) for j, hv in r[m]["curve"] if j <= budget]))
    top_y = max([1.2, *(v for _, pts in curves for _, v in pts)])

    def x(j: float) -> float:
        return left + j / budget * (w - left - right)

    def y(v: float) -> float:
        return top + (1 - v / top_y) * (h - top - bottom)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" '
           f'font-size="11"><rect width="{w}" height="{h}" fill="white"/>',
           f'<text x="{left}" y="16" font-size="12">{title}</text>']
    for t in [i / 5 * top_y for i in range(6)]:
        out.append(f'<line x1="{left}" x2="{w - right}" y1="{y(t):.1f}" y2="{y(t):.1f}" stroke="#eee"/>'
                   f'<text x="{left - 6}" y="{y(t) + 4:.1f}" text-anchor="end">{t:.1f}</text>')
    for j in [i / 4 * budget for i in range(5)]:
        out.append(f'<text x="{x(j):.1f}" y="{h - bottom + 16}" text-anchor="middle">{j:.0f}</text>')
    out.append(f'<text x="{(left + w - right) / 2}" y="{h - 8}" text-anchor="middle">search joules (ESTIMATE, '
               f'estimate meter)</text>')
    for m, pts in curves:
        xy, last = [], 0.0
        for j, v in pts:
            xy += [(x(j), y(last)), (x(j), y(v))]
            last = v
        if xy:
            xy.append((x(budget), y(last)))
            out.append(f'<polyline fill="none" stroke="{COLOURS[m]}" stroke-width="1.5" points="'
                       + " ".join(f"{a:.1f},{b:.1f}" for a, b in xy) + '"/>')
    for i, m in enumerate(METHODS):
        out.append(f'<line x1="{w - right + 10}" x2="{w - right + 28}" y1="{top + 14 * i}" y2="{top + 14 * i}" '
                   f'stroke="{COLOURS[m]}" stroke-width="2"/><text x="{w - right + 32}" y="{top + 14 * i + 4}">'
                   f'{m} ({len(rows)} seeds)</text>')
    out.append(f'<text x="{w - right + 10}" y="{top + 14 * len(METHODS) + 8}">y: hypervolume /</text>'
               f'<text x="{w - right + 10}" y="{top + 14 * len(METHODS) + 22}">random\'s at the budget</text>')
    path.write_text("\n".join([*out, "</svg>"]) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--budget-j", type=float, default=6000.0, help="every search's joule budget")
    ap.add_argument("--max-trials", type=int, default=200, help="a trial cap far above what the budget allows")
    ap.add_argument("--steps", type=int, default=150, help="training steps of a from-scratch trial")
    ap.add_argument("--supernet-steps", type=int, default=100)
    ap.add_argument("--subnet-steps", type=int, default=20)
    ap.add_argument("--sandwich", type=int, default=1, help="random sub-networks per supernet step")
    ap.add_argument("--startup", type=int, default=4, help="TPE's random startup trials")
    ap.add_argument("--max-j", type=float, default=0.012, help="the constraint: energy_per_sample_j < MAX_J")
    ap.add_argument("--task", default="builtin:sentiment")
    ap.add_argument("--db", default="benchmarks/results/efficiency_builtin.db")
    ap.add_argument("--out", default="benchmarks/results/efficiency_builtin.json")
    ap.add_argument("--fresh", action="store_true", help="delete --db first")
    args = ap.parse_args()

    from storage import Store

    Path(args.db).parent.mkdir(parents=True, exist_ok=True)
    if args.fresh:
        Path(args.db).unlink(missing_ok=True)
    t0 = time.time()
    for seed in args.seeds:
        for method in METHODS:
            _run(method, seed, args)
    store = Store.open(args.db, create=False)
    rows = [_seed_row(store, seed, args) for seed in args.seeds]
    summary = _summary(rows)
    result = {
        "command": (f"python benchmarks/efficiency.py --seeds {' '.join(map(str, args.seeds))} --budget-j "
                    f"{args.budget_j:g} --steps {args.steps} --supernet-steps {args.supernet_steps} --sandwich {args.sandwich} "
                    f"--subnet-steps {args.subnet_steps} --max-j {args.max_j:g} --task {args.task} --db {args.db} --out {args.out}"),
        "commit": git_commit(),
        "energy_meter": "estimate (CPU TDP x utilisation; this machine has no RAPL): an ESTIMATE, not a measurement",
        "hypervolume_space": "feasible trials' accuracy (max) x log10(J/sample) (min), reference shared per seed",
        "machine": f"{platform.processor() or platform.machine()}, {__import__('os').cpu_count()} CPUs",
        "wall_s_this_invocation": time.time() - t0, "per_seed": rows, "summary": summary,
    }
    Path(args.out).write_text(json.dumps(result, indent=2))
    plot_svg(rows, args.budget_j, f"{args.task}: hypervolume against search joules (budget {args.budget_j:g} J)",
             Path(args.out).with_suffix(".svg"))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
