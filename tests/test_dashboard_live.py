"""Live progress: while another process writes trials (as the search driver does), the JSON endpoints the
Studies and Study pages poll show the trial count rising, and reads are never blocked by the writer."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from dashboards.server import create_app  # noqa: E402
from nas.spec import default_spec  # noqa: E402
from storage import Store  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STUDY = "live"
N_TRIALS = 6

# The writer stands in for the search driver: the only process that writes the database.
WRITER = textwrap.dedent(f"""
    import sys, time
    from storage import Store, TrialCost
    from nas.config import Candidate
    from tests.conftest import fake_trial_result

    store = Store.open(sys.argv[1], create=False)
    for i in range({N_TRIALS}):
        cand = Candidate(n_layers=1 + i % 4, d_ffn=8 + i)
        store.start_trial("{STUDY}", i, cand)
        time.sleep(0.15)
        result = fake_trial_result(candidate=cand, accuracy=0.6 + 0.03 * i, energy_per_sample_j=1e-4 * (1.5 ** i))
        store.finish_trial("{STUDY}", i, result, cost=TrialCost.from_result(result, wall_s=0.25))
        time.sleep(0.15)
    store.set_study_status("{STUDY}", "COMPLETE")
""")


def test_studies_poll_shows_trials_arriving_while_a_search_writes(tmp_path: Path) -> None:
    db = str(tmp_path / "nas.db")
    store = Store.open(db)
    spec = default_spec().with_overrides(name=STUDY, **{"budget.trials": N_TRIALS})
    store.create_study(STUDY, spec.model_dump_json(), [("accuracy", "maximize"), ("energy_per_sample_j", "minimize")],
                       budget_trials=N_TRIALS)
    store.close()

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    with TestClient(create_app(db, artefacts=tmp_path / "artefacts"), base_url="http://127.0.0.1:8000") as client:
        first = client.get("/api/studies").json()[0]
        assert first["trials"]["done"] == 0 and first["status"] == "RUNNING"
        writer = subprocess.Popen([sys.executable, "-c", WRITER, db], cwd=ROOT, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        done_seen: list[int] = []
        running_seen: set[int] = set()
        versions: set[str] = set()
        slowest_s = 0.0
        deadline = time.monotonic() + 30
        try:
            while time.monotonic() < deadline:
                t0 = time.monotonic()
                [s] = client.get("/api/studies").json()
                versions.add(client.get(f"/api/studies/{STUDY}/dashboard").json()["version"])
                slowest_s = max(slowest_s, time.monotonic() - t0)
                done_seen.append(s["trials"]["done"])
                running_seen.add(s["trials"]["running"])
                if s["status"] == "COMPLETE":
                    break
                time.sleep(0.05)
            out, _ = writer.communicate(timeout=30)
        finally:
            if writer.poll() is None:
                writer.kill()
        assert writer.returncode == 0, out.decode()

    assert done_seen[-1] == N_TRIALS
    assert done_seen == sorted(done_seen), "the trial count never goes backwards"
    assert len(set(done_seen)) >= 4, f"saw too few intermediate counts: {sorted(set(done_seen))}"
    assert 1 in running_seen, "a running trial shows up while it runs"
    assert len(versions) >= 4, "the study page's poll endpoint changes as trials arrive"
    assert slowest_s < 2.0, f"a read waited {slowest_s:.2f} s on the writer"
