"""The cluster guide's commands (docs/cluster.md) run a 2-node fake-GPU cluster on one machine (slow).

Both nodes declare 2 fake GPUs (tests/fakegpu); the driver joins with --ray-address and stores into a
throwaway Postgres server, exactly as the guide says.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from storage import Store
from tests.fakegpu.nas_fake_gpu import uuid_of
from tests.test_multi_gpu import assert_meters_read_their_own_board, fake_gpu_env, gpu_spec
from tests.test_postgres import postgres_server, postgres_url  # noqa: F401 - fixtures
from tests.test_search import ROOT, small_spec

pytestmark = pytest.mark.slow

GUIDE = ROOT / "docs" / "cluster.md"
#: What the test adds to the guide's ``ray start`` lines: fake GPUs, one CPU per node, no dashboard on the
#: head, and --block, so that killing each command's process group stops exactly this cluster (never
#: ``ray stop``, which would stop every Ray on the machine).
NODE_FLAGS = {"head": "--num-gpus=2 --num-cpus=1 --include-dashboard=false --block",
              "worker": "--num-gpus=2 --num-cpus=1 --block"}


def guide_commands() -> dict[str, str]:
    """The guide's ``bash cluster:ROLE`` blocks: head, worker, driver."""
    blocks = re.findall(r"```bash cluster:(\w+)\n(.*?)```", GUIDE.read_text(), re.S)
    return {role: body.strip() for role, body in blocks}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _shell_env(base: dict[str, str], **extra: str) -> dict[str, str]:
    """``base`` with the guide's variables, and this venv's ``nas`` and ``ray`` first on PATH."""
    return {**base, **extra, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{base.get('PATH', '')}"}


@pytest.fixture
def two_node_cluster(tmp_path):
    cmds = guide_commands()
    assert set(cmds) == {"head", "worker", "driver"}
    guide_vars = {"HEAD_IP": "127.0.0.1", "RAY_PORT": str(_free_port())}
    procs = []
    try:
        for role in ("head", "worker"):
            env = _shell_env(fake_gpu_env(tmp_path, n=2, node=role), **guide_vars)
            procs.append(subprocess.Popen(["bash", "-c", f"exec {cmds[role]} {NODE_FLAGS[role]}"], env=env, cwd=tmp_path,
                                          start_new_session=True, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL))
            _wait_nodes(f"127.0.0.1:{guide_vars['RAY_PORT']}", len(procs), env)
        yield cmds["driver"], guide_vars
    finally:
        for p in reversed(procs):
            try:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(timeout=10)
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


@pytest.mark.postgres
def test_the_guides_commands_run_a_search_on_a_two_node_fake_gpu_cluster_into_postgres(
        tmp_path, two_node_cluster, postgres_url):  # noqa: F811 - the fixture
    driver, guide_vars = two_node_cluster
    spec = gpu_spec("cluster", tmp_path / "unused.db", gpus_per_trial=1.0)
    spec["storage"]["artefacts_dir"] = str(tmp_path / "artefacts")  # every node "mounts" it: one machine
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(spec))
    env = _shell_env({**os.environ, "RAY_AUTH_MODE": "disabled"}, **guide_vars, NAS_DB=postgres_url)
    res = subprocess.run(["bash", "-c", driver], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=400)
    assert res.returncode == 0, res.stderr[-3000:]
    with Store.open(postgres_url, create=False) as store:
        views = store.trials("cluster")
        front = store.front("cluster")
    assert [v.state for v in views] == ["COMPLETE"] * 4 and front
    boards = sorted(v.result.placement.uuid for v in views)
    assert boards == sorted(uuid_of(node, i) for node in ("head", "worker") for i in range(2))
    for v in views:
        assert_meters_read_their_own_board(v.result.placement.uuid, v.result.to_dict())


def test_unreachable_cluster_is_a_clear_error(tmp_path):
    db = tmp_path / "nas.db"
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(small_spec("nocluster", db, trials=1)))
    res = subprocess.run([sys.executable, "-m", "nas", "search", str(path), "--quiet", "--db", str(db),
                          "--ray-address", f"127.0.0.1:{_free_port()}"], capture_output=True, text=True,
                         cwd=ROOT, timeout=300, env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    assert res.returncode == 2
    assert "--ray-address" in res.stderr and "Traceback" not in res.stderr
