"""The weight-sharing supernet fidelity (``fidelity.kind: supernet``, issue #16 item 4).

Cutting (views that train the supernet, exact prefix copies, low-rank fits), checkpoints that a killed run
resumes from (the same weights as a run never stopped), the study's record and search cost, an end-to-end
search whose front is fine-tuned at the end, and (slow) a driver killed with SIGKILL mid-supernet.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from evaluators.pipeline import TrialContext, cached_task
from evaluators.supernet import (
    CHECKPOINT,
    SupernetConfig,
    cut_,
    elastic,
    load_supernet,
    sliced,
    supernet_candidate,
    train_supernet,
)
from nas.config import Candidate, MeasureConfig, TrainConfig
from nas.errors import ConfigError
from nas.models import build
from nas.records import TrainSummary
from nas.spec import StudySpec
from nas.supernet_record import SupernetRecord
from search_spaces import load_space
from storage import Store
from tests.test_search import ROOT, nas_cli, small_spec, write_spec

SPACE = load_space("tiny", {"n_layers": [1, 2], "d_model": [16, 32], "n_heads": [2], "ffn_ratio": [1, 2],
                            "attention": ["softmax", "linear"], "max_len": 32, "dropout": [0.0]})


class Stop(Exception):
    """Stands for a driver killed right after a checkpoint."""


def _train(folder: Path, steps: int, *, stop_at: int | None = None, key: str = "k") -> Any:
    task = cached_task("builtin:sentiment", 0, 32)
    cfg = SupernetConfig(steps=steps, sandwich=1, checkpoint_every=10, batch_size=16, lr=3e-3)

    def on_checkpoint(done: int, _: TrainSummary) -> None:
        if done == stop_at:
            raise Stop

    with TrialContext.open(TrainConfig(device="cpu"), MeasureConfig(meter="estimate")) as ctx:
        return train_supernet(SPACE, task, cfg, folder=folder, key=key, meter=ctx.meter, device=ctx.device,
                              on_checkpoint=on_checkpoint)


def test_the_supernet_is_the_largest_shape_and_a_sub_network_its_view() -> None:
    big = supernet_candidate(SPACE)
    assert (big.n_layers, big.d_model, big.n_heads, big.d_ffn) == (2, 32, 2, 64)
    cand = Candidate.model_validate({"n_layers": 1, "d_model": 16, "n_heads": 2, "d_ffn": 16, "max_len": 32,
                                     "quant": {"ffn_bits": 8}, "rank": {"ffn": 0.5}})
    shape = elastic(cand, big)
    assert shape.quant.is_noop and shape.rank.ffn == 1.0 and (shape.n_layers, shape.d_model) == (1, 16)
    net, sub = build(big, vocab_size=50, num_labels=2), build(shape, vocab_size=50, num_labels=2)
    params = sliced(dict(net.named_parameters()), sub)
    assert params["blocks.0.ffn.fc1.weight"].shape == (16, 16)
    assert params["blocks.0.ffn.fc1.weight"].data_ptr() == net.blocks[0].ffn.fc1.weight.data_ptr()  # a view
    out = torch.func.functional_call(sub, params, (torch.randint(0, 50, (2, 8)),))
    out.logits.sum().backward()
    assert net.blocks[0].ffn.fc1.weight.grad is not None  # training the sub-network trains the supernet
    assert net.blocks[1].ffn.fc1.weight.grad is None  # a layer it does not have is untouched
    with pytest.raises(ConfigError, match="exceed"):
        elastic(Candidate(n_layers=3, d_model=16, n_heads=2, d_ffn=16), big)


def test_cut_copies_the_leading_part_and_fits_low_rank_layers() -> None:
    big = supernet_candidate(SPACE)
    net = build(big, vocab_size=50, num_labels=2)
    weights = dict(net.named_parameters())
    dense = build(Candidate(n_layers=1, d_model=16, n_heads=2, d_ffn=32, max_len=32), vocab_size=50, num_labels=2)
    report = cut_(dense, weights)
    assert report.fresh == () and report.low_rank == 0
    assert torch.equal(dense.blocks[0].attn.q_proj.weight, net.blocks[0].attn.q_proj.weight[:16, :16])
    assert torch.equal(dense.tok_emb.weight, net.tok_emb.weight[:, :16])
    low = build(Candidate.model_validate({"n_layers": 1, "d_model": 32, "n_heads": 2, "d_ffn": 64, "max_len": 32,
                                          "rank": {"ffn": 0.25}, "attention": {"kind": "lowrank", "k": 8}}),
                vocab_size=50, num_labels=2)
    report = cut_(low, weights)
    assert report.low_rank == 2 and set(report.fresh) == {"blocks.0.attn.E", "blocks.0.attn.F"}
    fc1 = low.blocks[0].ffn.fc1
    approx = fc1.up.weight @ fc1.down.weight
    u, s, vh = torch.linalg.svd(net.blocks[0].ffn.fc1.weight.detach())
    best = (u[:, :fc1.rank] * s[:fc1.rank]) @ vh[:fc1.rank]
    assert torch.allclose(approx, best, atol=1e-4)  # the best fit of its rank


def test_a_killed_run_resumes_from_its_checkpoint_to_the_same_weights(tmp_path: Path) -> None:
    whole = _train(tmp_path / "whole", 30)
    with pytest.raises(Stop):
        _train(tmp_path / "killed", 30, stop_at=20)
    saved = torch.load(tmp_path / "killed" / CHECKPOINT, weights_only=False)
    assert saved["step"] == 20 and not (tmp_path / "killed" / "supernet.pt").exists()
    resumed = _train(tmp_path / "killed", 30)
    assert resumed.resumed_from == 20 and resumed.steps == 30
    a, b = load_supernet(whole.path)["state"], load_supernet(resumed.path)["state"]
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)  # as if it had never stopped
    assert resumed.train.energy_j > saved["spent"]["energy_j"] > 0  # the joules before the kill count
    again = _train(tmp_path / "killed", 30)
    assert again.resumed_from is None and again.train.energy_j == resumed.train.energy_j  # trained: reused
    other = _train(tmp_path / "killed", 30, key="another")  # another configuration: trained from the start
    assert other.resumed_from is None and other.steps == 30


def test_the_study_record_counts_in_the_search_cost_once(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "nas.db")
    store.create_study("s", json.dumps({"task": "builtin:parity"}), [("accuracy", "maximize")])
    assert store.supernet("s") is None and store.get_study("s").supernet_energy_j is None
    train = TrainSummary(steps=10, wall_s=2.0, final_loss=0.5, energy_j=40.0, meter="estimate", is_estimate=True,
                         co2eq_g=None)
    rec = SupernetRecord(path="x/supernet.pt", key="k", candidate=supernet_candidate(SPACE), steps_done=10,
                         steps_total=30, train=train)
    for done, joules in ((10, 40.0), (20, 80.0)):  # a checkpoint replaces the record: counted once
        store.put_supernet("s", SupernetRecord(**{**rec.__dict__, "steps_done": done,
                                                  "train": TrainSummary(**{**train.__dict__, "energy_j": joules})}))
    info = store.get_study("s")
    assert info.supernet_energy_j == 80.0 and info.train_energy_j == 80.0 and info.cost_includes_estimate
    back = store.supernet("s")
    assert back is not None and back.steps_done == 20 and not back.complete and back.candidate.d_model == 32
    store.close()


def _supernet_spec(tmp_path: Path, name: str, **fidelity: Any) -> dict[str, Any]:
    spec = small_spec(name, tmp_path / "nas.db", trials=3, front={"require_above_majority": False,
                                                                   "ties": {"rounds": 0}})
    spec["space"]["overrides"].update(n_layers=[1, 2], attention=["softmax", "linear"])
    spec["fidelity"] = {"kind": "supernet", "steps": 40, "subnet_steps": 5, "final_steps": 10,
                        "checkpoint_every": 10, **fidelity}
    return spec


def test_a_supernet_search_cuts_its_trials_fine_tunes_its_front_and_counts_the_supernet(tmp_path: Path) -> None:
    spec = _supernet_spec(tmp_path, "sn")
    assert StudySpec.model_validate(spec).fidelity.max_steps == 5
    res = nas_cli("search", str(write_spec(tmp_path, spec)), "--db", str(tmp_path / "nas.db"))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "supernet: 40/40 steps" in res.stdout and "front fine-tuned from the supernet" in res.stdout
    store = Store.open(tmp_path / "nas.db", create=False)
    rec, info = store.supernet("sn"), store.get_study("sn")
    assert rec is not None and rec.complete and rec.train.energy_j and rec.train.is_estimate
    views = [v for v in store.trials("sn") if v.state == "COMPLETE"]
    costs = sum(v.cost.train_energy_j for v in views if v.cost and v.cost.train_energy_j)
    assert info.train_energy_j == pytest.approx(costs + rec.train.energy_j)  # the supernet is search cost
    origins = {v.number: [r.origin for r in store.readings("sn", v.number) if r.kind.startswith("inference")]
               for v in views}  # the first result's readings stay; a fine-tuned result's are added as "final"
    refined = {n for n, o in origins.items() if "final" in o}
    assert refined and all(o[0] is None for o in origins.values())
    assert {v.number for v in store.front("sn")} <= refined  # the final front is fine-tuned, every member
    steps = {v.number: v.result.train.steps for v in views if v.result and v.result.train}
    assert {steps[n] for n in refined} == {10} and {steps[n] for n in steps if n not in refined} <= {5}
    store.close()
    show = nas_cli("show", "sn", str(min(refined)), "--db", str(tmp_path / "nas.db"), env={"COLUMNS": "250"})
    assert show.returncode == 0 and "first reading (replaced)" in show.stdout
    assert "fine-tuned from the supernet" in show.stdout and "of which the supernet" not in show.stdout
    study = nas_cli("show", "sn", "--db", str(tmp_path / "nas.db"), env={"COLUMNS": "250"})
    assert "of which the supernet" in study.stdout


@pytest.mark.slow
def test_a_driver_killed_while_training_the_supernet_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    db = tmp_path / "nas.db"
    spec = _supernet_spec(tmp_path, "k9sn", steps=400, checkpoint_every=20, final_steps=0)
    path = write_spec(tmp_path, spec)
    proc = subprocess.Popen([sys.executable, "-m", "nas", "search", str(path), "--quiet", "--db", str(db)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline, rec = time.time() + 300, None
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
        try:
            rec = Store.open(str(db), create=False, read_only=True).supernet("k9sn")
        except Exception:  # noqa: BLE001 - the database is being created
            continue
        if rec is not None and rec.steps_done >= 40:
            break
    assert rec is not None and proc.poll() is None, "the search never checkpointed its supernet"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    killed = Store.open(str(db), create=False, read_only=True).supernet("k9sn")
    assert killed is not None and 40 <= killed.steps_done < 400 and killed.train.energy_j
    res = nas_cli("search", "--resume", "k9sn", "--db", str(db))
    assert res.returncode == 0, res.stderr[-3000:]
    final = Store.open(str(db), create=False, read_only=True)
    rec = final.supernet("k9sn")
    assert rec is not None and rec.complete and rec.resumed_from == killed.steps_done
    assert rec.train.energy_j > killed.train.energy_j  # the joules before the kill still count
    assert f"resumed from step {killed.steps_done}" in res.stdout
    assert sum(v.state == "COMPLETE" for v in final.trials("k9sn")) == 3
