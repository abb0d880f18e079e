"""A 2-node Ray cluster on one machine runs a small search through --ray-address (slow)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.test_search import ROOT, small_spec

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def two_node_cluster(tmp_path):
    ray_bin = Path(sys.executable).with_name("ray")
    if not ray_bin.exists():
        ray_bin = Path(shutil.which("ray") or "ray")
    port = _free_port()
    # token auth would need a shared token file; this cluster is loopback-only and dies with the test
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    common = ["--num-cpus=1", "--disable-usage-stats", "--block"]
    # --block keeps each `ray start` in the foreground, so killing its process group stops exactly
    # this cluster (never `ray stop`, which would stop every Ray on the machine)
    head = subprocess.Popen([str(ray_bin), "start", "--head", f"--port={port}", "--include-dashboard=false",
                             *common], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs = [head]
    try:
        address = f"127.0.0.1:{port}"
        _wait_nodes(address, 1, env)
        worker = subprocess.Popen([str(ray_bin), "start", f"--address={address}", *common], env=env,
                                  start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(worker)
        _wait_nodes(address, 2, env)
        yield address, env
    finally:
        for p in reversed(procs):
            try:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(timeout=30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(p.pid, signal.SIGKILL)


def _wait_nodes(address: str, n: int, env: dict, timeout: float = 90) -> None:
    code = (f"import ray; ray.init(address={address!r}, log_to_driver=False); "
            "print(sum(1 for x in ray.nodes() if x['Alive']))")
    deadline = time.time() + timeout
    while time.time() < deadline:
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
        if r.returncode == 0 and r.stdout.strip().splitlines()[-1:] and int(r.stdout.strip().splitlines()[-1]) >= n:
            return
        time.sleep(1)
    raise AssertionError(f"the Ray cluster at {address} never reached {n} nodes")


def test_search_on_a_two_node_cluster(tmp_path, two_node_cluster):
    address, env = two_node_cluster
    db = tmp_path / "nas.db"
    spec = small_spec("cluster", db, trials=4)
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(spec))
    res = subprocess.run([sys.executable, "-m", "nas", "search", str(path), "--quiet", "--db", str(db),
                          "--ray-address", address], capture_output=True, text=True, cwd=ROOT, env=env,
                         timeout=400)
    assert res.returncode == 0, res.stderr[-3000:]
    out = subprocess.run([sys.executable, "-m", "nas", "studies", "--json", "--db", str(db)],
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)
    studies = json.loads(out.stdout)
    assert studies[0]["name"] == "cluster" and studies[0]["n_trials_complete"] == 4


def test_unreachable_cluster_is_a_clear_error(tmp_path):
    db = tmp_path / "nas.db"
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(small_spec("nocluster", db, trials=1)))
    res = subprocess.run([sys.executable, "-m", "nas", "search", str(path), "--quiet", "--db", str(db),
                          "--ray-address", f"127.0.0.1:{_free_port()}"], capture_output=True, text=True,
                         cwd=ROOT, timeout=300, env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    assert res.returncode == 2
    assert "--ray-address" in res.stderr and "Traceback" not in res.stderr
