"""Build the GPU campaign's report (Markdown) from the JSON files ``benchmarks/gpu_campaign.py`` wrote.

    python benchmarks/gpu_report.py RESULTS_DIR --out docs/benchmarks/gpu.md

Every energy figure names its meter; an estimated one is marked ESTIMATE. A dry run's report says, at the
top, that its figures are CPU dry-run figures and not GPU results.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

PARTS = ("meter_truth", "served_forms", "kernels", "attribution", "packing")
TITLES = {"meter_truth": "Meter truth", "served_forms": "Served forms", "kernels": "Kernels",
          "attribution": "Attribution under packing", "packing": "Packing throughput"}


def num(v: Any, digits: int = 4) -> str:
    """A number to ``digits`` significant digits, or ``-`` for None."""
    if v is None:
        return "-"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    return f"{v:.{digits}g}"


def pct(v: Any) -> str:
    """A fraction as a percentage, or ``-``."""
    return "-" if v is None else f"{100 * v:.2f}%"


def meter(row: dict[str, Any]) -> str:
    """The meter of an energy row, marked ESTIMATE when it estimates."""
    return f"{row.get('meter')}{' (ESTIMATE)' if row.get('is_estimate') else ''}"


def table(head: Iterable[str], rows: Iterable[Iterable[Any]]) -> list[str]:
    """A Markdown table."""
    head = list(head)
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(str(x).replace("|", "/") for x in r) + " |" for r in rows]
    return out + [""]


def load(folder: Path) -> dict[str, dict[str, Any]]:
    """The parts found in ``folder`` by name (a missing part is simply absent)."""
    return {p: json.loads((folder / f"{p}.json").read_text()) for p in PARTS if (folder / f"{p}.json").exists()}


def _header(first: dict[str, Any]) -> list[str]:
    lines = ["# GPU campaign", ""]
    if first.get("dry_run"):
        lines += ["> **DRY RUN on the CPU**: tiny models and the `estimate` meter (ESTIMATE). These are not GPU",
                  "> figures; they show that every part runs. Run the campaign on a GPU for the real report.", ""]
    lines += ["Made by `python benchmarks/gpu_campaign.py --out DIR` then `python benchmarks/gpu_report.py DIR`.", ""]
    lines += table(["device", "name", "driver", "power limit (W)", "torch", "CUDA", "primary meter", "started (UTC)"],
                   [[first.get("device"), first.get("device_name"), first.get("driver_version"),
                     num(first.get("power_limit_w")), first.get("torch"), first.get("cuda"),
                     first.get("primary_meter"), first.get("started")]])
    return lines


def _targets(parts: dict[str, dict[str, Any]]) -> list[str]:
    rows = []
    for name, p in parts.items():
        for t in p.get("targets", []):
            met = {True: "yes", False: "**no**", None: "not measured"}[t["met"]]
            rows.append([TITLES[name], t["name"], num(t["value"]), t["goal"], met, t.get("why") or ""])
    for name in PARTS:
        if name not in parts:
            rows.append([TITLES[name], "(part not run)", "-", "-", "not measured", "no result file"])
        elif parts[name]["status"] != "ok":
            rows.append([TITLES[name], f"(part {parts[name]['status']})", "-", "-", "not measured",
                         parts[name].get("why", "")])
    return ["## Acceptance figures", ""] + table(["part", "figure", "value", "goal", "met", "why not"], rows)


def _meter_truth(p: dict[str, Any]) -> list[str]:
    out = [f"{num(p['n_params'] / 1e6, 3)}M parameters; {len(p['repeats'])} repeats with `{meter(p['repeats'][0])}`; "
           f"repeat CV of J/sample **{pct(p['repeat_cv'])}**.", ""]
    out += table(["repeat", "J/sample", "CV within", "p50 ms", "meter"],
                 [[i + 1, num(r["j_per_sample"]), pct(r["cv"]), num(r["latency_p50_ms"]), meter(r)]
                  for i, r in enumerate(p["repeats"])])
    rows = [[name, len(c["windows"]), num(c["mean_ratio"]), pct(c["gap"]),
             f"{c['meter']}{' (ESTIMATE)' if c['is_estimate'] else ''}"] for name, c in p["comparisons"].items()]
    if rows:
        out += [f"Against `{p['meter']}` over the same windows:", ""]
        out += table(["meter", "windows", "its J / primary J", "gap", "its label"], rows)
    return out


def _served(p: dict[str, Any]) -> list[str]:
    return table(["size", "params", "form", "batch", "J/sample", "p50 ms", "samples/s", "dtype", "kernels", "meter"],
                 [[r["size"], num(r["n_params"], 3), r["form"], r["batch_size"], num(r["j_per_sample"]),
                   num(r["latency_p50_ms"]), num(r["throughput_samples_s"]), r["dtype"], r["kernels"], meter(r)]
                  for r in p["rows"]])


def _kernels(p: dict[str, Any]) -> list[str]:
    out = [f"The {num(p['n_params'] / 1e6, 3)}M model after {p['train_steps']} training steps on `{p['task']}`.", ""]
    return out + table(["variant", "dev accuracy", "drift", "J/sample", "vs bf16 dense", "kernels", "meter"],
                       [[r["variant"], num(r["dev_accuracy"]), num(r.get("accuracy_drift")), num(r["j_per_sample"]),
                         num(r.get("j_vs_dense")), r["kernels"], meter(r)] for r in p["rows"]])


def _attribution(p: dict[str, Any]) -> list[str]:
    out = table(["case", "J/sample", "CV", "p50 ms", "meter"],
                [[case, num(p[case]["j_per_sample"]), pct(p[case]["cv"]), num(p[case]["latency_p50_ms"]),
                  meter(p[case])] for case in ("alone", "packed")])
    return out + [f"Gap {pct(p['gap'])}; the trainers stepped {p['trainer_steps_during_measurement']} times "
                  f"during the packed measurement (between its windows); device use seen: "
                  f"`{json.dumps(p.get('packed_device_use'))}`.", ""]


def _packing(p: dict[str, Any]) -> list[str]:
    out = table(["arm", "GPU per trial", "at once", "complete", "failed", "span s", "trials/min", "energy meter"],
                [[a["label"], a["gpus_per_trial"], a["max_concurrent"], a["complete"], a["failed"],
                  num(a["trials_span_s"]), num(a["trials_per_min"]),
                  ", ".join(a["energy_meters"]) + (" (ESTIMATE)" if a["energy_is_estimate"] else "")]
                 for a in p["arms"]])
    return out + [f"Gain {num(p['gain'])}x. {p['note']}.", ""]


RENDER = {"meter_truth": _meter_truth, "served_forms": _served, "kernels": _kernels, "attribution": _attribution,
          "packing": _packing}


def render(parts: dict[str, dict[str, Any]]) -> str:
    """The whole report as Markdown."""
    if not parts:
        raise SystemExit("no campaign result files (meter_truth.json ...) in that folder; run gpu_campaign.py first")
    lines = _header(next(iter(parts.values()))) + _targets(parts)
    for name, p in parts.items():
        lines += [f"## {TITLES[name]}", "", f"Status: {p['status']}, {num(p['wall_s'])} s.", ""]
        if p["status"] == "ok":
            lines += RENDER[name](p)
        else:
            lines += [f"Not run: {p.get('why', '')}", ""]
        if p.get("skipped"):
            lines += ["Skipped here:", ""] + [f"- {s['what']}: {s['why']}" for s in p["skipped"]] + [""]
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write the report (default: ``RESULTS_DIR/gpu.md``) and print where."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", type=Path)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    out = a.out or a.results / "gpu.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(load(a.results)))
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
