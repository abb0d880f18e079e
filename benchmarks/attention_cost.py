"""What each attention kind costs: attention FLOPs, latency and J/sample at T = 64 ... 1024, batch 8.

For every kind of :data:`nas.vocab.ATTENTION_KIND`, with the settings below fixed across lengths, a
2-layer encoder (d_model 256, 4 heads, FFN 512) is built for each sequence length T and:

* **attention FLOPs**: one attention module's forward on its countable path (``FlopCounterMode``),
  minus the q/k/v/out projections, which every kind shares; per sample;
* **latency**: median wall time, on a batch of 8 (inference mode), interleaved over kinds so that load
  changes hit every kind alike, of the attention *core* (scores, softmax and weighted sum on projected
  q, k, v: what the attention FLOPs count), of one attention module's forward (projections included)
  and of the whole model's;
* **J/sample**: the service's own measurement protocol (:func:`evaluators.measure.measure_inference`)
  with the ``auto`` meter: on this CPU-only machine a labelled estimate (``is_estimate``), on a GPU the
  NVML counter.

A GPU column (latency and J/sample on ``cuda``) is added when torch sees a GPU.

Settings: local window 32; strided stride 32; fixed stride 32, summary 2; hash 8 buckets; lowrank
k = min(64, T); linear elu+1.

Run:  python benchmarks/attention_cost.py [--lengths 64 128 256 512 1024] [--repeats 15]
Writes ``benchmarks/results/attention_cost.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from evaluators.measure import measure_inference  # noqa: E402
from nas.config import Candidate, MeasureConfig  # noqa: E402
from nas.models import ATTENTION_REGISTRY, build  # noqa: E402
from nas.vocab import ATTENTION_KIND  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "attention_cost.json"
SHAPE = {"n_layers": 2, "d_model": 256, "n_heads": 4, "d_ffn": 512, "dropout": 0.0}
BATCH = 8


def settings(kind: str, T: int) -> dict[str, Any]:
    """The ``attention`` block of ``kind`` at length ``T`` (fixed across lengths, except lowrank's k <= T)."""
    return {"local": {"window": 32}, "strided": {"stride": 32}, "fixed": {"stride": 32, "summary": 2},
            "hash": {"buckets": 8}, "lowrank": {"k": min(64, T)}}.get(kind, {})


def candidate(kind: str, T: int) -> Candidate:
    return Candidate.model_validate({**SHAPE, "max_len": max(T, 64), "attention": {"kind": kind, **settings(kind, T)}})


def attention_flops(kind: str, T: int) -> int:
    """Per-sample FLOPs of one attention module, projections excluded."""
    m = ATTENTION_REGISTRY.lookup(kind)(candidate(kind, T)).eval()
    m.use_fused = False
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        m(torch.randn(1, T, SHAPE["d_model"]))
    return int(counter.get_total_flops()) - 4 * 2 * T * SHAPE["d_model"] ** 2


def latencies_ms(models: dict[str, torch.nn.Module], inputs: torch.Tensor, repeats: int, device: str
                 ) -> dict[str, float]:
    """Median forward time per kind on ``inputs``, interleaved kind by kind within each repeat."""
    ids = inputs.to(device)
    times: dict[str, list[float]] = {k: [] for k in models}
    with torch.inference_mode():
        for m in models.values():
            m(ids)  # warm up
        for _ in range(repeats):
            for kind, m in models.items():
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                m(ids)
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                times[kind].append((time.perf_counter() - t0) * 1000.0)
    return {k: statistics.median(v) for k, v in times.items()}


class _Core(torch.nn.Module):
    """An attention module's core alone, what the attention FLOPs count: scores, softmax and the weighted sum
    on fixed, already projected and head-split q, k, v (the projections every kind shares are left out)."""

    def __init__(self, attn: torch.nn.Module, T: int, device: str) -> None:
        super().__init__()
        self.attn: Any = attn
        shape = (BATCH, attn.n_heads, T, attn.head_dim)  # type: ignore[arg-type]
        gen = torch.Generator().manual_seed(0)
        self.q, self.k, self.v = (torch.randn(shape, generator=gen).to(device) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.attn._attend(self.q, self.k, self.v, None, False)
        return y  # type: ignore[no-any-return]


def energy(model: torch.nn.Module, T: int, device: str, window_s: float) -> dict[str, Any]:
    cfg = MeasureConfig(meter="auto", batch_size=BATCH, seq_len=T, window_s=window_s, n_windows=3, idle_s=0.2,
                        warmup_iters=2)
    inf = measure_inference(model, cfg, vocab_size=1000, device=device)
    return {"j_per_sample": inf.energy_per_sample_j, "meter": inf.meter, "is_estimate": inf.is_estimate,
            "cv": inf.cv}


def run(lengths: list[int], repeats: int, window_s: float, kinds: list[str]) -> dict[str, Any]:
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for T in lengths:
        torch.manual_seed(0)
        flops = {k: attention_flops(k, T) for k in kinds}
        for device in devices:
            models = {k: build(candidate(k, T), vocab_size=1000, num_labels=2).eval().to(device) for k in kinds}
            lat = latencies_ms(models, torch.randint(1, 1000, (BATCH, T)), repeats, device)
            attn = {k: models[k].iter_blocks()[0].attn for k in kinds}
            lat_attn = latencies_ms(attn, torch.randn(BATCH, T, SHAPE["d_model"]), repeats, device)
            lat_core = latencies_ms({k: _Core(a, T, device) for k, a in attn.items()}, torch.zeros(1), repeats, device)
            for kind in kinds:
                e = energy(models[kind], T, device, window_s)
                rows.append({"T": T, "kind": kind, "settings": settings(kind, T), "device": device,
                             "attention_flops_per_sample": flops[kind],
                             "flops_vs_softmax": flops[kind] / flops["softmax"] if "softmax" in flops else None,
                             "core_latency_ms": round(lat_core[kind], 3),
                             "core_speedup_vs_softmax": (lat_core["softmax"] / lat_core[kind])
                             if "softmax" in lat_core else None,
                             "attention_latency_ms": round(lat_attn[kind], 3),
                             "attention_speedup_vs_softmax": (lat_attn["softmax"] / lat_attn[kind])
                             if "softmax" in lat_attn else None,
                             "latency_ms": round(lat[kind], 3),
                             "speedup_vs_softmax": (lat["softmax"] / lat[kind]) if "softmax" in lat else None,
                             **e})
                print(f"T={T:5d} {device:4s} {kind:8s} flops/softmax {rows[-1]['flops_vs_softmax']:.3f} "
                      f"core {lat_core[kind]:7.2f} ms, attention {lat_attn[kind]:7.2f} ms, model {lat[kind]:8.2f} ms  J/sample {e['j_per_sample']:.3g} "
                      f"({e['meter']}{', ESTIMATE' if e['is_estimate'] else ''})", flush=True)
    return {"command": "python benchmarks/attention_cost.py " + " ".join(sys.argv[1:]),
            "model": {**SHAPE, "batch": BATCH}, "lengths": lengths, "repeats": repeats,
            "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "rows": rows}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[64, 128, 256, 512, 1024])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--window-s", type=float, default=0.5, help="energy window length (s)")
    ap.add_argument("--kinds", nargs="+", default=list(ATTENTION_KIND.names))
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    result = run(args.lengths, args.repeats, args.window_s, args.kinds)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
