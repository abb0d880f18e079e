"""The GPU campaign: every GPU claim of the project measured in one prepared run (issue #17).

Parts, run in this order, each writing ``OUT/<part>.json`` as soon as it ends (so a run stopped by its
time limit keeps what it finished):

* ``meter_truth``: the >= 5M-parameter candidate (``examples/large.yaml``) measured ``--repeats`` times
  with the primary meter (the NVML counter on a GPU): the CV of J/sample across repeats. Then the primary
  meter against each comparison meter (integrated ``NVML_FI_DEV_POWER_INSTANT`` at 50 Hz, CodeCarbon)
  over the very same windows.
* ``attribution``: the large candidate measured alone, then while two other trials train on the same
  device through the measurement lane: J/sample both times.
* ``served_forms``: eager, ``torch.compile``, a CUDA graph and ONNX Runtime for three model sizes
  (~0.5M, 5M, 20M parameters), bf16 autocast (ONNX Runtime runs the fp32 graph), batch 32 and 256,
  sequence 64: J/sample and latency.
* ``packing``: the default study's candidates at 1.0 GPU per trial against 0.25 (four at once): trials
  per minute.
* ``kernels``: the 20M model trained briefly on the built-in task, then bf16 dense against int8
  weight-only (torchao) and 2:4 semi-structured sparse: J/sample and dev-accuracy drift.

``--dry-run`` runs every part at tiny sizes on the CPU with the labelled ``estimate`` meter (about 45 s
on 2 cores without ``packing``, whose two real Ray searches take about 50 s more); what cannot run on a
CPU (NVML, CUDA graphs, 2:4 kernels) is recorded as skipped with the reason. Build the report with ``python benchmarks/gpu_report.py OUT``.

    python benchmarks/gpu_campaign.py --out /tmp/gpu            # on the GPU machine (at most --budget-s, 6 minutes)
    python benchmarks/gpu_campaign.py --dry-run --out /tmp/dry  # anywhere (the test suite runs this)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import platform
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from evaluators.provenance import device_snapshot  # noqa: E402
from nas.config import Candidate, MeasureConfig  # noqa: E402

log = logging.getLogger("gpu_campaign")

#: The parts, most important first: a part that no longer fits the time left is skipped.
PARTS = ("meter_truth", "attribution", "served_forms", "packing", "kernels")
#: Seconds each part is expected to take on the GPU; a part is skipped when less time than this is left.
PART_S = {"meter_truth": 60, "attribution": 45, "served_forms": 130, "packing": 110, "kernels": 45}


@dataclasses.dataclass
class Campaign:
    """What every part needs: where, how big, which meters, and the time left."""

    device: str
    dry_run: bool
    out: Path
    meter: str
    compare: tuple[str, ...]
    repeats: int
    deadline: float
    measure: MeasureConfig
    quick: MeasureConfig
    sizes: dict[str, Candidate]
    batches: tuple[int, ...]
    train_steps: int
    packing_trials: int
    packing_wall_s: float

    def left_s(self) -> float:
        """Seconds left before the campaign's deadline."""
        return self.deadline - time.monotonic()

    def large(self) -> Candidate:
        """The >= 5M-parameter candidate of ``examples/large.yaml`` (a small stand-in in a dry run)."""
        if self.dry_run:
            return self.sizes["0.5M"]
        import yaml

        data = yaml.safe_load((Path(__file__).resolve().parent.parent / "examples" / "large.yaml").read_text())
        return Candidate(**data)


def energy_row(inf: Any) -> dict[str, Any]:
    """The figures of one :class:`~nas.records.InferenceEnergy` that the report shows, with its meter."""
    return {"meter": inf.meter, "is_estimate": inf.is_estimate, "j_per_sample": inf.energy_per_sample_j,
            "j_per_sample_net": inf.energy_per_sample_net_j, "cv": inf.cv, "idle_w": inf.idle_w,
            "latency_p50_ms": inf.latency_p50_ms, "latency_p95_ms": inf.latency_p95_ms,
            "throughput_samples_s": inf.throughput_samples_s, "batch_size": inf.batch_size,
            "seq_len": inf.seq_len, "dtype": inf.dtype, "kernels": inf.kernels, "serving_form": inf.serving_form,
            "windows_j_per_sample": list(inf.windows_j_per_sample)}


def target(name: str, value: float | None, goal: str, ok: Callable[[float], bool], why_not: str = "") -> dict[str, Any]:
    """One acceptance figure: its value, the goal in words and whether it is met (None: not measured)."""
    met = None if value is None else bool(ok(value))
    return {"name": name, "value": value, "goal": goal, "met": met,
            "why": why_not if met is not True else ""}


def _sizes(dry: bool) -> dict[str, Candidate]:
    if dry:
        return {"0.5M": Candidate(n_layers=1, d_model=32, n_heads=2, d_ffn=64, max_len=64),
                "5M": Candidate(n_layers=1, d_model=48, n_heads=2, d_ffn=96, max_len=64),
                "20M": Candidate(n_layers=2, d_model=64, n_heads=2, d_ffn=128, max_len=64)}
    return {"0.5M": Candidate(n_layers=2, d_model=128, n_heads=4, d_ffn=512, max_len=64),
            "5M": Candidate(n_layers=4, d_model=256, n_heads=4, d_ffn=1024, max_len=64),
            "20M": Candidate(n_layers=6, d_model=512, n_heads=8, d_ffn=2048, max_len=64)}


def _args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for one JSON per part")
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU, estimate meter (seconds)")
    ap.add_argument("--device", default=None, help="default: cuda:0 if present, else cpu")
    ap.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    ap.add_argument("--budget-s", type=float, default=360.0, help="stop starting parts after this many seconds")
    ap.add_argument("--repeats", type=int, default=5)
    return ap.parse_args(argv)


def make_campaign(a: argparse.Namespace) -> Campaign:
    """The campaign's settings: GPU sizes and meters, or the dry run's tiny ones."""
    device = a.device or ("cuda:0" if torch.cuda.is_available() and not a.dry_run else "cpu")
    gpu = device.startswith("cuda")
    if a.dry_run:
        measure = MeasureConfig(meter="estimate", window_s=0.05, n_windows=3, idle_s=0.05, warmup_iters=1,
                                batch_size=8, seq_len=16)
    else:
        measure = MeasureConfig(meter="nvml-counter" if gpu else "auto", window_s=1.0, n_windows=5, idle_s=1.0,
                                warmup_iters=10, batch_size=32, seq_len=64)
    quick = measure if a.dry_run else measure.model_copy(update={"window_s": 0.5, "n_windows": 3, "idle_s": 0.5})
    return Campaign(
        device=device, dry_run=a.dry_run, out=Path(a.out), meter=measure.meter, quick=quick,
        compare=("nvml-power", "codecarbon") if gpu or a.dry_run else ("codecarbon",),
        repeats=2 if a.dry_run else a.repeats, deadline=time.monotonic() + a.budget_s, measure=measure,
        sizes=_sizes(a.dry_run), batches=(8,) if a.dry_run else (32, 256),
        train_steps=3 if a.dry_run else 300, packing_trials=2 if a.dry_run else 40,
        packing_wall_s=1e9 if a.dry_run else 45.0,
    )


def _header(c: Campaign) -> dict[str, Any]:
    snap = device_snapshot(c.device)
    return {"device": c.device, "device_name": snap.get("device_name"), "driver_version": snap.get("driver_version"),
            "power_limit_w": snap.get("power_limit_w"), "torch": torch.__version__,
            "cuda": torch.version.cuda, "python": platform.python_version(), "host": platform.node(),
            "dry_run": c.dry_run, "primary_meter": c.meter,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def run_part(c: Campaign, name: str, fn: Callable[[Campaign], dict[str, Any]], header: dict[str, Any]) -> dict[str, Any]:
    """Run one part within the time left and write ``OUT/<name>.json`` (a failure is recorded, not raised)."""
    t0 = time.monotonic()
    if not c.dry_run and c.left_s() < PART_S[name]:
        result: dict[str, Any] = {"status": "skipped",
                                  "why": f"out of time: {c.left_s():.0f} s left, the part needs ~{PART_S[name]} s"}
    else:
        try:
            result = {"status": "ok", **fn(c)}
        except Exception as e:  # noqa: BLE001 - a failed part is reported; the campaign goes on
            log.exception("part %s failed", name)
            result = {"status": "failed", "why": f"{type(e).__name__}: {e}",
                      "traceback": traceback.format_exc()[-4000:]}
    result = {"part": name, **header, "wall_s": round(time.monotonic() - t0, 2), **result}
    (c.out / f"{name}.json").write_text(json.dumps(result, indent=2, default=str))
    return result


def main(argv: list[str] | None = None) -> int:
    """Run the campaign's parts; print one line per part and the acceptance figures last."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    a = _args(argv)
    c = make_campaign(a)
    c.out.mkdir(parents=True, exist_ok=True)
    import gpu_parts
    import gpu_serving

    fns = {"meter_truth": gpu_parts.meter_truth, "attribution": gpu_parts.attribution,
           "packing": gpu_parts.packing, "served_forms": gpu_serving.served_forms, "kernels": gpu_serving.kernels}
    header = _header(c)
    targets: list[dict[str, Any]] = []
    for name in a.parts:
        r = run_part(c, name, fns[name], header)
        print(f"{name:13s} {r['status']:8s} {r['wall_s']:7.1f} s  {r.get('why', '')}", flush=True)
        targets += r.get("targets", [])
    print(f"\n{'figure':52s} {'value':>10s}  goal")
    for t in targets:
        v = "-" if t["value"] is None else f"{t['value']:.4g}"
        mark = {True: "met", False: "NOT met", None: "not measured"}[t["met"]]
        print(f"{t['name']:52s} {v:>10s}  {t['goal']} ({mark})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
