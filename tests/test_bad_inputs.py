"""Every bad input, on every command: exit 2, ONE line on stderr naming the field or file, nothing written.

The CLI runs in-process (``nas.cli.main``), so the whole suite takes seconds; a handful of cases also run
as real subprocesses (``test_subprocess_sample``), where Python warnings or logging could add lines.
Every case must fail during validation: none may train, start Ray or create a study.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import fake_trial_result

ROOT = Path(__file__).resolve().parents[1]
STUDY = "s"


# --- the world the cases run against --------------------------------------------------------------------
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


@dataclass
class World:
    root: Path
    db: Path
    files: dict[str, str] = field(default_factory=dict)

    def w(self, name: str, text: str) -> str:
        p = self.root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        return str(p)

    def spec(self, name: str, **changes: Any) -> str:
        return self.w(f"specs/{name}.yaml", yaml.safe_dump(_spec(self.db, **changes)))


def _exported_folder(folder: Path) -> None:
    """A real ``hf/`` export of a tiny untrained model (no training needed to test the loader's checks)."""
    from evaluators.tokenize import word_level
    from nas.config import Candidate
    from nas.export.loaded import LoadedModel
    from nas.models import build

    tok = word_level(["good", "bad", "film"])
    cand = Candidate(n_layers=1, d_model=16, n_heads=2, d_ffn=16, max_len=16)
    model = build(cand, vocab_size=tok.vocab_size, num_labels=2)
    LoadedModel(model, tok, ["neg", "pos"], 16, cand).save(folder)


def _tampered(world: World, name: str, edit: Callable[[dict[str, Any]], Any]) -> str:
    folder = world.root / "exports" / name
    shutil.copytree(world.root / "exports" / "good", folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(edit(config)))
    return str(folder)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("world")
    db = root / "study.db"
    from storage import Store, TrialCost

    with Store.open(db) as store:
        store.create_study(STUDY, json.dumps(_spec(db)), [("accuracy", "maximize"), ("energy_per_sample_j", "minimize")])
        store.finish_trial(STUDY, 0, fake_trial_result(), cost=TrialCost())
        outdated = {**_spec(db, name="outdated"), "measure": {"serving_form": "tensorrt"}}
        store.create_study("outdated", json.dumps(outdated), [("accuracy", "maximize")])
    optuna_storage(db)
    w = World(root, db)
    (root / "exports").mkdir()
    _exported_folder(root / "exports" / "good")
    data = root / "data"
    data.mkdir()
    (data / "bad.tsv").write_text("text\tlabel\na fine film\t1\nbad\t0\textra\n")
    (root / "devlabel").mkdir()
    (root / "devlabel" / "train.tsv").write_text("text\tlabel\ngood film\t1\nbad film\t0\n")
    (root / "devlabel" / "dev.tsv").write_text("text\tlabel\nfine film\t2\n")
    (root / "junk.db").write_bytes(bytes(range(256)) * 32)
    (root / "folder.db").mkdir()
    (root / "afile").write_text("x")
    (root / "nonempty").mkdir()
    (root / "nonempty" / "keep.txt").write_text("x")
    (root / "not-hf").mkdir()
    (root / "hf-unknown-type").mkdir()
    (root / "hf-unknown-type" / "config.json").write_text('{"model_type": "nosuchmodel"}')
    (root / "hf-corrupt").mkdir()
    (root / "hf-corrupt" / "config.json").write_text(json.dumps({
        "model_type": "bert", "architectures": ["BertForSequenceClassification"], "num_hidden_layers": 1,
        "hidden_size": 16, "num_attention_heads": 2, "intermediate_size": 16, "vocab_size": 10,
        "max_position_embeddings": 16}))
    (root / "hf-corrupt" / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    return w


def optuna_storage(db: Path) -> None:
    """Give the database Optuna's tables (as a real search does), so the cases can check them too."""
    import optuna

    storage = optuna.storages.RDBStorage(f"sqlite:///{db}")
    storage.engine.dispose()  # checkpoint now: a pooled connection closed later by the GC would touch the file


def _has_cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


# --- the cases -------------------------------------------------------------------------------------------
Case = tuple[list[str], list[str]]  # (argv, substrings the one error line must contain)


def _cases(w: World) -> dict[str, Case]:  # noqa: PLR0915 - one table of cases
    db, root = str(w.db), w.root
    good = w.w("good.yaml", "n_layers: 1\nd_model: 32\nn_heads: 2\nd_ffn: 32\nmax_len: 64\n")
    c: dict[str, Case] = {
        # nas trial: candidate files
        "trial yaml syntax": (["trial", w.w("c/a.yaml", "n_layers: [1\n")], ["a.yaml", "line", "YAML"]),
        "trial empty candidate": (["trial", w.w("c/b.yaml", "")], ["b.yaml", "empty"]),
        "trial missing candidate": (["trial", str(root / "nope.yaml")], ["nope.yaml", "not found"]),
        "trial candidate is a folder": (["trial", str(root / "data")], ["data", "directory"]),
        "trial candidate is a list": (["trial", w.w("c/l.yaml", "- 1\n- 2\n")], ["l.yaml", "mapping"]),
        "trial n_layers 0": (["trial", w.w("c/c.yaml", "n_layers: 0\n")], ["n_layers", "greater than"]),
        "trial unknown attention": (["trial", w.w("c/d.yaml", "attention: {kind: flash}\n")], ["attention.kind", "flash"]),
        "trial heads do not divide": (["trial", w.w("c/e.yaml", "d_model: 64\nn_heads: 3\n")], ["n_heads=3"]),
        "trial local without window": (["trial", w.w("c/f.yaml", "attention: {kind: local}\n")], ["window"]),
        "trial window above max_len": (["trial", w.w("c/g.yaml", "max_len: 32\nattention: {kind: local, window: 64}\n")],
                                       ["attention.window=64", "max_len=32"]),
        "trial bad bit-width": (["trial", w.w("c/h.yaml", "quant: {ffn_bits: 3}\n")], ["quant.ffn_bits", "3"]),
        "trial unknown key": (["trial", w.w("c/i.yaml", "depth: 3\n")], ["depth", "unknown key"]),
        "trial wrong type": (["trial", w.w("c/j.yaml", "d_model: wide\n")], ["d_model", "wide"]),
        "trial distill without teacher": (["trial", w.w("c/k.yaml", "distill: {kind: logit}\n")],
                                          ["--teacher", "--teacher auto"]),
        "trial teacher folder missing": (["trial", good, "--teacher", str(root / "no-teacher")], ["--teacher", "no-teacher"]),
        "trial teacher not HF": (["trial", good, "--teacher", str(root / "not-hf")], ["--teacher", "config.json"]),
        "trial teacher unknown model type": (["trial", good, "--teacher", str(root / "hf-unknown-type")],
                                             ["--teacher", "nosuchmodel", "transformers"]),
        "trial teacher corrupt weights": (["trial", good, "--teacher", str(root / "hf-corrupt")],
                                          ["--teacher", "model.safetensors", "corrupted"]),
        # nas trial: options
        "trial unknown builtin task": (["trial", good, "--task", "builtin:nothing"], ["--task", "builtin:nothing"]),
        "trial missing task file": (["trial", good, "--task", str(root / "none.tsv")], ["--task", "none.tsv"]),
        "trial empty task file": (["trial", good, "--task", w.w("data/empty.tsv", "")], ["empty.tsv", "empty"]),
        "trial task without label column": (["trial", good, "--task", w.w("data/cols.tsv", "text\tlab\nx\t1\n")],
                                            ["cols.tsv", "label"]),
        "trial malformed jsonl": (["trial", good, "--task", w.w("data/bad.jsonl", '{"text": "a", "label": 1}\n{oops\n')],
                                  ["bad.jsonl", "line 2"]),
        "trial unknown dev label": (["trial", good, "--task", str(root / "devlabel")], ["dev.tsv", "label"]),
        "trial sparsity without amount": (["trial", w.w("c/m.yaml", "sparsity: {kind: magnitude}\n")],
                                          ["sparsity.amount"]),
        "trial cubic schedule on 2:4": (["trial", w.w("c/p.yaml", "sparsity: {kind: '2:4', schedule: cubic}\n")],
                                        ["sparsity.schedule", "one_shot"]),
        "trial taylor without sparsity": (["trial", w.w("c/q.yaml", "sparsity: {importance: taylor}\n")],
                                          ["sparsity.importance", "sparsity.kind"]),
        "trial measure-seq above max_len": (["trial", good, "--measure-seq", "128"], ["--measure-seq", "128"]),
        "trial bad meter": (["trial", good, "--meter", "rapl"], ["--meter", "rapl"]),
        "trial negative steps": (["trial", good, "--steps", "-5"], ["--steps"]),
        "trial weights below a file": (["trial", good, "--save-weights", str(root / "afile" / "w")],
                                       ["--save-weights", "afile"]),
        # nas search: spec files
        "spec missing": (["search", str(root / "nope.yaml")], ["nope.yaml", "not found"]),
        "spec yaml syntax": (["search", w.w("specs/syntax.yaml", "name: x\nbudget: {trials: 2\n")], ["syntax.yaml", "YAML"]),
        "spec empty": (["search", w.w("specs/empty.yaml", "# nothing\n")], ["empty.yaml", "empty", "study spec"]),
        "spec is a list": (["search", w.w("specs/list.yaml", "- name: x\n")], ["list.yaml", "mapping"]),
        "spec unknown key": (["search", w.spec("unknown", trails=3)], ["trails", "unknown key"]),
        "spec wrong type": (["search", w.spec("type", **{"budget.trials": "many"})], ["budget.trials", "many"]),
        "spec bad objective": (["search", w.spec("obj", objectives=[{"metric": "speed"}])], ["objectives", "speed"]),
        "spec duplicate objective": (["search", w.spec("dup", objectives=[{"metric": "accuracy"}] * 2)],
                                     ["objectives", "once"]),
        "spec bad direction": (["search", w.spec("dir", objectives=[{"metric": "accuracy", "direction": "up"}])],
                               ["direction", "up"]),
        "spec bad sampler": (["search", w.spec("sampler", **{"sampler.kind": "cmaes"})], ["sampler.kind", "cmaes"]),
        "spec gp start-up beyond the budget": (["search", w.spec("gp1", **{"sampler.kind": "gp",
                                                                  "sampler.n_startup_trials": 2})],
                                               ["sampler.n_startup_trials", "never be used", "below 2"]),
        "spec gp start-up beyond --trials": (["search", w.spec("gp2", **{"sampler.kind": "gp", "sampler.n_startup_trials": 1,
                                                                 "budget.trials": 8}), "--trials", "1"],
                                             ["sampler.n_startup_trials", "budget is 1 trials"]),
        "spec gp five objectives": (["search", w.spec("gp3", **{"sampler.kind": "gp", "sampler.n_startup_trials": 1},
                                                      objectives=[{"metric": m} for m in (
                                                          "accuracy", "energy_per_sample_j", "latency_p50_ms",
                                                          "params", "flops_per_sample")])],
                                    ["sampler.kind", "at most 4 objectives", "has 5", "tpe or nsga2"]),
        "spec evolution population below its sample size": (
            ["search", w.spec("evo1", **{"sampler.kind": "evolution", "sampler.population": 3,
                                         "sampler.sample_size": 5, "budget.trials": 8})],
            ["sampler.sample_size=5", "sampler.population (3)", "sample_size: 2"]),
        "spec evolution population beyond the budget": (
            ["search", w.spec("evo2", **{"sampler.kind": "evolution", "sampler.population": 4,
                                         "sampler.sample_size": 2})],
            ["sampler.population", "nothing would evolve", "raise budget.trials"]),
        "spec evolution knob on another sampler": (["search", w.spec("evo3", **{"sampler.population": 8})],
                                                   ["sampler.population", "only applies to kind 'evolution'"]),
        "spec zero trials": (["search", w.spec("budget", **{"budget.trials": 0})], ["budget.trials"]),
        "spec negative joules": (["search", w.spec("joules", **{"budget.joules": -5})], ["budget.joules"]),
        "spec decreasing rungs": (["search", w.spec("rungs", **{"fidelity.rungs": [200, 100]})], ["fidelity.rungs"]),
        "spec no rungs": (["search", w.spec("norungs", **{"fidelity.rungs": []})], ["fidelity.rungs"]),
        "spec zero window_s": (["search", w.spec("window", **{"measure.window_s": 0})], ["measure.window_s"]),
        "spec seq_len above max_len": (["search", w.spec("seq", **{"measure.seq_len": 64})],
                                       ["measure.seq_len", "64", "max_len 32"]),
        "spec bad meter": (["search", w.spec("meter", **{"measure.meter": "rapl"})], ["measure.meter", "rapl"]),
        "spec unknown serving form": (["search", w.spec("serving", **{"measure.serving_form": "tensorrt"})],
                                      ["measure.serving_form", "tensorrt", "onnxruntime", "cuda_graph"]),
        "spec cuda graph without a gpu": (["search", w.spec("graph", **{"measure.serving_form": ["eager", "cuda_graph"]})],
                                          ["measure.serving_form", "cuda_graph", "CUDA", "remove it"]),
        "spec zero concurrency": (["search", w.spec("conc", **{"resources.max_concurrent": 0})],
                                  ["resources.max_concurrent"]),
        "spec bad retention": (["search", w.spec("ret", **{"storage.retention": "some"})], ["storage.retention", "some"]),
        "spec unknown dialect": (["search", w.spec("dialect", **{"storage.url": "foo://x"})], ["--db", "foo"]),
        "spec database is a folder": (["search", w.spec("dbdir", **{"storage.url": str(root / "folder.db")})],
                                      ["folder.db", "folder"]),
        "spec corrupt database": (["search", w.spec("junk", **{"storage.url": str(root / "junk.db")})],
                                  ["junk.db", "SQLite"]),
        "spec artefacts below a file": (["search", w.spec("art", **{"storage.artefacts_dir": str(root / "afile" / "a")})],
                                        ["storage.artefacts_dir", "afile"]),
        "spec teacher missing": (["search", w.spec("t1", teacher=str(root / "no-teacher"))], ["teacher", "no-teacher"]),
        "spec teacher not HF": (["search", w.spec("t2", teacher=str(root / "not-hf"))], ["teacher", "config.json"]),
        "spec teacher unknown model type": (["search", w.spec("t4", teacher=str(root / "hf-unknown-type"))],
                                            ["teacher", "nosuchmodel"]),
        "spec teacher corrupt weights": (["search", w.spec("t5", teacher=str(root / "hf-corrupt"))],
                                         ["teacher", "model.safetensors"]),
        "spec distill without teacher": (["search", w.spec("t3", **{"space.overrides.distill": ["logit"]})],
                                         ["teacher", "distill"]),
        "spec unknown builtin task": (["search", w.spec("task1", task="builtin:nothing")], ["task", "builtin:nothing"]),
        "spec missing task file": (["search", w.spec("task2", task=str(root / "none.tsv"))], ["task", "none.tsv"]),
        "spec malformed task file": (["search", w.spec("task3", task=str(root / "data" / "bad.tsv"))],
                                     ["task", "bad.tsv", "line 3"]),
        "spec constraint typo": (["search", w.spec("con", constraints=["acuracy >= 0.5"])], ["constraints[0]", "acuracy"]),
        "spec constraint syntax": (["search", w.spec("con2", constraints=["accuracy >="])], ["constraints[0]"]),
        "spec unknown preset": (["search", w.spec("preset", **{"space.preset": "huge"})], ["space.preset", "huge"]),
        "spec override unknown knob": (["search", w.spec("ov1", **{"space.overrides.depth": [2]})], ["depth", "unknown key"]),
        "spec override not a list": (["search", w.spec("ov2", **{"space.overrides.n_layers": 3})], ["n_layers"]),
        "spec override zero layers": (["search", w.spec("ov3", **{"space.overrides.n_layers": [0, 1]})],
                                      ["space.overrides.n_layers", "0"]),
        "spec override window above max_len": (["search", w.spec("ov4", **{"space.overrides.window": [4, 64]})],
                                               ["space.overrides.window", "64", "max_len"]),
        "spec override bad pooling": (["search", w.spec("ov5", **{"space.overrides.pooling": ["max"]})],
                                      ["space.overrides.pooling", "max"]),
        "spec override dropout 1.5": (["search", w.spec("ov6", **{"space.overrides.dropout": [1.5]})],
                                      ["space.overrides.dropout", "1.5"]),
        "spec override bad attention": (["search", w.spec("ov7", **{"space.overrides.attention": ["flash"]})],
                                        ["attention", "flash"]),
        "spec override amount above 0.95": (["search", w.spec("ov8", **{"space.overrides.sparsity": ["magnitude"],
                                                                        "space.overrides.sparsity_amount": [0.5, 0.99]})],
                                            ["space.overrides.sparsity_amount", "0.99"]),
        "spec overrides not a mapping": (["search", w.spec("ov9", **{"space.overrides": [1, 2]})], ["space.overrides"]),
        "spec override unknown importance": (["search", w.spec("ov10", **{"space.overrides.prune_importance": ["fisher"]})],
                                             ["prune_importance", "fisher"]),
        # nas search: options
        "search ray address syntax": (["search", w.spec("ok1"), "--ray-address", "not-an-address"],
                                      ["--ray-address", "not-an-address"]),
        "search ray address port": (["search", w.spec("ok2"), "--ray-address", "127.0.0.1:99999"], ["--ray-address"]),
        "search ray unreachable": (["search", w.spec("ok3"), "--ray-address", "127.0.0.1:1"], ["--ray-address", "127.0.0.1:1"]),
        "search zero trials option": (["search", w.spec("ok4"), "--trials", "0"], ["--trials"]),
        "search db unknown dialect": (["search", w.spec("ok5"), "--db", "foo://x"], ["--db", "foo"]),
        "search db mysql driver": (["search", w.spec("ok6"), "--db", "mysql://u@h/db"], ["--db", "mysql"]),
        "search resume unknown study": (["search", "--resume", "nosuch", "--db", db], ["nosuch", "nas studies"]),
        "search resume outdated spec": (["search", "--resume", "outdated", "--db", db],
                                        ["outdated", "measure.serving_form", "new study"]),
        "search resume with spec": (["search", w.spec("ok7"), "--resume", STUDY, "--db", db], ["--resume"]),
        "search resume missing db": (["search", "--resume", STUDY, "--db", str(root / "none.db")], ["none.db"]),
        "search executor removed": (["search", "--executor", "local"], ["--executor"]),
        # nas studies
        "studies missing db": (["studies", "--db", str(root / "none.db")], ["none.db", "--db"]),
        "studies corrupt db": (["studies", "--db", str(root / "junk.db")], ["junk.db", "SQLite"]),
        "studies folder db": (["studies", "--db", str(root / "folder.db")], ["folder.db", "folder"]),
        "studies empty db": (["studies", "--db", ""], ["--db", "empty"]),
        "studies unknown dialect": (["studies", "--db", "foo://x"], ["--db", "foo"]),
        "studies missing driver": (["studies", "--db", "postgresql+psycopg2://u@h/db"], ["--db", "psycopg2"]),
        "studies unreachable postgres": (["studies", "--db", "postgresql+psycopg://u@127.0.0.1:1/db"],
                                         ["127.0.0.1", "PostgreSQL"]),
        # nas pareto
        "pareto unknown study": (["pareto", "nosuch", "--db", db], ["nosuch", "nas studies"]),
        "pareto where syntax": (["pareto", STUDY, "--db", db, "--where", "accuracy >>= 1"], ["where"]),
        "pareto where unknown field": (["pareto", STUDY, "--db", db, "--where", "speed > 1"], ["speed"]),
        "pareto no study": (["pareto", "--db", db], ["study"]),
        "pareto missing db": (["pareto", STUDY, "--db", str(root / "none.db")], ["none.db"]),
        # nas show
        "show unknown trial": (["show", STUDY, "7", "--db", db], ["7"]),
        "show trial not a number": (["show", STUDY, "seven", "--db", db], ["TRIAL", "integer"]),
        "show unknown study": (["show", "nosuch", "0", "--db", db], ["nosuch"]),
        # nas export
        "export out below a file": (["export", STUDY, "0", "--out", str(root / "afile" / "x"), "--db", db],
                                    ["--out", "afile"]),
        "export out is a file": (["export", STUDY, "0", "--out", str(root / "afile"), "--db", db], ["--out", "afile"]),
        "export out not empty": (["export", STUDY, "0", "--out", str(root / "nonempty"), "--db", db],
                                 ["--out", "nonempty", "--force"]),
        "export bad format": (["export", STUDY, "0", "--out", str(root / "x"), "--format", "tflite", "--db", db],
                              ["--format", "tflite"]),
        "export zero retrain": (["export", STUDY, "0", "--out", str(root / "x"), "--retrain", "0", "--db", db], ["--retrain"]),
        "export unknown study": (["export", "nosuch", "0", "--out", str(root / "x"), "--db", db], ["nosuch"]),
        "export no weights": (["export", STUDY, "0", "--out", str(root / "x"), "--db", db], ["weights", "--retrain"]),
        "export missing db": (["export", STUDY, "0", "--out", str(root / "x"), "--db", str(root / "none.db")], ["none.db"]),
        # nas predict
        "predict missing folder": (["predict", str(root / "nothing"), "hi"], ["nothing"]),
        "predict not an export": (["predict", str(root / "data"), "hi"], ["config.json"]),
        "predict config is a list": (["predict", _tampered(w, "list", lambda c: [c]), "hi"], ["config.json", "list"]),
        "predict config lacks a key": (["predict", _tampered(w, "nokey", lambda c: {k: v for k, v in c.items()
                                                                                   if k != "vocab_size"}), "hi"],
                                       ["config.json", "vocab_size"]),
        "predict config not JSON": (["predict", _tampered(w, "notjson", lambda c: c), "hi"], ["config.json"]),
        "predict bad candidate": (["predict", _tampered(w, "cand", lambda c: {**c, "candidate": {"n_layers": 0}}), "hi"],
                                  ["candidate", "n_layers"]),
        "predict bad num_labels": (["predict", _tampered(w, "labels", lambda c: {**c, "num_labels": "two"}), "hi"],
                                   ["num_labels", "two"]),
        "predict labels mismatch": (["predict", _tampered(w, "ids", lambda c: {**c, "num_labels": 5}), "hi"],
                                    ["id2label"]),
        "predict wrong model type": (["predict", _tampered(w, "type", lambda c: {**c, "model_type": "bert"}), "hi"],
                                     ["model_type", "bert"]),
        "predict corrupt weights": (["predict", _tampered(w, "weights", lambda c: c), "hi"], ["model.safetensors"]),
        "predict corrupt tokenizer": (["predict", _tampered(w, "tok", lambda c: c), "hi"], ["tokenizer"]),
        "predict no texts": (["predict", str(root / "exports" / "good")], ["texts"]),
        # nas serve (fails before serving), nas tasks, nas storage upgrade, the app itself
        "serve port 0": (["serve", "--port", "0"], ["--port"]),
        "serve open host without token": (["serve", "--host", "0.0.0.0", "--db", db], ["--token"]),
        "tasks extra argument": (["tasks", "extra"], ["extra"]),
        "upgrade unknown dialect": (["storage", "upgrade", "--db", "foo://x"], ["--db", "foo"]),
        "upgrade corrupt db": (["storage", "upgrade", "--db", str(root / "junk.db")], ["junk.db", "SQLite"]),
        "upgrade folder db": (["storage", "upgrade", "--db", str(root / "folder.db")], ["folder.db", "folder"]),
        "upgrade missing folder": (["storage", "upgrade", "--db", str(root / "no" / "x.db")], ["does not exist"]),
        "unknown command": (["frobnicate"], ["frobnicate"]),
        "unknown option": (["studies", "--colour"], ["--colour"]),
    }
    (Path(c["predict config not JSON"][0][1]) / "config.json").write_text("{not json")
    (Path(c["predict corrupt weights"][0][1]) / "model.safetensors").write_bytes(b"\x00garbage")
    (Path(c["predict corrupt tokenizer"][0][1]) / "tokenizer.json").write_text("{broken")
    return c


@pytest.fixture(scope="module")
def cases(world: World) -> dict[str, Case]:
    return _cases(world)


def _case_names() -> list[str]:
    """Case ids without building the world (parametrize runs at collection time)."""
    import ast

    tree = ast.parse(Path(__file__).read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == "_cases":
            for sub in ast.walk(node):
                if isinstance(sub, ast.AnnAssign) and isinstance(sub.value, ast.Dict):
                    return [k.value for k in sub.value.keys if isinstance(k, ast.Constant)]
    raise AssertionError("no case table")


CASE_NAMES = _case_names()


# --- running and checking --------------------------------------------------------------------------------
def _snapshot(*folders: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folders`` with its size and mtime (SQLite's -wal/-shm come and go with readers)."""
    snap = {}
    for folder in folders:
        for p in folder.rglob("*"):
            if p.name.endswith(("-wal", "-shm")) or not p.is_file():
                continue
            st = p.stat()
            snap[str(p)] = (st.st_size, st.st_mtime_ns)
    return snap


def _study_rows(db: Path) -> tuple[list[str], list[str]]:
    """(our study names, Optuna's study names) read with plain sqlite3."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        ours = [r[0] for r in conn.execute("SELECT name FROM nas_studies ORDER BY name")]
        theirs = [r[0] for r in conn.execute("SELECT study_name FROM studies ORDER BY study_name")]
    return ours, theirs


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from nas.cli import main

    try:
        main(list(argv))
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NAS_DB", raising=False)
    monkeypatch.delenv("NAS_TOKEN", raising=False)
    monkeypatch.setenv("NAS_CACHE_DIR", str(tmp_path / "cache"))


def test_there_are_at_least_60_cases_on_every_command() -> None:
    assert len(CASE_NAMES) >= 60 and len(set(CASE_NAMES)) == len(CASE_NAMES)
    prefixes = {n.split()[0] for n in CASE_NAMES}
    for command in ("trial", "spec", "search", "studies", "pareto", "show", "export", "predict", "serve",
                    "tasks", "upgrade"):
        assert command in prefixes, command


@pytest.mark.parametrize("case", CASE_NAMES)
def test_bad_input(case: str, cases: dict[str, Case], world: World, tmp_path: Path,
                   capsys: pytest.CaptureFixture[str]) -> None:
    if case == "spec cuda graph without a gpu" and _has_cuda():
        pytest.skip("a CUDA device is visible here, so cuda_graph is a valid form")
    argv, needles = cases[case]
    before = _snapshot(world.root, tmp_path)
    rows_before = _study_rows(world.db)
    code, out, err = run_cli(argv, capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (case, code, out[-500:], err[-2000:])
    assert "Traceback" not in err, err
    assert len(lines) == 1 and err.strip() == lines[0].strip(), f"{case}: not one line:\n{err}"
    assert lines[0].startswith("error: "), lines[0]
    for n in needles:
        assert n.lower() in lines[0].lower(), (case, n, lines[0])
    assert out == "", (case, out)
    after = _snapshot(world.root, tmp_path)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"{case} wrote files: {changed}"
    assert _study_rows(world.db) == rows_before, f"{case} created a study row"


def test_unwritable_export_folder(world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """--out in a folder this user cannot write (simulated for root, whom chmod does not stop)."""
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    if os.access(locked, os.W_OK):  # root
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, m, **kw: False if Path(p) == locked and m & os.W_OK
                            else real(p, m, **kw))
    code, _, err = run_cli(["export", STUDY, "0", "--out", str(locked / "x"), "--db", str(world.db)], capsys)
    locked.chmod(0o755)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "not writable" in err and "--out" in err, err
    assert list(locked.iterdir()) == []


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


def test_gp_without_scipy_names_the_pip_command_and_tpe_keeps_short_budgets(monkeypatch: pytest.MonkeyPatch) -> None:
    from nas.errors import ConfigError
    from nas.runner.checks import check_sampler
    from nas.spec import BudgetSpec, SamplerSpec, StudySpec, default_spec

    spec = StudySpec(sampler=SamplerSpec(kind="gp", n_startup_trials=2), budget=BudgetSpec(trials=8))
    check_sampler(spec)
    monkeypatch.setitem(sys.modules, "scipy", None)  # how a missing module looks to the import system
    with pytest.raises(ConfigError) as caught:
        check_sampler(spec)
    message = str(caught.value)
    assert message.startswith("sampler.kind: the GP sampler needs scipy") and "Fix: pip install scipy" in message
    assert "\n" not in message
    # TPE (the default) is not refused: `nas search --trials 3` on the default study stays a quick random run
    check_sampler(default_spec().with_overrides(**{"budget.trials": 3}))


# --- read-only databases: every reader reads them and writes nothing --------------------------------------
@pytest.fixture
def read_only_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A study database in a folder this process cannot write: chmod, and for root (whom chmod does not
    stop) os.access also reports the folder and file unwritable, which is what the readers consult."""
    from storage import Store, TrialCost

    folder = tmp_path / "share"
    folder.mkdir()
    db = folder / "nas.db"
    with Store.open(db) as store:
        store.create_study(STUDY, json.dumps(_spec(db)), [("accuracy", "maximize"), ("energy_per_sample_j", "minimize")])
        store.finish_trial(STUDY, 0, fake_trial_result(), cost=TrialCost())
    db.chmod(0o444)
    folder.chmod(0o555)
    if os.access(folder, os.W_OK):
        import storage.engine

        real = os.access
        denied = {str(folder), str(db)}
        monkeypatch.setattr(storage.engine.os, "access",
                            lambda p, m, **kw: False if m & os.W_OK and str(Path(p).resolve()) in denied
                            else real(p, m, **kw))
    yield db
    folder.chmod(0o755)


def test_every_reader_reads_a_read_only_database_and_writes_nothing(read_only_db: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    import nas
    from dashboards.context import AppContext

    db = str(read_only_db)
    before = _snapshot(read_only_db.parent)
    code, out, err = run_cli(["studies", "--json", "--db", db], capsys)
    assert code == 0 and json.loads(out)[0]["name"] == STUDY, err
    code, out, err = run_cli(["pareto", STUDY, "--json", "--db", db], capsys)
    assert code == 0 and [t["number"] for t in json.loads(out)] == [0], err
    code, out, err = run_cli(["show", STUDY, "0", "--json", "--db", db], capsys)
    assert code == 0 and json.loads(out)["number"] == 0, err
    assert [t.number for t in nas.pareto(STUDY, db=db).trials] == [0]
    ctx = AppContext(db, read_only_db.parent / "artefacts")
    store = ctx.store()
    assert store is not None and store.read_only and [s.name for s in store.list_studies()] == [STUDY]
    ctx.close()
    assert sorted(p.name for p in read_only_db.parent.iterdir()) == ["nas.db"]  # no -wal, no -shm
    assert _snapshot(read_only_db.parent) == before


def test_a_writer_on_a_read_only_database_is_one_line(read_only_db: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "w.yaml"
    spec.write_text(yaml.safe_dump(_spec(read_only_db, name="w")))
    code, _, err = run_cli(["search", str(spec)], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "read-only" in err and "nas.db" in err, err
    code, _, err = run_cli(["storage", "upgrade", "--db", str(read_only_db)], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "read-only" in err, err


@pytest.mark.parametrize("preset", ["tiny", "base"])
def test_every_shipped_preset_passes_the_space_check(preset: str) -> None:
    """The base preset starts at 2 layers, so its per-layer shapes need n_heads_i in the check's replay."""
    from nas.runner.checks import check_space
    from nas.spec import StudySpec

    assert check_space(StudySpec(space={"preset": preset})).n_layers
