"""The analysis half of benchmarks/prune_importance.py, and the committed result the README quotes."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("prune_importance_benchmark", ROOT / "benchmarks" / "prune_importance.py")
assert _spec is not None and _spec.loader is not None
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

RESULT = ROOT / "benchmarks" / "results" / "prune_importance.json"


def _runs(task: str, dev: dict[tuple[str, str, str], list[float]]) -> list[dict[str, Any]]:
    rows = []
    for (kind, importance, schedule), values in dev.items():
        for seed, v in enumerate(values):
            rows.append({"task": task, "seed": seed, "kind": kind, "importance": importance, "schedule": schedule,
                         "dev": v, "dev_after_prune": v - 0.1, "params": 100})
    rows += [{"task": task, "seed": s, "kind": "none", "importance": None, "schedule": None, "dev": 0.9,
              "dev_after_prune": 0.88, "params": 150} for s in range(3)]
    return rows


def test_summary_takes_the_median_over_seeds_and_compares_the_importances() -> None:
    runs = _runs("builtin:a", {("heads", "magnitude", "one_shot"): [0.7, 0.9, 0.8],
                               ("heads", "taylor", "one_shot"): [0.95, 0.6, 0.85],
                               ("ffn", "magnitude", "one_shot"): [0.8, 0.8, 0.8],
                               ("ffn", "taylor", "one_shot"): [0.7, 0.9, 0.75]})
    runs += _runs("builtin:b", {("heads", "magnitude", "one_shot"): [0.7, 0.7, 0.7],
                                ("heads", "taylor", "one_shot"): [0.7, 0.7, 0.7]})
    summary = bench.summarise(runs)
    heads = summary["builtin:a"]["heads/one_shot"]
    assert heads["taylor"]["median"] == pytest.approx(0.85) and heads["magnitude"]["median"] == pytest.approx(0.8)
    assert heads["taylor"]["per_seed"] == {"0": 0.95, "1": 0.6, "2": 0.85} and heads["taylor_at_least_norm"]
    assert heads["taylor"]["median_after_prune"] == pytest.approx(0.75)
    assert not summary["builtin:a"]["ffn/one_shot"]["taylor_at_least_norm"]
    assert summary["builtin:b"]["heads/one_shot"]["taylor_at_least_norm"]  # a tie counts as "at least"
    assert "heads/cubic" not in summary["builtin:a"] and summary["builtin:a"]["dense"]["median"] == 0.9
    assert bench.acceptance(summary) == {"criterion": bench.acceptance(summary)["criterion"],
                                         "per_task": {"builtin:a": True, "builtin:b": True}, "holds": True}
    worse = _runs("builtin:c", {("heads", "magnitude", "one_shot"): [0.9, 0.9, 0.9],
                                ("heads", "taylor", "one_shot"): [0.8, 0.95, 0.85]})
    assert not bench.acceptance(bench.summarise(worse))["holds"]


def test_the_committed_result_has_what_the_readme_quotes() -> None:
    result = json.loads(RESULT.read_text(encoding="utf-8"))
    assert result["command"].startswith("python benchmarks/prune_importance.py") and result["machine"]
    assert result["setup"]["amount"] == 0.5 and "energy" in result
    assert set(result["acceptance"]["per_task"]) == {"builtin:sentiment", "builtin:longmatch"}
    assert result["acceptance"]["holds"] == all(result["acceptance"]["per_task"].values())
    for task in ("builtin:sentiment", "builtin:longmatch"):
        table = result["summary"][task]
        assert len(table["dense"]["per_seed"]) == 3
        for cell in ("heads/one_shot", "ffn/one_shot", "heads/cubic"):
            for importance in ("magnitude", "taylor"):
                got = table[cell][importance]
                assert len(got["per_seed"]) == 3 and 0.0 <= got["median"] <= 1.0
            assert table[cell]["taylor"]["params"] == table[cell]["magnitude"]["params"]  # equal sparsity
