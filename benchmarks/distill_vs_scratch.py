"""Distillation vs training from scratch at an equal step budget, on a built-in task.

A small student is trained for ``--steps`` steps three times per arm (seeds 0, 1, 2): from scratch, and
distilled from a self-trained teacher (``load_teacher("auto")``: 4 layers, d_model 128, trained for
``--teacher-steps`` steps and cached) with each distillation kind asked for. The median dev accuracy
per arm is reported. Teacher training is paid once and is not part of the student budget.

Usage::

    python benchmarks/distill_vs_scratch.py [--task builtin:longmatch] [--steps 300] [--teacher-steps 600] [--threads 1]

Writes ``benchmarks/results/distill_vs_scratch.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from evaluators.metrics import evaluate
from evaluators.tasks import load_task
from evaluators.teacher import load_teacher
from evaluators.train import build_for_task, train
from nas.config import Candidate, DistillConfig, TrainConfig

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="builtin:longmatch")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--teacher-steps", type=int, default=600)
    ap.add_argument("--kinds", default="logit,hidden,attention")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "distill_vs_scratch.json"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]

    task = load_task(args.task, seed=0)
    t0 = time.perf_counter()
    teacher = load_teacher("auto", task, seed=0, steps=args.teacher_steps, device="cpu")
    assert teacher is not None
    teacher_s = time.perf_counter() - t0
    teacher_acc = teacher.dev_accuracy

    student = Candidate(n_layers=1, d_model=32, n_heads=2, d_ffn=64, dropout=0.0, max_len=64)
    cfg_for = lambda seed: TrainConfig(steps=args.steps, batch_size=32, lr=2e-3, seed=seed,  # noqa: E731
                                       device="cpu", amp=False)
    arms: dict[str, list[float]] = {}
    walls: dict[str, list[float]] = {}
    kinds = ["none"] + [k for k in args.kinds.split(",") if k]
    for kind in kinds:
        for seed in seeds:
            model = build_for_task(student, task, seed=seed)
            dcfg = DistillConfig(kind=kind, temperature=2.0, alpha=0.9)  # type: ignore[arg-type]
            res = train(model, task, cfg_for(seed), teacher=teacher if kind != "none" else None,
                        distill=dcfg if kind != "none" else None)
            acc = evaluate(model, task).accuracy
            arms.setdefault(kind, []).append(acc)
            walls.setdefault(kind, []).append(res.wall_s)
            Console().print(f"{kind:>9} seed {seed}: dev accuracy {acc:.4f} ({res.wall_s:.1f}s)")

    result = {
        "benchmark": "distill_vs_scratch",
        "task": args.task,
        "student": json.loads(student.to_json()),
        "student_steps": args.steps,
        "student_lr": 2e-3,
        "distill": {"temperature": 2.0, "alpha": 0.9},
        "teacher": {"name": teacher.name, "steps": args.teacher_steps, "dev_accuracy": teacher_acc,
                    "n_layers": teacher.n_layers, "d_model": teacher.d_model,
                    "load_or_train_s": round(teacher_s, 1)},
        "seeds": seeds,
        "arms": {k: {"accuracies": v, "median": statistics.median(v), "median_wall_s":
                     round(statistics.median(walls[k]), 2)} for k, v in arms.items()},
        "threads": args.threads,
        "torch": torch.__version__,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    table = Table(title=f"{args.task}: student {args.steps} steps, median of {len(seeds)} seeds "
                        f"(teacher dev acc {teacher_acc:.3f})")
    for col in ("arm", "median acc", "per seed", "median train s"):
        table.add_column(col)
    for k, v in arms.items():
        table.add_row("scratch" if k == "none" else f"distill:{k}", f"{statistics.median(v):.4f}",
                      " ".join(f"{a:.3f}" for a in v), f"{statistics.median(walls[k]):.1f}")
    Console().print(table)
    Console().print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
