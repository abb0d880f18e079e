"""Tracking (#15 item 4): Ray's results folder lives under the study's artefacts folder and keeps TensorBoard
event files per ``storage.retention``; nothing is left in the temp folder; W&B offline writes its runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import pytest

from nas.errors import ConfigError
from nas.runner.tracking import RAY_RESULTS, check_tracking, prune_ray_results
from nas.spec import StudySpec
from tests.test_search import ROOT, nas_cli, small_spec, write_spec


@pytest.fixture
def short_tmp() -> Any:
    """A short private folder (Ray's socket paths must stay under 108 bytes) with an empty ``tmp/``."""
    short = Path(tempfile.mkdtemp(prefix="nast-", dir="/tmp"))
    (short / "tmp").mkdir()
    yield short
    shutil.rmtree(short, ignore_errors=True)


def _wandb_env(root: Path) -> dict[str, str]:
    """A private temp folder and Ray registry; W&B offline, every W&B folder under ``root``."""
    return {"TMPDIR": str(root / "tmp"), "NAS_RAY_REGISTRY": str(root / "registry"), "NAS_LANE_DIR": str(root / "lanes"),
            "WANDB_MODE": "offline", "WANDB_DIR": str(root / "wandb-runs"),
            "WANDB_CACHE_DIR": str(root / "wandb-cache"), "WANDB_CONFIG_DIR": str(root / "wandb-config"),
            "WANDB_DATA_DIR": str(root / "wandb-data")}


@pytest.mark.slow
def test_search_keeps_tensorboard_logs_under_the_artefacts_folder_and_writes_wandb_offline(short_tmp: Path) -> None:
    pytest.importorskip("wandb")
    db = short_tmp / "nas.db"
    spec = small_spec("trk", db, trials=2, tracking={"wandb": {"project": "energy-nas-test", "mode": "offline"}})
    spec["space"]["overrides"].update({"d_model": [16], "ffn_ratio": [1], "attention": ["softmax", "local"],
                                       "window": [2]})
    before = sorted(os.listdir(short_tmp / "tmp"))
    res = nas_cli("search", str(write_spec(short_tmp, spec)), "--quiet", "--db", str(db), env=_wandb_env(short_tmp))
    assert res.returncode == 0, res.stderr[-3000:]

    # nothing of the search is left in the temp folder: no Tune folder, no staged copies in Ray's session
    left = sorted(os.listdir(short_tmp / "tmp"))
    assert not [n for n in left if n.startswith("nas-tune-")], left
    # Ray's own session folder and torch's compile cache may stay; nothing of W&B's (its runs are elsewhere)
    assert {n for n in set(left) - set(before) if not n.startswith("torchinductor_")} <= {"ray"}, left
    assert not list((short_tmp / "tmp").glob("ray/session_*/artifacts")), "Tune's staged copies were left"

    from storage import Store

    numbers = sorted(v.number for v in Store.open(str(db), create=False).trials("trk") if v.cost is not None)
    assert len(numbers) == 2
    # TensorBoard event files of every trial, under the study's artefacts folder; nothing else of Ray's
    results = short_tmp / "nas_artefacts" / "trk" / RAY_RESULTS
    kept = sorted(p.relative_to(results) for p in results.rglob("*") if p.is_file())
    assert kept and all(p.name.startswith("events.out.tfevents.") for p in kept), kept
    assert {p.parts[:2] for p in kept} == {("nas-trk", f"trial_{n:05d}") for n in numbers}
    assert all((results / p).stat().st_size > 0 for p in kept)

    # one W&B offline run per trial, named after the trial, under WANDB_DIR
    runs = sorted((short_tmp / "wandb-runs" / "wandb").glob("offline-run-*"))
    assert len(runs) == 2, list((short_tmp / "wandb-runs").rglob("*"))[:20]
    assert all(list(r.glob("run-*.wandb")) for r in runs)

    # nas show names the folders
    shown = json.loads(nas_cli("show", "trk", "--json", "--db", str(db), env=_wandb_env(short_tmp)).stdout)
    assert shown["logs"]["tensorboard"] == str(results) and shown["logs"]["n_event_files"] == len(kept)
    assert shown["logs"]["wandb"] == str(short_tmp / "wandb-runs" / "wandb")
    text = nas_cli("show", "trk", "--db", str(db), env={**_wandb_env(short_tmp), "COLUMNS": "300"}).stdout
    assert f"tensorboard --logdir {results}" in text, text


def _ray_folder(root: Path) -> Path:
    """What Ray Tune leaves in its results folder: experiment state, per-trial logs, a checkpoint."""
    exp = root / "nas-s"
    for name in ("tuner.pkl", "experiment_state-2026.json", "basic-variant-state-2026.json", ".validate_storage_marker"):
        (exp / name).parent.mkdir(parents=True, exist_ok=True)
        (exp / name).write_text("x")
    for n in (0, 1):
        trial = exp / f"trial_{n:05d}"
        (trial / "checkpoint_000000").mkdir(parents=True)
        (trial / "checkpoint_000000" / "state.pkl").write_bytes(b"x" * 1000)
        for name in ("params.json", "params.pkl", "result.json", "progress.csv", f"events.out.tfevents.{n}.host"):
            (trial / name).write_text("x")
    return exp


@pytest.mark.slow
def test_a_search_that_keeps_nothing_leaves_no_study_folder(tmp_path: Path) -> None:
    """Regression: ``retention: none`` left an empty ``nas_artefacts/STUDY`` folder behind every search."""
    db = tmp_path / "nas.db"
    spec = small_spec("keepnone", db, trials=1)
    spec["storage"]["retention"] = "none"
    spec["space"]["overrides"].update({"d_model": [16], "ffn_ratio": [1], "attention": ["softmax"]})
    res = nas_cli("search", str(write_spec(tmp_path, spec)), "--quiet", "--db", str(db))
    assert res.returncode == 0, res.stderr[-3000:]
    assert not (tmp_path / "nas_artefacts" / "keepnone").exists()


def test_retention_keeps_only_tensorboard_event_files_or_nothing(tmp_path: Path) -> None:
    for retention in ("front", "all"):
        root = tmp_path / retention
        _ray_folder(root)
        prune_ray_results(str(root), retention)
        kept = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
        assert kept == ["nas-s/trial_00000/events.out.tfevents.0.host", "nas-s/trial_00001/events.out.tfevents.1.host"]
        assert sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_dir()) == [
            "nas-s", "nas-s/trial_00000", "nas-s/trial_00001"]  # no empty checkpoint folders
    root = tmp_path / "none"
    _ray_folder(root)
    prune_ray_results(str(root), "none")
    assert not root.exists()
    prune_ray_results(str(tmp_path / "missing"), "front")  # nothing to prune is no error
    assert not (tmp_path / "missing").exists()


def test_search_without_wandb_installed_is_one_line_naming_the_extra(tmp_path: Path) -> None:
    db = tmp_path / "nas.db"
    spec = small_spec("nowandb", db, trials=1, tracking={"wandb": {"project": "p"}})
    code = textwrap.dedent(f"""
        import sys
        sys.modules["wandb"] = None  # as if wandb were not installed
        from nas.cli import main
        main(["search", {str(write_spec(tmp_path, spec))!r}, "--db", {str(db)!r}, "--quiet"])
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert res.returncode == 2, res.stderr[-3000:]
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert "tracking.wandb" in lines[0] and "pip install 'energy-nas[wandb]'" in lines[0], lines[0]
    assert not db.exists()  # refused before anything was written


@pytest.mark.parametrize("tracking, message", [
    ({"wandb": {"mode": "offline"}}, r"tracking\.wandb: W&B files runs under a project; name one, e\.g\. "
                                     r"tracking: \{wandb: \{project: energy-nas, mode: offline\}\}"),
    ({"wandb": {"project": " "}}, r"tracking\.wandb: W&B files runs under a project"),
    ({"wandb": {"project": "p", "mode": "cloud"}}, r"tracking\.wandb\.mode: unknown W&B mode 'cloud'; use offline"),
    ({"wandb": {"project": "p", "entity": "me"}}, r"tracking\.wandb\.entity: unknown key; remove it"),
    ({"tensorboard": True}, r"tracking\.tensorboard: unknown key"),
])
def test_bad_tracking_specs_say_how_to_fix_them(tracking: dict[str, Any], message: str) -> None:
    from nas.config import validate

    with pytest.raises(ConfigError, match=message):
        validate(StudySpec, {"tracking": tracking}, source="study.yaml")


def test_tracking_defaults_to_nothing_sent() -> None:
    spec = StudySpec()
    assert spec.tracking.wandb is None
    wb = StudySpec.model_validate({"tracking": {"wandb": {"project": "p"}}}).tracking.wandb
    assert wb is not None and wb.mode == "offline"


def test_online_wandb_without_an_api_key_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb")
    for var in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / ".netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    online = StudySpec.model_validate({"tracking": {"wandb": {"project": "p", "mode": "online"}}})
    with pytest.raises(ConfigError, match=r"tracking\.wandb\.mode: W&B's online mode needs an API key.*wandb login"):
        check_tracking(online)
    check_tracking(StudySpec.model_validate({"tracking": {"wandb": {"project": "p"}}}))  # offline needs none
