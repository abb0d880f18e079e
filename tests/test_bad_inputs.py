"""A rejected search leaves nothing behind; the corrected spec then runs (the full bad-input suite of every
command comes with the CLI's one-line errors)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


# --- specs and databases ----------------------------------------------------------------------------------
def _spec(db: Path, **changes: Any) -> dict[str, Any]:
    """A tiny valid spec (like tests/test_search.py's) writing to ``db``; ``changes`` use dotted keys."""
    spec: dict[str, Any] = {
        "name": "bad-input", "task": "builtin:sentiment",
        "space": {"preset": "tiny", "overrides": {"n_layers": [1], "d_model": [16], "n_heads": [2], "max_len": 32}},
        "sampler": {"kind": "random", "seed": 1}, "budget": {"trials": 2},
        "fidelity": {"rungs": [10], "enabled": False},
        "measure": {"meter": "estimate", "window_s": 0.1, "n_windows": 2, "idle_s": 0.1, "warmup_iters": 2,
                    "batch_size": 8, "seq_len": 32},
        "storage": {"url": str(db)},
    }
    for key, value in changes.items():
        node = spec
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return spec


def optuna_storage(db: Path) -> None:
    """Give the database Optuna's tables (as a real search does), so the cases can check them too."""
    import optuna

    optuna.storages.RDBStorage(f"sqlite:///{db}")


def _study_rows(db: Path) -> tuple[list[str], list[str]]:
    """(our study names, Optuna's study names) read with plain sqlite3."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        ours = [r[0] for r in conn.execute("SELECT name FROM nas_studies ORDER BY name")]
        theirs = [r[0] for r in conn.execute("SELECT study_name FROM studies ORDER BY study_name")]
    return ours, theirs


# --- acceptance: a rejected spec leaves nothing behind, and the corrected spec then runs -----------------
@pytest.mark.slow
def test_rejected_spec_leaves_no_study_and_the_corrected_spec_runs(tmp_path: Path) -> None:
    from storage import Store

    db = tmp_path / "nas.db"
    Store.open(db).close()
    optuna_storage(db)
    bad = {
        "constraint": {"constraints": ["acuracy >= 0.1"]},
        "override": {"space.overrides.window": [4, 64], "space.overrides.attention": ["local"]},
        "task": {"task": str(tmp_path / "missing.tsv")},
    }
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("NAS_DB", None)

    def search(changes: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        spec = tmp_path / "fixme.yaml"
        spec.write_text(yaml.safe_dump(_spec(db, name="fixme", **changes)))
        return subprocess.run([sys.executable, "-m", "nas", "search", str(spec), "--quiet"], capture_output=True,
                              text=True, cwd=tmp_path, env=env, timeout=600)

    for what, changes in bad.items():
        res = search(changes)
        assert res.returncode == 2, (what, res.stderr[-2000:])
        assert len(res.stderr.strip().splitlines()) == 1, res.stderr
        assert _study_rows(db) == ([], []), f"the rejected {what} left a study row"
    res = search({"constraints": ["accuracy >= 0.0"]})  # the fix: same name, now valid
    assert res.returncode == 0, res.stderr[-3000:]
    assert _study_rows(db) == (["fixme"], ["fixme"])
    with Store.open(db, create=False, read_only=True) as store:
        assert sum(v.state == "COMPLETE" for v in store.trials("fixme")) == 2
    assert sorted(p.name for p in tmp_path.glob("*.db")) == ["nas.db"]  # the spec's storage.url, not ./nas.db


def test_the_shipped_specs_pass_every_check(tmp_path: Path) -> None:
    """The checks refuse only bad specs: the default study and examples/study.yaml pass them."""
    from nas.runner.checks import check_search_inputs
    from nas.spec import default_spec, load_spec

    for spec in (default_spec(), load_spec(ROOT / "examples" / "study.yaml")):
        check_search_inputs(spec, db=str(tmp_path / "nas.db"))
    check_search_inputs(load_spec(ROOT / "examples" / "study.yaml"), db=str(tmp_path / "nas.db"),
                        ray_address="auto")
    assert list(tmp_path.iterdir()) == [p for p in tmp_path.iterdir() if p.name == "cache"]  # nothing written
