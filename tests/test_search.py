"""End-to-end searches through Ray Tune + Optuna into SQLite (slow: each starts local Ray)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from nas.dominance import non_dominated

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def small_spec(name: str, db: Path, trials: int = 6, **extra) -> dict:
    spec = {
        "name": name,
        "task": "builtin:sentiment",
        "space": {"preset": "tiny", "overrides": {
            "n_layers": [1], "d_model": [16, 32], "n_heads": [2], "ffn_ratio": [1, 2],
            "attention": ["softmax", "local", "linear", "lowrank"], "window": [2, 8], "k": [8],
            "attention_bits": [32, 8], "ffn_bits": [32, 8], "embedding_bits": [32],
            "sparsity": ["none"], "rank_attention": [1.0], "rank_ffn": [1.0], "activation_bits": [32], "max_len": 32,
        }},
        "sampler": {"kind": "random", "seed": 1},
        "budget": {"trials": trials},
        "fidelity": {"rungs": [30], "enabled": False},
        "train": {"batch_size": 32, "lr": 0.003, "eval_batch_size": 256},
        "measure": {"meter": "estimate", "window_s": 0.1, "n_windows": 2, "idle_s": 0.1, "warmup_iters": 2,
                    "batch_size": 8, "seq_len": 32},
        "resources": {"cpus_per_trial": 1, "max_concurrent": 2},
        "storage": {"url": str(db), "retention": "front"},
    }
    for k, v in extra.items():
        spec[k] = v
    return spec


def write_spec(tmp_path: Path, spec: dict) -> Path:
    p = tmp_path / f"{spec['name']}.yaml"
    p.write_text(yaml.safe_dump(spec))
    return p


def nas_cli(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    e = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "nas", *args], capture_output=True, text=True, cwd=ROOT,
                          env=e, timeout=timeout)


def brute_force_front(points: list[tuple[float, float, float]]) -> set[int]:
    """Indices no other point surely dominates: (accuracy, maximised; J/sample +- half-width, minimised).

    ``j`` surely dominates ``i`` when even ``j``'s worst J/sample (plus its half-width) is no more than ``i``'s
    best (minus its own), with accuracy no lower, and one of the two strictly better (front.noise: aware).
    """
    keep = set()
    for i, (a, e, w) in enumerate(points):
        dominated = any((a2 >= a and e2 + w2 <= e - w) and (a2 > a or e2 + w2 < e - w)
                        for j, (a2, e2, w2) in enumerate(points) if j != i)
        if not dominated:
            keep.add(i)
    return keep


def noise_half_width(v) -> float:
    """Half the 95% interval of a stored trial's J/sample (its reading's CV over its windows)."""
    inf = v.result.inference
    return 1.96 * (inf.cv or 0.0) * inf.energy_per_sample_j / inf.n_windows ** 0.5


def test_search_stores_trials_front_and_cost(tmp_path):
    db = tmp_path / "nas.db"
    spec = write_spec(tmp_path, small_spec("e2e", db))
    res = nas_cli("search", str(spec), "--quiet", "--db", str(db))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Pareto front" in res.stdout

    listed = json.loads(nas_cli("pareto", "e2e", "--json", "--db", str(db)).stdout)
    from storage import Store

    store = Store.open(str(db), create=False)
    views = store.trials("e2e")
    complete = [v for v in views if v.state == "COMPLETE"]
    assert len(complete) == 6
    # every trial records test accuracy and the dev majority-class rate; the front is over those above it
    assert all(v.values()["test_accuracy"] is not None and v.values()["majority_accuracy"] for v in complete)
    eligible = [v for v in complete if v.values()["accuracy"] > v.values()["majority_accuracy"]]
    pts = [(v.values()["accuracy"], v.values()["energy_per_sample_j"], noise_half_width(v)) for v in eligible]
    expected = {eligible[i].number for i in brute_force_front(pts)}
    assert {t["number"] for t in listed} == expected
    assert {e.trial_number for e in store.persisted_front("e2e")} == expected
    # every stored energy figure names its meter; this machine's is an estimate, labelled as one
    for v in complete:
        inf = v.result.inference
        assert inf.meter == "estimate" and inf.is_estimate
        assert v.cost.train_energy_j is not None and v.cost.train_energy_j > 0
    info = store.get_study("e2e")
    assert info.total_energy_j > 0 and info.cost_includes_estimate
    # retention "front": weights are kept for front members only
    kept = {a.trial_number for a in store.artefacts("e2e") if a.kind == "weights"}
    assert kept == expected
    for a in store.artefacts("e2e"):
        assert Path(a.path, "model.safetensors").exists()
    # the Optuna study lives in the same database, with the same trials
    import optuna

    ot = optuna.load_study(study_name="e2e", storage=f"sqlite:///{db}")
    assert len([t for t in ot.trials if t.state == optuna.trial.TrialState.COMPLETE]) == 6
    # show works for a stored trial
    shown = json.loads(nas_cli("show", "e2e", str(complete[0].number), "--json", "--db", str(db)).stdout)
    assert shown["number"] == complete[0].number and shown["result"]["inference"]["meter"] == "estimate"


def test_failing_candidate_is_recorded_not_resampled_and_others_complete(tmp_path):
    db = tmp_path / "nas.db"
    spec = small_spec("faulty", db, trials=6)
    spec["space"]["overrides"]["d_model"] = [16, 32]
    path = write_spec(tmp_path, spec)
    res = nas_cli("search", str(path), "--quiet", "--db", str(db), env={"NAS_FAIL_IF": "d_model == 16"})
    assert res.returncode == 0, res.stderr[-3000:]
    from storage import Store

    views = Store.open(str(db), create=False).trials("faulty")
    failed = [v for v in views if v.state == "FAIL" and "injected fault" in (v.fail_reason or "")]
    done = [v for v in views if v.state == "COMPLETE"]
    assert failed, "the injected failure was not recorded"
    assert all(v.candidate.d_model == 16 for v in failed)
    assert all(v.candidate.d_model == 32 for v in done) and done
    # a failed candidate is never evaluated twice
    hashes = [v.candidate_hash for v in views if v.state in ("FAIL", "COMPLETE") and v.candidate_hash]
    assert len(hashes) == len(set(hashes))


def test_killed_worker_becomes_fail_with_reason(tmp_path):
    db = tmp_path / "nas.db"
    path = write_spec(tmp_path, small_spec("killed", db, trials=4))
    res = nas_cli("search", str(path), "--quiet", "--db", str(db), env={"NAS_KILL_IF": "attention == 'linear'"})
    assert res.returncode == 0, res.stderr[-3000:]
    from storage import Store

    views = Store.open(str(db), create=False).trials("killed")
    linear = [v for v in views if v.candidate is not None and v.candidate.attention.kind == "linear"]
    others = [v for v in views if v.candidate is not None and v.candidate.attention.kind != "linear"]
    assert linear, "random sampling with seed 1 should propose a linear-attention candidate"
    assert all(v.state == "FAIL" and v.fail_reason for v in linear)
    assert all(v.state == "COMPLETE" for v in others)
    assert sum(v.state in ("COMPLETE", "FAIL") for v in views) >= 4


def test_gp_search_completes_and_tells_the_sampler_the_constraints(tmp_path):
    """``sampler: {kind: gp}``: after its start-up trials the GP proposes (``gp:relative_params``), and every
    COMPLETE Optuna trial carries the study's constraint, judged from the stored trial as the front judges it."""
    import optuna

    from storage import Store

    db = tmp_path / "nas.db"
    spec = small_spec("gp", db, trials=5, constraints=["accuracy >= 0.7"])
    spec["sampler"] = {"kind": "gp", "seed": 0, "n_startup_trials": 2}
    res = nas_cli("search", str(write_spec(tmp_path, spec)), "--quiet", "--db", str(db))
    assert res.returncode == 0, res.stderr[-3000:]
    views = {v.number: v for v in Store.open(str(db), create=False).trials("gp")}
    assert sum(v.state == "COMPLETE" for v in views.values()) == 5
    ot = optuna.load_study(study_name="gp", storage=f"sqlite:///{db}")
    complete = [t for t in ot.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 5
    for t in complete:
        met = views[t.number].values()["accuracy"] >= 0.7
        assert t.constraints == {"accuracy >= 0.7": -1.0 if met else 1.0}, t.number
    assert any(k.startswith("gp:relative_params") for t in complete for k in t.system_attrs)


def test_pareto_where_filters_and_csv(tmp_path, make_result, make_candidate):
    from storage import Store

    db = tmp_path / "nas.db"
    store = Store.open(str(db))
    store.create_study("f", "{}", [("accuracy", "maximize"), ("energy_per_sample_j", "minimize")])
    from storage import TrialCost

    rng = np.random.default_rng(0)
    for i in range(12):
        cand = make_candidate(i, quant={"attention_bits": 8 if i % 2 else 32})
        r = make_result(candidate=cand, accuracy=float(rng.uniform(0.5, 0.9)),
                        energy_per_sample_j=float(rng.uniform(1e-4, 1e-2)))
        store.start_trial("f", i, cand)
        store.finish_trial("f", i, r, cost=TrialCost.from_result(r))
    out = nas_cli("pareto", "f", "--json", "--db", str(db), "--where", "weight_bits <= 8")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert rows and all(r["weight_bits"] <= 8 for r in rows)
    pts = np.array([[r["accuracy"], r["energy_per_sample_j"]] for r in rows])
    assert len(non_dominated(pts, ["maximize", "minimize"])) == len(rows)
    csv_out = nas_cli("pareto", "f", "--csv", "--db", str(db)).stdout
    assert csv_out.splitlines()[0].startswith("number,")
    bad = nas_cli("pareto", "f", "--db", str(db), "--where", "__import__('os').system('id')")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    missing = nas_cli("pareto", "nope", "--db", str(db))
    assert missing.returncode == 2 and "nope" in missing.stderr


def test_constraints_filter_the_front_and_typos_fail_early(tmp_path, make_result, make_candidate):
    from nas.errors import ConfigError
    from nas.runner.api import pareto, search
    from nas.spec import StudySpec
    from storage import Store, TrialCost

    db = tmp_path / "nas.db"
    store = Store.open(str(db))
    spec = StudySpec(name="c", constraints=["accuracy >= 0.7"])
    store.create_study("c", spec.model_dump_json(), [("accuracy", "maximize"), ("energy_per_sample_j", "minimize")])
    for i, (acc, e) in enumerate([(0.9, 1e-2), (0.65, 1e-4), (0.75, 1e-3)]):
        cand = make_candidate(i)
        r = make_result(candidate=cand, accuracy=acc, energy_per_sample_j=e)
        store.start_trial("c", i, cand)
        store.finish_trial("c", i, r, cost=TrialCost.from_result(r))
    numbers = {t.number for t in pareto("c", db=str(db)).trials}
    assert numbers == {0, 2}  # trial 1 is non-dominated but violates accuracy >= 0.7
    assert {t.number for t in pareto("c", db=str(db), where="energy_per_sample_j < 0.005").trials} == {2}
    with pytest.raises(ConfigError, match=r"constraints\[0\]"):
        search(StudySpec(name="bad", constraints=["acuracy >= 0.7"]), db=str(tmp_path / "b.db"))


def test_a_flops_objective_gives_a_real_front_over_compressed_candidates(tmp_path):
    """Regression: FLOPs were null for every quantized or masked candidate, so a FLOPs objective gave an
    empty front (Optuna said PRUNED, the store said COMPLETE)."""
    db = tmp_path / "nas.db"
    spec = small_spec("flops", db, trials=5)
    spec["objectives"] = [{"metric": "accuracy"}, {"metric": "flops_per_sample"}]
    spec["space"]["overrides"].update({"attention_bits": [8, 4], "ffn_bits": [4, 2], "sparsity": ["magnitude"],
                                       "sparsity_amount": [0.2, 0.4]})
    res = nas_cli("search", str(write_spec(tmp_path, spec)), "--quiet", "--db", str(db))
    assert res.returncode == 0, res.stderr[-3000:]
    from storage import Store

    views = Store.open(str(db), create=False).trials("flops")
    complete = [v for v in views if v.state == "COMPLETE"]
    assert len(complete) == 5 and all(v.result.flops_per_sample and v.result.flops_per_sample > 0 for v in complete)
    assert all(v.candidate.quant.ffn_bits < 32 and v.candidate.sparsity.kind == "magnitude" for v in complete)
    listed = json.loads(nas_cli("pareto", "flops", "--json", "--include-trivial", "--db", str(db)).stdout)
    assert listed and all(t["flops_per_sample"] for t in listed)
    import optuna

    ot = optuna.load_study(study_name="flops", storage=f"sqlite:///{db}")
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in ot.trials) == 5
