"""SST-2 on CPU: train a small candidate from scratch within a wall-clock budget and report dev accuracy.

Usage::

    python benchmarks/sst2_cpu.py [--data ../shared/data/sst2] [--seconds 300] [--threads 2]

Writes ``benchmarks/results/sst2_cpu.json`` and prints a short table. The target is >= 0.75 dev accuracy
in <= 10 minutes on 2 CPU threads.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from evaluators.metrics import evaluate
from evaluators.tasks import load_task
from evaluators.train import build_for_task, train
from nas.config import Candidate, TrainConfig

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "sst2"))
    ap.add_argument("--seconds", type=float, default=300.0, help="training wall-clock budget")
    ap.add_argument("--steps", type=int, default=6000, help="step budget (whichever ends first)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sst2_cpu.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    task = load_task(args.data, max_len=64, vocab_size=8000)
    load_s = time.perf_counter() - t0
    cand = Candidate(n_layers=args.layers, d_model=128, n_heads=4, d_ffn=256, dropout=0.1, max_len=64,
                     pooling="mean")
    cfg = TrainConfig(steps=args.steps, max_seconds=args.seconds, batch_size=64, lr=1e-3,
                      weight_decay=0.01, warmup_fraction=0.05, seed=args.seed, device="cpu", amp=False)
    model = build_for_task(cand, task, seed=args.seed)
    res = train(model, task, cfg, schedule="budget")
    metrics = evaluate(model, task, batch_size=256, test=True)
    total_s = time.perf_counter() - t0
    out = {
        "benchmark": "sst2_cpu",
        "data": str(Path(args.data).resolve()),
        "n_train": task.n_train,
        "n_dev": task.n_dev,
        "n_test": task.n_test,
        "vocab_size": task.vocab_size,
        "candidate": json.loads(cand.to_json()),
        "train_config": cfg.model_dump(),
        "threads": args.threads,
        "steps": res.steps,
        "stop_reason": res.stop_reason,
        "train_wall_s": round(res.wall_s, 2),
        "load_s": round(load_s, 2),
        "total_s": round(total_s, 2),
        "final_loss": round(res.final_loss, 4),
        "dev_accuracy": round(metrics.accuracy, 4),
        "dev_macro_f1": round(metrics.macro_f1, 4),
        "test_accuracy": None if metrics.test_accuracy is None else round(metrics.test_accuracy, 4),
        "test_macro_f1": None if metrics.test_macro_f1 is None else round(metrics.test_macro_f1, 4),
        "params": sum(p.numel() for p in model.parameters()),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "target_met": metrics.accuracy >= 0.75 and total_s <= 600,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    table = Table(title="SST-2 on CPU")
    for col in ("steps", "train s", "total s", "dev acc", "dev macro-F1", "test acc", "target"):
        table.add_column(col)
    table.add_row(str(res.steps), f"{res.wall_s:.0f}", f"{total_s:.0f}", f"{metrics.accuracy:.4f}",
                  f"{metrics.macro_f1:.4f}", f"{out['test_accuracy']}", "met" if out["target_met"] else "MISSED")
    Console().print(table)
    Console().print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
