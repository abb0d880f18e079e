"""The analysis half of benchmarks/fidelity.py: correlations, hypervolume ratios and the budget it picks."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path
from typing import Any

import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "fidelity.py"
_spec = importlib.util.spec_from_file_location("fidelity_benchmark", _PATH)
assert _spec is not None and _spec.loader is not None
fidelity = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fidelity)


def test_correlate_ranks_and_skips_missing() -> None:
    assert fidelity.correlate([0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.9])["spearman"] == pytest.approx(1.0)
    assert fidelity.correlate([0.1, 0.2, 0.3, 0.4], [0.9, 0.7, 0.6, 0.5])["kendall"] == pytest.approx(-1.0)
    r = fidelity.correlate([0.1, None, 0.3, 0.4, 0.2], [0.5, 0.6, 0.7, None, 0.6])
    assert r["n"] == 3 and r["spearman"] == pytest.approx(1.0)


@pytest.mark.parametrize("x, y", [([0.1, 0.2], [0.3, 0.4]), ([0.5, 0.5, 0.5], [0.1, 0.2, 0.3])])
def test_correlate_undefined_is_none(x: list[float], y: list[float]) -> None:
    assert fidelity.correlate(x, y)["spearman"] is None  # too few, or a constant side (all at chance)


def test_hv_ratio_is_one_for_the_true_front_and_less_for_a_wrong_one() -> None:
    energy = [1e-3, 2e-3, 4e-3]
    long = [0.6, 0.7, 0.9]
    assert fidelity.hv_ratio(long, long, energy) == pytest.approx(1.0)
    # the short budget thinks the expensive model is worst: it drops it from the front it chooses
    wrong = fidelity.hv_ratio([0.6, 0.7, 0.5], long, energy)
    assert wrong is not None and wrong < 0.99


def _done(n: int, seeds: list[int], acc: dict[int, Any]) -> dict[tuple[int, int, int], dict[str, Any]]:
    out = {}
    for s in seeds:
        for b, values in acc.items():
            for c in range(n):
                out[(c, s, b)] = {"status": "COMPLETE", "accuracy": values[c], "energy_per_sample_j": 1e-3 * (c + 1),
                                  "rungs": [[50, values[c]]] if b == 200 else []}
    return out


def test_analyse_picks_the_cheapest_budget_that_ranks_like_the_long_one() -> None:
    long = [0.55, 0.6, 0.7, 0.75, 0.8, 0.9]
    args = argparse.Namespace(budgets=[50, 100], long=200, seeds=[0, 1, 2], target=0.85)
    shuffled = [0.9, 0.55, 0.8, 0.6, 0.75, 0.7]
    out = fidelity.analyse(args, list(range(6)), _done(6, args.seeds, {50: shuffled, 100: long, 200: long}))
    assert out["per_budget"]["100"]["mean_spearman"] == pytest.approx(1.0)
    assert out["per_budget"]["50"]["mean_spearman"] < 0.85
    assert out["recommended_budget"] == 100
    assert out["noise_ceiling"]["mean_spearman"] == pytest.approx(1.0)  # every seed agrees here
    assert out["per_budget"]["50"]["asha_rung_mean_spearman"] == pytest.approx(1.0)  # mid-way rung of the long run


def test_analyse_states_the_best_when_no_budget_reaches_the_target() -> None:
    long = [0.55, 0.6, 0.7, 0.75, 0.8, 0.9]
    args = argparse.Namespace(budgets=[50], long=200, seeds=[0], target=0.85)
    out = fidelity.analyse(args, list(range(6)), _done(6, [0], {50: long[::-1], 200: long}))
    assert out["recommended_budget"] is None
    assert "no budget reaches 0.85" in out["recommendation"]


def test_plot_draws_each_budget_and_the_ceiling(tmp_path: Path) -> None:
    import xml.etree.ElementTree as ET

    long = [0.55, 0.6, 0.7, 0.75, 0.8, 0.9]
    args = argparse.Namespace(budgets=[50, 100], long=200, seeds=[0, 1], target=0.85)
    out = fidelity.analyse(args, list(range(6)), _done(6, args.seeds, {50: long[::-1], 100: long, 200: long}))
    result = {**out, "task": "builtin:longmatch", "long_budget": 200, "seeds": [0, 1], "target": 0.85}
    fidelity.plot_svg(result, tmp_path / "f.svg")
    svg = ET.parse(tmp_path / "f.svg").getroot()
    lines = svg.findall("{http://www.w3.org/2000/svg}polyline")
    assert len(lines) == 4  # short runs, ASHA rungs, the noise ceiling, the target
    short = [tuple(map(float, p.split(","))) for p in lines[0].get("points", "").split()]
    assert len(short) == 2 and short[0][1] > short[1][1]  # Spearman -1 at 50 steps is drawn below 1.0 at 100
    assert "noise ceiling 1.00" in ET.tostring(svg, encoding="unicode")


def test_markdown_table_quotes_each_budget_rung_and_the_ceiling() -> None:
    long = [0.55, 0.6, 0.7, 0.75, 0.8, 0.9]
    args = argparse.Namespace(budgets=[50], long=200, seeds=[0, 1], target=0.85)
    done = _done(6, args.seeds, {50: long[::-1], 200: long})
    out = fidelity.analyse(args, list(range(6)), done)
    acc = {str(s): {str(b): fidelity._acc(done, 6, s, b) for b in (50, 200)} for s in args.seeds}
    table = fidelity.markdown_table({**out, "long_budget": 200, "seeds": [0, 1], "accuracy": acc})
    assert "| 50 | -1.00 (-1.00 / -1.00) |" in table
    assert "| 100 (rung only) |" in table  # a quarter and half of the long run are rungs too
    assert "| 200 (long) | noise ceiling 1.00 (seed pairs 1.00) |" in table and "0.717 |" in table


class _Cand:
    def __init__(self, layers: int) -> None:
        self.layers = layers

    def flat(self) -> dict[str, Any]:
        return {"n_layers": self.layers}


def test_resume_refuses_a_work_file_begun_with_other_candidates(tmp_path: Path) -> None:
    work = tmp_path / "f.runs.jsonl"
    fidelity.check_candidates(work, [_Cand(1), _Cand(2)])  # begun: the listing is written
    fidelity.check_candidates(work, [_Cand(1), _Cand(2)])  # the same candidates resume
    with pytest.raises(SystemExit, match="other candidates"):
        fidelity.check_candidates(work, [_Cand(2), _Cand(1)])


def _cheapest_near_best_rung(result: dict[str, Any], slack: float = 0.05) -> int:
    rungs = {int(k): v for k, v in result["asha_rungs_mean_spearman"].items() if v is not None}
    best = max(rungs.values())
    return min(r for r, rho in rungs.items() if rho >= best - slack)


def test_preset_default_rungs_are_the_committed_benchmarks_choice() -> None:
    """Each preset's default rungs (nas.spec.PRESET_RUNGS) follow from the committed results: the first rung is
    the cheapest ASHA rung within 0.05 of the best one; tiny's last is the best whole budget (the built-in
    study's steps), base's the long budget of the SST-2 setting."""
    import json

    from nas.spec import DEFAULT_STEPS, PRESET_RUNGS, StudySpec

    results = _PATH.parent / "results"
    builtin = json.loads((results / "fidelity_builtin.json").read_text())
    sst2 = json.loads((results / "fidelity_sst2.json").read_text())
    best_whole = max(builtin["per_budget"], key=lambda b: builtin["per_budget"][b]["mean_spearman"])
    assert PRESET_RUNGS["tiny"] == (_cheapest_near_best_rung(builtin), int(best_whole)) == (400, DEFAULT_STEPS)
    assert PRESET_RUNGS["base"] == (_cheapest_near_best_rung(sst2), sst2["long_budget"])
    for preset, rungs in PRESET_RUNGS.items():  # a spec without rungs gets its preset's
        assert StudySpec.model_validate({"space": {"preset": preset}}).fidelity.rungs == list(rungs)
        kept = StudySpec.model_validate({"space": {"preset": preset}, "fidelity": {"reduction_factor": 3}})
        assert (kept.fidelity.rungs, kept.fidelity.reduction_factor) == (list(rungs), 3)
    assert StudySpec.model_validate({"space": {"preset": "base"}, "fidelity": {"rungs": [10]}}).fidelity.rungs == [10]
