"""Fidelity: how well does brief training rank candidates, against a long budget?

Samples ``--candidates`` distinct candidates from a search space (Optuna's random sampler), then trains
each one, with each seed, at every short budget (``--budgets``, each a whole run with its own warmup and
cosine schedule: what ``train.steps`` means) and at a long budget (``--long``, 8x the shortest budget or more).
Every run goes through the service's own trial pipeline (:func:`evaluators.pipeline.run_trial`: train or
distil, compress, evaluate on the dev split). The long run also reports dev accuracy at each short budget
mid-way (what an ASHA rung of a study whose last rung is ``--long`` sees).

Reported, per task, in ``--out``:

* per seed, the Spearman and Kendall correlations of dev accuracy at each budget (and at each mid-way
  rung of the long run) with dev accuracy at the long budget, over the candidates, and their mean;
* the noise ceiling: the same correlations between two seeds at the long budget (pairs of seeds);
* hypervolume: for each budget and seed, the front chosen from (accuracy at that budget, J/sample) and
  evaluated at the long budget, over the hypervolume of the true long-budget front of that seed;
* the cheapest budget whose mean Spearman with the long budget is at least ``--target``.

Energy per sample (the front's second objective) comes from the long runs' measurements, the median over
seeds; on a CPU-only machine that is the ``estimate`` meter (CPU time x TDP share), an ESTIMATE.

Every finished run is appended to ``--work`` (JSON lines), so an interrupted benchmark resumes where it
stopped. Runs go to ``--workers`` processes, one torch thread each.

    python benchmarks/fidelity.py --setting builtin   # builtin:longmatch, the default study's space and recipe
    pip install -r benchmarks/requirements.txt
    python benchmarks/fidelity.py --setting sst2      # SST-2, students distilled from fine-tuned MiniLM-L6

Each writes ``benchmarks/results/fidelity_SETTING.json``, the plot ``.svg`` beside it and prints the table
``docs/fidelity.md`` quotes. ``SETTINGS`` below holds each setting's task, space, budgets and recipe.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np

Job = tuple[int, int, int]  # (candidate index, seed, budget)


# --- what to run ------------------------------------------------------------------------------------------
def sample_candidates(space: Any, n: int, seed: int, teacher: Any = None) -> list[Any]:
    """``n`` distinct valid candidates drawn by Optuna's random sampler (invalid draws are skipped)."""
    import optuna

    from nas.errors import NASError
    from search_spaces import suggest
    from storage import candidate_hash

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out, seen = [], set()
    for _ in range(200 * n):
        trial = study.ask()
        try:
            cand = suggest(trial, space, teacher)
        except NASError:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            continue
        study.tell(trial, 0.0)
        h = candidate_hash(cand)
        if h not in seen:
            seen.add(h)
            out.append(cand)
        if len(out) == n:
            return out
    raise SystemExit(f"the space yields only {len(out)} distinct valid candidates; ask for fewer")


def run_job(cand_json: str, task: str, teacher: str | None, train: dict[str, Any], measure: dict[str, Any],
            rungs: list[int]) -> dict[str, Any]:
    """One training run in a worker process: dev accuracy, mid-way rung accuracies, J/sample, wall time."""
    import torch

    from evaluators.pipeline import run_trial
    from nas.config import Candidate, MeasureConfig, TrainConfig

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    res = run_trial(Candidate.model_validate_json(cand_json), task, train_cfg=TrainConfig(**train),
                    measure_cfg=MeasureConfig(**measure), teacher=teacher, rungs=rungs)
    return {"status": res.status, "accuracy": res.accuracy,
            "rungs": [list(r) for r in (res.train.rung_accuracies if res.train else ())],
            "energy_per_sample_j": res.energy_per_sample_j,
            "meter": res.inference.meter if res.inference else None,
            "is_estimate": res.inference.is_estimate if res.inference else None,
            "wall_s": time.perf_counter() - t0, "error": res.error}


def mid_rungs(budgets: list[int], long: int) -> list[int]:
    """Where the long run reports dev accuracy mid-way: at each short budget, a quarter and half of the long one."""
    return sorted({*(b for b in budgets if b < long), long // 4, long // 2})


def _measure(long: bool, seq_len: int) -> dict[str, Any]:
    """The long runs are measured under the study protocol; the short ones only briefly (not used)."""
    if long:
        return {"meter": "estimate", "batch_size": 32, "seq_len": seq_len, "window_s": 0.5, "n_windows": 3,
                "idle_s": 0.3, "warmup_iters": 3}
    return {"meter": "estimate", "batch_size": 8, "seq_len": seq_len, "window_s": 0.05, "n_windows": 1,
            "idle_s": 0.0, "warmup_iters": 1}


def check_candidates(work: Path, cands: list[Any]) -> None:
    """Runs are keyed by candidate index: refuse to resume ``work`` with other candidates than it was begun with.

    The candidates are written beside it (``.candidates.json``) when it is begun.
    """
    listing = work.with_suffix(".candidates.json")
    now = [c.flat() for c in cands]
    if not listing.exists():
        listing.write_text(json.dumps(now, indent=1, default=str) + "\n")
        return
    before = json.loads(listing.read_text())
    if before != json.loads(json.dumps(now, default=str)):
        raise SystemExit(f"{work} was begun with other candidates than this run samples ({listing} differs: the "
                         f"space, --candidates or the teacher changed); pass a new --work file, or restore them")


def run_all(args: argparse.Namespace, cands: list[Any], teacher: str | None) -> dict[Job, dict[str, Any]]:
    """Every (candidate, seed, budget) run, resumed from ``--work``; returns all results."""
    work = Path(args.work)
    check_candidates(work, cands)
    done: dict[Job, dict[str, Any]] = {}
    if work.exists():
        for line in work.read_text().splitlines():
            row = json.loads(line)
            done[(row["candidate"], row["seed"], row["budget"])] = row["result"]
    budgets = [*args.budgets, args.long]
    jobs = [(c, s, b) for s in args.seeds for c in range(len(cands)) for b in budgets if (c, s, b) not in done]
    jobs.sort(key=lambda j: (j[1], -j[2]))  # seed by seed (a partial run is analysable), longest first
    print(f"{len(done)} runs done before, {len(jobs)} to run", flush=True)
    t0 = time.time()
    with ProcessPoolExecutor(args.workers) as pool, work.open("a") as out:
        futs = {}
        for c, s, b in jobs:
            train = {**args.train, "steps": b, "seed": s}
            rungs = mid_rungs(args.budgets, b) if b == args.long else []
            futs[pool.submit(run_job, cands[c].model_dump_json(), args.task, teacher, train,
                             _measure(b == args.long, args.seq_len), rungs)] = (c, s, b)
        for i, fut in enumerate(as_completed(futs), 1):
            key = futs[fut]
            res = fut.result()
            done[key] = res
            out.write(json.dumps({"candidate": key[0], "seed": key[1], "budget": key[2], "result": res}) + "\n")
            out.flush()
            eta = (time.time() - t0) / i * (len(jobs) - i)
            print(f"[{i}/{len(jobs)}] cand {key[0]} seed {key[1]} steps {key[2]}: acc {res['accuracy']} "
                  f"({res['wall_s']:.0f} s; ~{eta / 60:.0f} min left)", flush=True)
    return done


# --- what it says -----------------------------------------------------------------------------------------
def _acc(done: dict[Job, dict[str, Any]], n: int, seed: int, budget: int, rung: int | None = None) -> list[Any]:
    """Dev accuracy of each candidate at ``budget`` (or at mid-way ``rung`` of that run); None if it failed."""
    out = []
    for c in range(n):
        r = done.get((c, seed, budget))
        if r is None or r["status"] != "COMPLETE":
            out.append(None)
        elif rung is None:
            out.append(r["accuracy"])
        else:
            out.append(next((a for s, a in r["rungs"] if s == rung), None))
    return out


def correlate(x: list[Any], y: list[Any]) -> dict[str, Any]:
    """Spearman's rho and Kendall's tau over the candidates with both values (None when undefined)."""
    from scipy.stats import kendalltau, spearmanr

    pairs = [(a, b) for a, b in zip(x, y, strict=True) if a is not None and b is not None]
    if len(pairs) < 3 or len({a for a, _ in pairs}) < 2 or len({b for _, b in pairs}) < 2:
        return {"spearman": None, "kendall": None, "n": len(pairs)}
    xa, ya = zip(*pairs, strict=True)
    return {"spearman": float(spearmanr(xa, ya).statistic), "kendall": float(kendalltau(xa, ya).statistic),
            "n": len(pairs)}


def _mean(xs: list[Any]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.fmean(xs) if xs else None


def hv_ratio(short: list[Any], long: list[Any], energy: list[Any]) -> float | None:
    """Hypervolume, at the long budget, of the front chosen from the short-budget accuracies, over the true one.

    Objectives: accuracy (max) and log10 J/sample (min); the reference point is shared (just below the worst
    long-budget accuracy and above the highest energy), so 1.0 means the short budget picked the true front.
    """
    from nas.dominance import hypervolume, non_dominated

    idx = [i for i in range(len(long)) if None not in (short[i], long[i], energy[i])]
    if len(idx) < 2:
        return None
    dirs = ["maximize", "minimize"]
    e = np.log10([energy[i] for i in idx])
    true_pts = np.column_stack([[long[i] for i in idx], e])
    ref = [float(true_pts[:, 0].min()) - 0.01, float(e.max()) + 0.05]
    chosen = non_dominated(np.column_stack([[short[i] for i in idx], e]), dirs)
    best = hypervolume(true_pts, dirs, ref)
    return float(hypervolume(true_pts[chosen], dirs, ref) / best) if best > 0 else None


def analyse(args: argparse.Namespace, cands: list[Any], done: dict[Job, dict[str, Any]]) -> dict[str, Any]:
    """Correlations per budget, mid-way rung and seed; the noise ceiling; hypervolume ratios; the pick."""
    n, long = len(cands), args.long
    energy = []
    for c in range(n):
        es = [done[(c, s, long)]["energy_per_sample_j"] for s in args.seeds
              if (c, s, long) in done and done[(c, s, long)]["energy_per_sample_j"]]
        energy.append(statistics.median(es) if es else None)
    per_budget: dict[str, Any] = {}
    for b in args.budgets:
        rows = {}
        for s in args.seeds:
            short, lng = _acc(done, n, s, b), _acc(done, n, s, long)
            rows[str(s)] = {**correlate(short, lng), "hv_ratio": hv_ratio(short, lng, energy),
                            "asha_rung": correlate(_acc(done, n, s, long, rung=b), lng)}
        per_budget[str(b)] = {
            "per_seed": rows,
            "mean_spearman": _mean([r["spearman"] for r in rows.values()]),
            "mean_kendall": _mean([r["kendall"] for r in rows.values()]),
            "mean_hv_ratio": _mean([r["hv_ratio"] for r in rows.values()]),
            "asha_rung_mean_spearman": _mean([r["asha_rung"]["spearman"] for r in rows.values()]),
            "train_steps_per_candidate": b,
        }
    mid = {str(r): _mean([correlate(_acc(done, n, s, long, rung=r), _acc(done, n, s, long))["spearman"]
                          for s in args.seeds]) for r in mid_rungs(args.budgets, long)}
    ceiling = {f"{a}-{b}": correlate(_acc(done, n, a, long), _acc(done, n, b, long))
               for a, b in itertools.combinations(args.seeds, 2)}
    pick = next((b for b in args.budgets if (per_budget[str(b)]["mean_spearman"] or -1) >= args.target), None)
    best = max(args.budgets, key=lambda b: per_budget[str(b)]["mean_spearman"] or -1)
    return {
        "per_budget": per_budget,
        "asha_rungs_mean_spearman": mid,
        "noise_ceiling": {"pairs": ceiling, "mean_spearman": _mean([v["spearman"] for v in ceiling.values()]),
                          "mean_kendall": _mean([v["kendall"] for v in ceiling.values()])},
        "long_budget_accuracy_mean": _mean([_mean([done.get((c, s, long), {}).get("accuracy") for s in args.seeds])
                                            for c in range(n)]),
        "recommended_budget": pick,
        "recommendation": (f"{pick} steps: the cheapest budget whose mean Spearman with {long} steps is >= "
                           f"{args.target}" if pick is not None else
                           f"no budget reaches {args.target}; the best is {best} steps "
                           f"({per_budget[str(best)]['mean_spearman']:.3f})"),
    }


def markdown_table(result: dict[str, Any]) -> str:
    """The table docs/fidelity.md quotes: per budget, mean and per-seed Spearman, Kendall, rung, HV, accuracy."""
    def f(v: float | None) -> str: return "n/a" if v is None else f"{v:.2f}"
    acc = result["accuracy"]
    def mean_acc(b: int) -> str:
        xs = [a for s in acc for a in acc[s][str(b)] if a is not None]
        return f"{statistics.fmean(xs):.3f}" if xs else "n/a"
    long = result["long_budget"]
    rows = [f"| steps | Spearman vs {long} (mean; seeds {' / '.join(map(str, result['seeds']))}) | Kendall | "
            f"ASHA rung of the {long}-step run | HV ratio | mean dev accuracy |", "|---|---|---|---|---|---|"]
    for b, r in result["per_budget"].items():
        seeds = " / ".join(f(p["spearman"]) for p in r["per_seed"].values())
        rows.append(f"| {b} | {f(r['mean_spearman'])} ({seeds}) | {f(r['mean_kendall'])} | "
                    f"{f(r['asha_rung_mean_spearman'])} | {f(r['mean_hv_ratio'])} | {mean_acc(int(b))} |")
    for b, v in result["asha_rungs_mean_spearman"].items():
        if b not in result["per_budget"]:
            rows.append(f"| {b} (rung only) | | | {f(v)} | | |")
    ceiling = result["noise_ceiling"]
    pairs = " / ".join(f(p["spearman"]) for p in ceiling["pairs"].values())
    rows.append(f"| {long} (long) | noise ceiling {f(ceiling['mean_spearman'])} (seed pairs {pairs}) | "
                f"{f(ceiling['mean_kendall'])} | | | {mean_acc(long)} |")
    return "\n".join(rows)


def plot_svg(result: dict[str, Any], path: Path) -> None:
    """Spearman with the long budget against training steps (log scale): short runs, ASHA rungs, the ceiling."""
    w, h, left, top, right, bottom = 600, 320, 56, 34, 180, 44
    steps = sorted({*map(int, result["per_budget"]), *map(int, result["asha_rungs_mean_spearman"])})
    lo, hi = math.log2(steps[0]), math.log2(result["long_budget"])
    def x(v: float) -> float: return left + (math.log2(v) - lo) / (hi - lo or 1) * (w - left - right)
    def y(v: float) -> float: return top + (1 - (v + 0.2) / 1.2) * (h - top - bottom)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" '
           f'font-size="11"><rect width="{w}" height="{h}" fill="white"/>',
           f'<text x="{left}" y="16" font-size="12">{result["task"]}: Spearman of dev accuracy with '
           f'{result["long_budget"]} steps (mean of {len(result["seeds"])} seeds)</text>']
    for t in (-0.2, 0, 0.2, 0.4, 0.6, 0.8, 1.0):
        out.append(f'<line x1="{left}" x2="{w - right}" y1="{y(t):.1f}" y2="{y(t):.1f}" stroke="#eee"/>'
                   f'<text x="{left - 6}" y="{y(t) + 4:.1f}" text-anchor="end">{t:.1f}</text>')
    for v in [*steps, result["long_budget"]]:
        out.append(f'<text x="{x(v):.1f}" y="{h - bottom + 16}" text-anchor="middle">{v}</text>')
    out.append(f'<text x="{(left + w - right) / 2}" y="{h - 8}" text-anchor="middle">training steps</text>')
    lines = [("short run", "#1f77b4", "", {int(b): r["mean_spearman"] for b, r in result["per_budget"].items()}),
             ("ASHA rung (long run)", "#ff7f0e", "", {int(b): v for b, v in
                                                           result["asha_rungs_mean_spearman"].items()})]
    for level, label, color in ((result["noise_ceiling"]["mean_spearman"], "noise ceiling", "#2ca02c"),
                                (result["target"], "target", "#d62728")):
        if level is not None:
            lines.append((f"{label} {level:.2f}", color, ' stroke-dasharray="5,4"',
                          {steps[0]: level, result["long_budget"]: level}))
    for i, (label, color, dash, pts) in enumerate(lines):
        xy = [(x(k), y(v)) for k, v in sorted(pts.items()) if v is not None]
        out.append(f'<polyline fill="none" stroke="{color}" stroke-width="2"{dash} points="'
                   + " ".join(f"{a:.1f},{b:.1f}" for a, b in xy) + '"/>')
        if not dash:
            out.extend(f'<circle cx="{a:.1f}" cy="{b:.1f}" r="3" fill="{color}"/>' for a, b in xy)
        out.append(f'<line x1="{w - right + 10}" x2="{w - right + 28}" y1="{top + 14 * i}" y2="{top + 14 * i}" '
                   f'stroke="{color}" stroke-width="2"{dash}/><text x="{w - right + 32}" y="{top + 14 * i + 4}">'
                   f'{label}</text>')
    path.write_text("\n".join([*out, "</svg>"]) + "\n")


# --- the two settings -------------------------------------------------------------------------------------
SST2_SPACE = {"init": ["teacher"], "n_layers": [1, 2, 3, 4], "d_model": [384], "n_heads": [3, 6, 12],
              "ffn_ratio": [1, 2, 4], "attention": ["softmax"], "attention_bits": [32, 8], "ffn_bits": [32, 8],
              "embedding_bits": [32], "sparsity": ["none"], "distill": ["logit"], "kd_temperature": [2.0, 2.0],
              "kd_alpha": [0.9, 0.9], "dropout": [0.1], "pooling": ["cls"], "max_len": 64}
SETTINGS: dict[str, dict[str, Any]] = {
    # The built-in study (nas.spec.default_spec): the tiny space on builtin:longmatch, no teacher.
    "builtin": {"task": "builtin:longmatch", "space": {}, "teacher": None, "budgets": [50, 100, 200, 400, 800],
                "long": 1600, "seq_len": 64},
    # SST-2 with the fine-tuned MiniLM-L6 teacher, the students of benchmarks/sst2_teacher.py.
    "sst2": {"task": "../shared/data/sst2", "space": SST2_SPACE, "teacher": "minilm", "budgets": [25, 50],
             "long": 200, "seq_len": 64,
             "train": {"batch_size": 32, "lr": 2e-4, "warmup_fraction": 0.06, "amp": False, "group_by_length": True,
                       "freeze_inherited_embeddings": True}},
}


def prepare(args: argparse.Namespace) -> tuple[Any, str | None]:
    """The space's teacher candidate and the teacher folder trials load (fine-tuned and cached once)."""
    import tempfile

    from nas.runner.api import open_store
    from nas.runner.teacher_prep import prepare_teacher
    from nas.spec import StudySpec

    if args.teacher is None:
        return None, None
    path = args.teacher
    if path == "minilm":
        from sst2_teacher import teacher_path  # type: ignore[import-not-found]
        path = teacher_path()
    spec = StudySpec.model_validate({
        "name": "fidelity-teacher", "task": args.task, "space": {"preset": "tiny", "overrides": args.space},
        "teacher": {"path": path, "fine_tune": {"steps": 1000, "lr": 5e-5, "batch_size": 32}},
        "train": {**args.train, "seed": 0}, "measure": _measure(True, args.seq_len)})
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(os.path.join(tmp, "t.db"))
        store.create_study(spec.name, spec.model_dump_json(), [(o.metric, o.resolved_direction) for o in spec.objectives])
        prepared = prepare_teacher(spec, store, progress=True)
        store.close()
    assert prepared is not None
    print(f"teacher: {prepared.path} (dev accuracy {prepared.reference.dev_accuracy})", flush=True)
    return prepared.candidate, prepared.path


def main() -> None:
    """Run (or resume) every training run, analyse, write the result file and print the summary."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--setting", choices=sorted(SETTINGS), default="builtin")
    ap.add_argument("--candidates", type=int, default=24)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--budgets", type=int, nargs="+", help="short budgets (default: the setting's)")
    ap.add_argument("--long", type=int, help="the long budget (default: the setting's)")
    ap.add_argument("--target", type=float, default=0.85)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--work", help="JSON-lines file of finished runs (default: next to --out)")
    ap.add_argument("--out", help="result file (default: benchmarks/results/fidelity_SETTING.json)")
    args = ap.parse_args()
    setting = SETTINGS[args.setting]
    from nas.spec import default_spec
    from search_spaces import load_space

    args.task, args.space, args.teacher = setting["task"], setting["space"], setting["teacher"]
    args.budgets = sorted(args.budgets or setting["budgets"])
    args.long = args.long or setting["long"]
    args.seq_len = setting["seq_len"]
    args.train = setting.get("train") or default_spec().train.model_dump(exclude={"steps", "seed"})
    args.out = args.out or f"benchmarks/results/fidelity_{args.setting}.json"
    args.work = args.work or args.out.replace(".json", ".runs.jsonl")
    t0 = time.time()
    teacher_cand, teacher = prepare(args)
    cands = sample_candidates(load_space("tiny", args.space), args.candidates, seed=0, teacher=teacher_cand)
    done = run_all(args, cands, teacher)
    result = {
        "command": (f"python benchmarks/fidelity.py --setting {args.setting} --candidates {args.candidates} "
                    f"--seeds {' '.join(map(str, args.seeds))} --budgets {' '.join(map(str, args.budgets))} "
                    f"--long {args.long}"),
        "task": args.task, "teacher": teacher and os.path.basename(teacher), "space_overrides": args.space,
        "train": args.train, "budgets": args.budgets, "long_budget": args.long, "seeds": args.seeds,
        "target": args.target,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {args.workers} workers x 1 torch thread",
        "energy_meter": "estimate (CPU time x TDP share; no RAPL here): an ESTIMATE, not a measurement",
        "wall_s_this_invocation": time.time() - t0,
        "run_wall_s_total": sum(r["wall_s"] for r in done.values()),
        **analyse(args, cands, done),
        "candidates": [c.flat() for c in cands],
        "accuracy": {str(s): {str(b): _acc(done, len(cands), s, b) for b in [*args.budgets, args.long]}
                     for s in args.seeds},
    }
    Path(args.out).write_text(json.dumps(result, indent=1, default=str) + "\n")
    plot_svg(result, Path(args.out).with_suffix(".svg"))
    for b, row in result["per_budget"].items():
        print(f"{b:>5} steps: Spearman {row['mean_spearman']}, Kendall {row['mean_kendall']}, "
              f"HV ratio {row['mean_hv_ratio']}, ASHA rung Spearman {row['asha_rung_mean_spearman']}")
    print(f"noise ceiling (seed vs seed at {args.long}): {result['noise_ceiling']['mean_spearman']}")
    print(result["recommendation"])
    print(markdown_table(result))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
