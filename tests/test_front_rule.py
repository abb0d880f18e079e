"""The front's sanity rule and test accuracy beside dev, through the Python API and the CLI.

A chance-level model (dev accuracy at or below the dev majority-class rate) is kept off the front by
default, however cheap, and counted; ``--include-trivial`` / ``include_trivial=True`` brings it back.
``nas pareto`` and ``nas show`` report test accuracy beside dev (the storage side is in the storage
contract).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from nas.records import TrialResult
from nas.spec import FrontSpec, StudySpec

ROOT = Path(__file__).resolve().parents[1]
OBJ2 = [("accuracy", "maximize"), ("energy_per_sample_j", "minimize")]
#: (dev accuracy, J/sample, test accuracy): trial 0 is chance level and the cheapest
TRIALS = [(0.5, 1e-4, 0.49), (0.9, 2e-3, 0.86), (0.75, 1e-3, 0.71), (0.6, 3e-3, 0.58)]


def nas_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}  # rich tables one row per line
    return subprocess.run([sys.executable, "-m", "nas", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=180, env=env)


def _with_test(r: TrialResult, test_accuracy: float) -> TrialResult:
    assert r.metrics is not None
    return dataclasses.replace(r, metrics=dataclasses.replace(
        r.metrics, test_accuracy=test_accuracy, test_macro_f1=test_accuracy - 0.01, n_test_examples=1000,
        majority_accuracy=0.5))


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> str:
    from storage import Store, TrialCost
    from tests.conftest import fake_trial_result

    path = str(tmp_path_factory.mktemp("front") / "nas.db")
    with Store.open(path) as store:
        for name, front in (("r", FrontSpec()), ("off", FrontSpec(require_above_majority=False))):
            store.create_study(name, StudySpec(name=name, front=front).model_dump_json(), OBJ2)
            for i, (acc, energy, test_acc) in enumerate(TRIALS):
                from nas.config import Candidate

                r = _with_test(fake_trial_result(candidate=Candidate(d_ffn=8 + i), accuracy=acc,
                                                 energy_per_sample_j=energy), test_acc)
                store.finish_trial(name, i, r, cost=TrialCost.from_result(r))
    return path


def test_api_keeps_chance_level_out_and_counts_it(db: str) -> None:
    import nas

    front = nas.pareto("r", db=db)
    assert [t.number for t in front.trials] == [1, 2]  # trial 3 is dominated by 2
    assert [t.number for t in front.kept_out] == [0]
    every = nas.pareto("r", db=db, include_trivial=True)
    assert [t.number for t in every.trials] == [1, 2, 0] and every.kept_out == []
    # the study setting: a study that turns the rule off shows the chance-level trial, counts nothing
    off = nas.pareto("off", db=db)
    assert [t.number for t in off.trials] == [1, 2, 0] and off.kept_out == []
    assert [t.number for t in nas.pareto("r", db=db, where="test_accuracy >= 0.8").trials] == [1]


def test_cli_pareto_json_shows_test_beside_dev_and_says_what_was_kept_out(db: str) -> None:
    out = nas_cli("pareto", "r", "--json", "--db", db)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)  # the note goes to stderr: stdout stays JSON
    assert [r["number"] for r in rows] == [1, 2]
    assert [(r["accuracy"], r["test_accuracy"], r["majority_accuracy"]) for r in rows] == [
        (0.9, 0.86, 0.5), (0.75, 0.71, 0.5)]
    assert rows[0]["test_macro_f1"] == pytest.approx(0.85)
    assert rows[0]["result"]["metrics"]["test_accuracy"] == 0.86
    assert "1 trial at or below the majority-class rate (0.500) kept out; --include-trivial shows them" in out.stderr
    every = nas_cli("pareto", "r", "--json", "--include-trivial", "--db", db)
    assert [r["number"] for r in json.loads(every.stdout)] == [1, 2, 0] and "kept out" not in every.stderr
    off = nas_cli("pareto", "off", "--json", "--db", db)
    assert [r["number"] for r in json.loads(off.stdout)] == [1, 2, 0] and "kept out" not in off.stderr


def test_cli_pareto_table_csv_and_where_on_test(db: str) -> None:
    table = nas_cli("pareto", "r", "--db", db)
    assert table.returncode == 0, table.stderr
    assert "test acc" in table.stdout and "dev acc" in table.stdout and "0.86" in table.stdout
    assert "1 trial at or below the majority-class rate (0.500) kept out" in table.stdout
    rows = list(csv.DictReader(io.StringIO(nas_cli("pareto", "r", "--csv", "--db", db).stdout)))
    assert [(r["number"], r["test_accuracy"], r["majority_accuracy"]) for r in rows] == [
        ("1", "0.86", "0.5"), ("2", "0.71", "0.5")]
    where = nas_cli("pareto", "r", "--json", "--db", db, "--where", "test_accuracy > 0.8")
    assert [r["number"] for r in json.loads(where.stdout)] == [1]


def test_cli_show_reports_test_beside_dev(db: str) -> None:
    shown = nas_cli("show", "r", "1", "--db", db)
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    assert "test accuracy / macro-F1" in text and "0.8600 / 0.8500" in text and "never selected on" in text
    assert "dev accuracy / macro-F1" in text and "0.9000" in text and "dev majority-class rate" in text
    trivial = nas_cli("show", "r", "0", "--db", db).stdout
    assert "not above it: kept off the front" in trivial
    as_json = json.loads(nas_cli("show", "r", "1", "--json", "--db", db).stdout)
    assert (as_json["test_accuracy"], as_json["test_macro_f1"]) == (0.86, pytest.approx(0.85))
    assert as_json["majority_accuracy"] == 0.5


def test_trial_table_of_an_old_record_says_test_was_not_measured(make_result: Callable[..., Any]) -> None:
    from rich.console import Console

    from nas.cli.render import trial_table

    c = Console(record=True, width=200)
    c.print(trial_table(make_result(accuracy=0.8)))
    text = c.export_text()
    assert "not measured: stored before test splits" in text and "0.8000" in text
