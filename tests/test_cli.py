"""Wrong input exits 2 with one line that names the field and the fix: never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str, cwd: Path = ROOT, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nas", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout)


def _w(tmp: Path, name: str, text: str) -> str:
    p = tmp / name
    p.write_text(text)
    return str(p)


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory):
    """A handful of bad inputs run as real processes (tests/test_bad_inputs.py runs every case in-process)."""
    tmp = tmp_path_factory.mktemp("bad")
    good = _w(tmp, "good.yaml", "n_layers: 1\nd_model: 32\nn_heads: 2\nd_ffn: 32\nmax_len: 64\n")
    override = _w(tmp, "o.yaml", f"name: o\nstorage: {{url: {tmp / 'o.db'}}}\n"
                                 "space: {overrides: {window: [4, 128]}}\n")
    cases = {
        "bad yaml": (["trial", _w(tmp, "a.yaml", "n_layers: [1\n")], ["a.yaml", "line", "YAML"]),
        "bad meter name": (["trial", good, "--meter", "rapl"], ["--meter", "rapl"]),
        "malformed row": (["trial", good, "--task", _w(tmp, "rows.tsv", "text\tlabel\na\t1\nb\t0\textra\n")],
                          ["rows.tsv", "line 3"]),
        "bad study spec": (["search", _w(tmp, "s.yaml", "name: x\nsampler: {kind: cmaes}\n")],
                           ["sampler.kind", "cmaes"]),
        "bad space override": (["search", override], ["space.overrides.window", "128", "max_len"]),
        "unknown study": (["pareto", "nosuch", "--db", str(tmp / "x.db")], ["nosuch", "nas studies"]),
        "missing database": (["studies", "--db", str(tmp / "none.db")], ["none.db", "--db"]),
        "unknown dialect": (["studies", "--db", "foo://x"], ["foo", "--db"]),
    }
    assert run("storage", "upgrade", "--db", str(tmp / "x.db")).returncode == 0
    return cases


CASE_NAMES = ["bad yaml", "bad meter name", "malformed row", "bad study spec", "bad space override", "unknown study",
              "missing database", "unknown dialect"]


@pytest.mark.parametrize("case", CASE_NAMES)
def test_bad_input_exits_2_with_one_clear_line(bad_inputs, case, tmp_path):
    args, needles = bad_inputs[case]
    res = run(*args, cwd=tmp_path)
    assert res.returncode == 2, (case, res.returncode, res.stdout[-500:], res.stderr[-2000:])
    assert "Traceback" not in res.stderr, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr  # a real process: no warning or log line slips in
    msg = lines[0]
    for n in needles:
        assert n.lower() in msg.lower(), (case, n, msg)
    assert list(tmp_path.iterdir()) == []  # nothing written where it ran
    assert not Path(args[1]).with_name("o.db").exists()  # nor where the spec points


def test_help_lists_every_command():
    res = run("--help")
    assert res.returncode == 0
    for cmd in ("trial", "search", "studies", "pareto", "show", "export", "predict", "serve", "storage", "tasks"):
        assert cmd in res.stdout


@pytest.mark.slow
def test_trial_json_on_cpu_is_complete_and_labelled(tmp_path):
    cand = _w(tmp_path, "c.yaml", "n_layers: 1\nd_model: 32\nn_heads: 2\nd_ffn: 64\nmax_len: 64\n")
    res = run("trial", cand, "--task", "builtin:sentiment", "--steps", "60", "--meter", "estimate",
              "--window-s", "0.2", "--windows", "3", "--json", cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    rec = json.loads(res.stdout)
    assert rec["status"] == "COMPLETE"
    assert rec["meter"] == "estimate" and rec["is_estimate"] is True
    inf = rec["inference"]
    assert inf["meter"] == "estimate" and inf["is_estimate"] is True
    for key in ("energy_per_sample_j", "energy_per_sample_net_j", "cv", "latency_p50_ms", "latency_p95_ms"):
        assert inf[key] is not None, key
    for key in ("accuracy", "train_energy_j", "params", "size_bytes", "flops_per_sample"):
        assert rec[key] is not None, key
    assert rec["metrics"]["macro_f1"] is not None
    prov = inf["provenance"]
    for field, value in prov.items():
        if value is None:
            assert field in prov["absent"], f"provenance.{field} is empty without a reason"


# --- nas trial without a CANDIDATE ------------------------------------------------------------------------
def test_trial_without_candidate_uses_the_default_candidate(monkeypatch, tmp_path, capsys):
    import evaluators.pipeline
    from nas.cli import main
    from nas.config import load_candidate

    seen = {}

    class Stop(Exception):
        pass

    def fake_run_trial(cand, task, **kw):
        seen["candidate"] = cand
        raise Stop

    monkeypatch.setattr(evaluators.pipeline, "run_trial", fake_run_trial)
    with pytest.raises(Stop):
        main(["trial", "--task", "builtin:sentiment", "--json"])
    assert seen["candidate"] == load_candidate(ROOT / "examples" / "candidate.yaml")  # documented as the same


def test_trial_help_shows_the_candidate_is_optional():
    res = run("trial", "--help")
    assert res.returncode == 0 and "[CANDIDATE]" in res.stdout and "default candidate" in res.stdout


# --- which database a search uses -------------------------------------------------------------------------
def _fake_search(monkeypatch):
    """Run `nas search` in-process with the driver replaced, so only study creation happens."""
    import nas.runner.driver as driver

    def run_study(spec, store, **kw):
        return driver.RunOutcome(spec.name, 0, "test: driver not started", 0.0)

    monkeypatch.setattr(driver, "run_study", run_study)


@pytest.mark.parametrize(("given", "expected"), [
    ({}, "spec.db"),                                   # the spec's storage.url, not ./nas.db
    ({"--db": "flag.db"}, "flag.db"),                  # --db beats the spec
    ({"NAS_DB": "env.db"}, "env.db"),                  # so does NAS_DB
    ({"--db": "flag.db", "NAS_DB": "env.db"}, "flag.db"),
])
def test_search_database_precedence(monkeypatch, tmp_path, capsys, given, expected):
    import yaml

    from nas.cli import main
    from storage import Store
    from tests.test_bad_inputs import _spec

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NAS_DB", raising=False)
    _fake_search(monkeypatch)
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(_spec(Path("spec.db"), name="prec")))
    if "NAS_DB" in given:
        monkeypatch.setenv("NAS_DB", given["NAS_DB"])
    argv = ["search", str(spec), "--quiet"] + (["--db", given["--db"]] if "--db" in given else [])
    main(argv)
    dbs = sorted(p.name for p in tmp_path.glob("*.db"))
    assert dbs == [expected]
    assert [s.name for s in Store.open(tmp_path / expected, create=False).list_studies()] == ["prec"]
    assert f"in {expected}" in capsys.readouterr().out


def test_search_without_spec_storage_uses_nas_db(monkeypatch, tmp_path):
    from nas.runner.api import resolve_db
    from nas.spec import StudySpec

    assert resolve_db(None, StudySpec()) == "nas.db"
    assert resolve_db(None, None) == "nas.db"
    assert resolve_db("x.db", StudySpec(storage={"url": "y.db"})) == "x.db"


def test_search_offers_no_refused_executor_option():
    res = run("search", "--help")
    assert res.returncode == 0 and "--executor" not in res.stdout and "--db" in res.stdout
