"""Gradient (Taylor) importance against the weight norm at equal sparsity, one-shot and cubic, over seeds.

For each built-in task and seed, a fixed candidate (2 layers, d_model 64, 4 heads, FFN 128, softmax) is
built and trained as a trial trains it (:class:`evaluators.pruning.CompressionPlan`, :func:`evaluators.train.train`):

* **one-shot**: a dense model is trained for ``--dense-steps`` once and shared; each (kind, importance) branch
  copies it, prunes 50% of the heads (or FFN neurons) ranked by that importance, is evaluated on dev right
  away (``dev_after_prune``: what the ranking alone keeps) and after ``--finetune-steps`` of fine-tuning
  (``dev``, the number compared);
* **cubic**: a fresh model trains a budget of ``dense + finetune`` steps with the trial's cubic schedule
  (masks grown from 10% to 70% of the budget, Zhu & Gupta; the masked units removed at 70%), then fine-tunes
  the rest;
* **dense**: the shared dense model fine-tuned as long, unpruned (the reference).

At equal sparsity both importances leave the same shapes, so the same parameters, FLOPs and inference cost:
no energy is measured. The summary gives, per task, kind and schedule, the dev accuracy of each seed and
the median over seeds of each importance, and whether Taylor's median is at least the weight norm's.

    python benchmarks/prune_importance.py --seeds 0 1 2 --out benchmarks/results/prune_importance.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

TASKS = ("builtin:sentiment", "builtin:longmatch")
KINDS = ("heads", "ffn")
IMPORTANCES = ("magnitude", "taylor")
SCHEDULES = ("one_shot", "cubic")
CANDIDATE: dict[str, Any] = {"n_layers": 2, "d_model": 64, "n_heads": 4, "d_ffn": 128, "max_len": 64}
AMOUNT = 0.5


def _cfg(steps: int, seed: int, batch_size: int) -> Any:
    from nas.config import TrainConfig

    return TrainConfig(steps=steps, batch_size=batch_size, lr=2e-3, seed=seed, device="cpu")


def _candidate(kind: str, importance: str, schedule: str) -> Any:
    from nas.config import Candidate, PruneConfig

    return Candidate(**CANDIDATE, sparsity=PruneConfig(kind=kind, amount=AMOUNT, importance=importance,
                                                       schedule=schedule))


def _dev(model: Any, task: Any) -> float:
    from evaluators.metrics import evaluate

    return float(evaluate(model, task, batch_size=256).accuracy)


def _row(kind: str, importance: str | None, schedule: str | None, model: Any, task: Any, t: float,
         after_prune: float | None = None) -> dict[str, Any]:
    return {"kind": kind, "importance": importance, "schedule": schedule, "dev": _dev(model, task),
            "dev_after_prune": after_prune, "params": sum(p.numel() for p in model.parameters()),
            "wall_s": round(time.time() - t, 2)}


def run_seed(task: Any, seed: int, dense_steps: int, finetune_steps: int, batch_size: int,
             cubic_kinds: tuple[str, ...] = KINDS) -> list[dict[str, Any]]:
    """Every configuration on one task and seed: rows of (kind, importance, schedule, dev accuracy, params)."""
    from evaluators.pruning import CompressionPlan
    from evaluators.train import build_for_task, train

    rows: list[dict[str, Any]] = []
    t = time.time()
    dense = build_for_task(_candidate("heads", "magnitude", "one_shot"), task, seed=seed)
    train(dense, task, _cfg(dense_steps, seed, batch_size))
    for kind in KINDS:
        for importance in IMPORTANCES:
            t = time.time()
            model = copy.deepcopy(dense)
            model.candidate = _candidate(kind, importance, "one_shot")
            CompressionPlan.for_model(model, model.candidate, task, 2 * dense_steps, batch_size=batch_size,
                                      seed=seed).compress(model)  # the trial's one-shot step (Taylor batches)
            after_prune = _dev(model, task)
            train(model, task, _cfg(finetune_steps, seed + dense_steps, batch_size))
            rows.append(_row(kind, importance, "one_shot", model, task, t, after_prune))
    total = dense_steps + finetune_steps
    for kind in cubic_kinds:
        for importance in IMPORTANCES:
            t = time.time()
            cand = _candidate(kind, importance, "cubic")
            model = build_for_task(cand, task, seed=seed)
            plan = CompressionPlan.for_model(model, cand, task, total, batch_size=batch_size, seed=seed)
            plan.start()
            train(model, task, _cfg(plan.at_step, seed, batch_size), callback=lambda s, _m, p=plan: p.step(s))
            plan.compress(model)
            after_prune = _dev(model, task)
            train(model, task, _cfg(total - plan.at_step, seed + plan.at_step, batch_size))
            rows.append(_row(kind, importance, "cubic", model, task, t, after_prune))
    t = time.time()
    dense_after = _dev(dense, task)
    train(dense, task, _cfg(finetune_steps, seed + dense_steps, batch_size))
    rows.append(_row("none", None, None, dense, task, t, dense_after))
    return rows


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per task, kind and schedule: each importance's dev accuracy per seed and its median; Taylor >= norm?

    Args:
        runs: Rows of :func:`run_seed`, each with ``task`` and ``seed`` added.

    Returns:
        ``{task: {"dense": {...}, "KIND/SCHEDULE": {IMPORTANCE: {"per_seed", "median", "median_after_prune"},
        "taylor_at_least_norm": bool}}}``.
    """
    out: dict[str, Any] = {}
    for task in sorted({r["task"] for r in runs}):
        rows = [r for r in runs if r["task"] == task]
        dense = sorted((r for r in rows if r["kind"] == "none"), key=lambda r: r["seed"])
        table: dict[str, Any] = {"dense": {
            "per_seed": {str(r["seed"]): r["dev"] for r in dense},
            "median": statistics.median(r["dev"] for r in dense) if dense else None,
            "before_finetune_per_seed": {str(r["seed"]): r["dev_after_prune"] for r in dense}}}
        for kind in KINDS:
            for schedule in SCHEDULES:
                cell: dict[str, Any] = {}
                for importance in IMPORTANCES:
                    got = sorted((r for r in rows if (r["kind"], r["schedule"], r["importance"])
                                  == (kind, schedule, importance)), key=lambda r: r["seed"])
                    if not got:
                        continue
                    cell[importance] = {
                        "per_seed": {str(r["seed"]): r["dev"] for r in got},
                        "median": statistics.median(r["dev"] for r in got),
                        "after_prune_per_seed": {str(r["seed"]): r["dev_after_prune"] for r in got},
                        "median_after_prune": statistics.median(r["dev_after_prune"] for r in got),
                        "params": got[0]["params"]}
                if len(cell) == len(IMPORTANCES):
                    cell["taylor_at_least_norm"] = cell["taylor"]["median"] >= cell["magnitude"]["median"]
                    table[f"{kind}/{schedule}"] = cell
        out[task] = table
    return out


def acceptance(summary: dict[str, Any]) -> dict[str, Any]:
    """The issue's check: at 50% head sparsity (one-shot), Taylor's median dev accuracy >= the weight norm's."""
    per_task = {task: t["heads/one_shot"]["taylor_at_least_norm"] for task, t in summary.items() if "heads/one_shot" in t}
    return {"criterion": "at 50% head sparsity (one-shot), median dev accuracy over seeds with taylor importance >= "
                         "with the weight norm, on each built-in task",
            "per_task": per_task, "holds": bool(per_task) and all(per_task.values())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--dense-steps", type=int, default=400, help="dense training before one-shot pruning")
    ap.add_argument("--finetune-steps", type=int, default=100, help="fine-tuning after it")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--cubic-kinds", nargs="*", default=["heads"], choices=list(KINDS),
                    help="kinds also run with the cubic schedule (each costs a full budget per importance)")
    ap.add_argument("--tasks", nargs="+", default=list(TASKS))
    ap.add_argument("--out", default="benchmarks/results/prune_importance.json")
    args = ap.parse_args()

    import torch

    from evaluators.pruning import IMPORTANCE_BATCHES
    from evaluators.tasks import load_task
    from nas.compress.gradual import CUBIC_END, CUBIC_PRUNING_STEPS, CUBIC_START

    torch.set_num_threads(os.cpu_count() or 1)
    t0 = time.time()
    runs: list[dict[str, Any]] = []
    for spec in args.tasks:
        for seed in args.seeds:
            t = time.time()
            task = load_task(spec, seed=seed, max_len=CANDIDATE["max_len"])
            rows = run_seed(task, seed, args.dense_steps, args.finetune_steps, args.batch_size, tuple(args.cubic_kinds))
            runs += [{"task": spec, "seed": seed, **r} for r in rows]
            print(f"{spec} seed {seed}: {time.time() - t:.0f} s", flush=True)
    summary = summarise(runs)
    result = {
        "command": f"python benchmarks/prune_importance.py --seeds {' '.join(map(str, args.seeds))} "
                   f"--dense-steps {args.dense_steps} --finetune-steps {args.finetune_steps} --batch-size "
                   f"{args.batch_size} --tasks {' '.join(args.tasks)} --cubic-kinds {' '.join(args.cubic_kinds)}",
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
        "energy": "not measured: at equal sparsity both importances leave the same shapes (params, FLOPs, kernels)",
        "setup": {"candidate": CANDIDATE, "amount": AMOUNT, "dense_steps": args.dense_steps,
                  "finetune_steps": args.finetune_steps, "batch_size": args.batch_size, "lr": 2e-3,
                  "one_shot": "one dense model per task and seed, pruned by each importance, each fine-tuned",
                  "cubic": f"a budget of dense + finetune steps; masks grow from {CUBIC_START:.0%} to {CUBIC_END:.0%} "
                           f"of it in {CUBIC_PRUNING_STEPS} pruning steps, then fine-tune (kinds: "
                           f"{', '.join(args.cubic_kinds) or 'none'})",
                  "taylor_batches": IMPORTANCE_BATCHES, "metric": "dev accuracy (1,000 rows per task; chance 0.5)"},
        "wall_s": time.time() - t0, "acceptance": acceptance(summary), "summary": summary, "runs": runs,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps({"acceptance": result["acceptance"], "wall_s": result["wall_s"]}, indent=2))


if __name__ == "__main__":
    main()
