"""Measurement overhead of each meter around a training-like CPU loop.

Times the same loop (forward + backward + AdamW step of a tiny Transformer) bare and inside a meter
window, alternating, several repeats; reports the median relative slowdown per meter and the cost of
one begin/end pair. Writes ``benchmarks/results/meter_overhead.json``.

Run:  python benchmarks/meter_overhead.py [--steps 200] [--repeats 5] [--meters estimate,codecarbon,none]

NVML meters are timed only where a CUDA GPU with a driver exists (on CPU-only machines they are skipped
and the result says so).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from evaluators.meters import make_meter  # noqa: E402
from nas.config import Candidate, MeasureConfig  # noqa: E402
from nas.errors import MeterUnavailableError  # noqa: E402

logger = logging.getLogger("meter_overhead")


def _loop(model: torch.nn.Module, opt: torch.optim.Optimizer, ids: torch.Tensor, mask: torch.Tensor,
          labels: torch.Tensor, steps: int) -> None:
    for _ in range(steps):
        out = model(ids, mask)
        logits = out.logits if hasattr(out, "logits") else out
        loss = torch.nn.functional.cross_entropy(logits, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def _loadavg() -> float | None:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--meters", default="estimate,codecarbon,none,nvml-counter,nvml-power")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--device", default="cuda:0" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "meter_overhead.json"))
    return ap.parse_args(argv)


class _Bench:
    """The timed training loop: a 2-layer d64 encoder on one fixed batch."""

    def __init__(self, args: argparse.Namespace) -> None:
        from nas.models import build

        torch.manual_seed(0)
        self.device, self.steps = args.device, args.steps
        self.model = build(Candidate(n_layers=2, d_model=64, n_heads=4, d_ffn=128), vocab_size=1000,
                           num_labels=2).to(self.device)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-3)
        self.ids = torch.randint(1, 1000, (args.batch, args.seq_len), device=self.device)
        self.mask = torch.ones_like(self.ids)
        self.labels = torch.randint(0, 2, (args.batch,), device=self.device)
        self.run(20)  # warm-up

    def run(self, steps: int) -> None:
        _loop(self.model, self.opt, self.ids, self.mask, self.labels, steps)

    def sync(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize(self.device)

    def bare(self) -> float:
        self.sync()
        t = time.perf_counter()
        self.run(self.steps)
        self.sync()
        return time.perf_counter() - t


def _measure(bench: _Bench, meter: Any, repeats: int) -> dict[str, Any]:
    """Bare vs metered windows of the loop, and the cost of an empty begin/end pair."""
    bare_s: list[float] = []
    metered_s: list[float] = []
    pair_ms: list[float] = []
    for _ in range(repeats):
        bare_s.append(bench.bare())
        bench.sync()
        t = time.perf_counter()
        meter.begin("train")
        bench.run(bench.steps)
        meter.end("train")
        metered_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        meter.begin("empty")
        meter.end("empty")
        pair_ms.append((time.perf_counter() - t) * 1000)
    rel = [(m - b) / b for m, b in zip(metered_s, bare_s, strict=True)]
    return {
        "meter": meter.name,
        "bare_s_median": statistics.median(bare_s),
        "metered_s_median": statistics.median(metered_s),
        "overhead_rel_median": statistics.median(rel),
        "overhead_rel_all": rel,
        # min/min is the contention-robust estimate: noise only ever adds time.
        "overhead_rel_min_over_min": min(metered_s) / min(bare_s) - 1,
        "begin_end_pair_ms_median": statistics.median(pair_ms),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = _args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    bench = _Bench(args)
    device = args.device
    cfg = MeasureConfig()
    results: dict[str, Any] = {}
    for name in [m.strip() for m in args.meters.split(",") if m.strip()]:
        try:
            meter = make_meter(name, cfg, device=device)
        except MeterUnavailableError as e:
            results[name] = {"skipped": str(e)}
            logger.info("%s: skipped (%s)", name, e)
            continue
        results[name] = _measure(bench, meter, args.repeats)
        meter.close()
        logger.info("%s: bare %.3f s, metered %.3f s, overhead %+.2f%% (median of %d), %+.2f%% (min/min), "
                    "begin+end %.2f ms",
                    name, results[name]["bare_s_median"], results[name]["metered_s_median"],
                    100 * results[name]["overhead_rel_median"], args.repeats,
                    100 * results[name]["overhead_rel_min_over_min"],
                    results[name]["begin_end_pair_ms_median"])
    report = {
        "command": "python benchmarks/meter_overhead.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "device": device,
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "steps_per_window": args.steps,
        "repeats": args.repeats,
        "loop": f"2-layer d64 encoder, batch {args.batch} x {args.seq_len} tokens, forward+backward+AdamW",
        "load_average_1min": _loadavg(),
        "meters": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    logger.info("wrote %s", out)
    return report


if __name__ == "__main__":
    main()
