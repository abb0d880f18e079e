"""A study with a real (Hugging Face) teacher: the space's ``init`` dimension, the driver's one-time teacher
preparation (fine-tune, outputs cache, reference row, cost counted once) and inheritance in the trial.

Tiny random BERT folders are built in code (hidden 32, 2 layers, a 200-word WordPiece vocabulary) on a
small file task, so nothing here takes more than a few seconds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from evaluators.pipeline import run_trial
from evaluators.tasks import TaskData, load_task
from evaluators.teacher import Teacher, load_teacher
from evaluators.tokenize import train_wordpiece
from evaluators.weights import load_trial_model
from nas.config import Candidate, MeasureConfig, TrainConfig
from nas.errors import ConfigError
from nas.runner import teacher_prep
from nas.runner.checks import check_space
from nas.runner.teacher_prep import PreparedTeacher, prepare_teacher
from nas.spec import FineTuneSpec, ResourcesSpec, StudySpec
from search_spaces import ReplayTrial, SearchSpace, fit_to_teacher, suggest
from storage import Store
from tests.hf_folders import save_tiny_hf, write_small_task

FAST = FineTuneSpec(steps=3, batch_size=8, lr=1e-3)
MEASURE = {"meter": "estimate", "window_s": 0.05, "n_windows": 2, "idle_s": 0.0, "warmup_iters": 1,
           "batch_size": 4, "seq_len": 16}
#: A BERT-layout teacher: 6 layers, width 384, 12 heads of 32, FFN 1536 (MiniLM-L6's shape).
TEACHER = Candidate(n_layers=6, d_model=384, n_heads=12, head_dim=32, d_ffn=1536, max_len=512, norm="post",
                    layer_norm_eps=1e-12, pooler="tanh", pooling="cls")
PARAMS = {"n_layers": 8, "n_heads": 16, "d_model": 512, "ffn_ratio": 4, "attention": "softmax",
          "embedding_bits": 32, "attention_bits": 32, "ffn_bits": 32, "quant_scheme": "symmetric",
          "quant_granularity": "per_channel", "sparsity": "none", "distill": "none", "dropout": 0.1,
          "pooling": "mean"}


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Any:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_small_task(tmp_path_factory.mktemp("task") / "sentiment")


@pytest.fixture(scope="module")
def task(task_dir: Path) -> TaskData:
    return load_task(str(task_dir), max_len=16, vocab_size=200)


@pytest.fixture(scope="module")
def headless(task: TaskData, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("hf") / "bert-bare"
    save_tiny_hf("bare", folder, train_wordpiece(task.train_texts, vocab_size=200).backend)
    return folder


# --- the space ------------------------------------------------------------------------------------------
def _space(**overrides: Any) -> SearchSpace:
    base = {k: [v] for k, v in PARAMS.items()}
    return SearchSpace.model_validate({**base, "d_model": [512], "max_len": 64, **overrides})


def test_init_teacher_takes_the_teachers_layout_and_is_capped_at_its_shape() -> None:
    space = _space(init=["scratch", "teacher"])
    cand = suggest(ReplayTrial({**PARAMS, "init": "teacher"}), space, TEACHER)
    assert (cand.init, cand.norm, cand.layer_norm_eps, cand.pooler, cand.pooling) == \
        ("teacher", "post", 1e-12, "tanh", "cls")
    assert (cand.n_layers, cand.d_model, cand.n_heads, cand.head_dim, cand.d_ffn) == (6, 384, 12, 32, 1536)
    assert cand.max_len == 64  # the space's length, below the teacher's 512 positions
    scratch = suggest(ReplayTrial({**PARAMS, "init": "scratch"}), space, TEACHER)
    assert (scratch.init, scratch.norm, scratch.n_layers, scratch.d_model) == ("scratch", "pre", 8, 512)


def test_a_smaller_student_keeps_its_own_shape_and_the_teachers_head_width() -> None:
    small = Candidate(n_layers=2, d_model=384, n_heads=6, d_ffn=768, max_len=64)
    cut = fit_to_teacher(small, TEACHER)
    assert (cut.n_layers, cut.n_heads, cut.head_dim, cut.d_ffn) == (2, 6, 32, 768)
    assert cut.attention_width == 192  # six of the teacher's 32-wide heads, inside width 384


def test_a_space_without_init_replays_params_stored_before_init_existed() -> None:
    cand = suggest(ReplayTrial(dict(PARAMS)), _space(), None)  # no "init" param was ever suggested
    assert cand.init == "scratch"


def test_init_teacher_without_a_teacher_is_a_clear_error(task_dir: Path) -> None:
    with pytest.raises(ConfigError, match="needs a teacher"):
        suggest(ReplayTrial({**PARAMS, "init": "teacher"}), _space(init=["teacher"]), None)
    spec = StudySpec.model_validate({"task": str(task_dir), "space": {"overrides": {"init": ["teacher"]}}})
    with pytest.raises(ConfigError, match="names no teacher"):
        check_space(spec)
    with pytest.raises(ConfigError, match="init: teacher"):
        run_trial(Candidate(init="teacher"), str(task_dir), train_cfg=TrainConfig(steps=1),
                  measure_cfg=MeasureConfig(), teacher=None)


def test_check_space_does_not_vary_a_window_when_local_attention_is_not_offered(task_dir: Path) -> None:
    # The window knob only exists under local attention; the check used to try it with local anyway.
    spec = StudySpec.model_validate({"task": str(task_dir), "space": {"overrides": {"attention": ["softmax"]}}})
    assert check_space(spec).attention == ["softmax"]


# --- the driver's preparation ------------------------------------------------------------------------
def _spec(task_dir: Path, headless: Path, **space: Any) -> StudySpec:
    overrides = {"init": ["teacher"], "distill": ["logit"], "attention": ["softmax"], "sparsity": ["none"],
                 "max_len": 16, **space}
    return StudySpec.model_validate({
        "name": "teach", "task": str(task_dir),
        "teacher": {"path": str(headless), "fine_tune": FAST.model_dump()},
        "space": {"overrides": overrides},
        "train": {"steps": 2, "batch_size": 8, "device": "cpu", "eval_batch_size": 64}, "measure": MEASURE,
    })


def test_prepare_teacher_fine_tunes_caches_and_measures_once(
        task_dir: Path, headless: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NAS_CACHE_DIR", str(tmp_path / "cache"))
    spec = _spec(task_dir, headless)
    with Store.open(str(tmp_path / "nas.db")) as store:
        store.create_study(spec.name, spec.model_dump_json(), [("accuracy", "maximize"),
                                                                ("energy_per_sample_j", "minimize")])
        prepared = prepare_teacher(spec, store)
        assert prepared is not None
        ref = store.teacher_reference(spec.name)
        assert ref is not None and ref.name == prepared.reference.name
        assert ref.fine_tune is not None and ref.fine_tune.steps == FAST.steps  # this study fine-tuned it
        assert ref.cache_build is not None  # and built the outputs cache the trials distil from
        assert ref.meter == "estimate" and ref.is_estimate and ref.energy_per_sample_j and ref.accuracy is not None
        assert ref.result.inference is not None and ref.result.inference.batch_size == MEASURE["batch_size"]
        assert Path(prepared.path).name.startswith("ft-")  # workers load the fitted folder
        assert prepared.candidate.norm == "post" and prepared.candidate.d_model == 32
        total = store.get_study(spec.name).total_energy_j
        assert total is not None and total == pytest.approx(ref.search_cost_j)
        again = prepare_teacher(spec, store)  # a resumed study: the stored reference, nothing charged twice
        assert again is not None and again.reference.fine_tune is not None
        assert store.get_study(spec.name).total_energy_j == pytest.approx(total)
        assert json.loads((Path(prepared.path) / "meta.json").read_text())["steps"] == FAST.steps


def test_the_teacher_is_measured_with_a_trial_workers_threads(
        task_dir: Path, headless: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NAS_CACHE_DIR", str(tmp_path / "cache"))
    spec = _spec(task_dir, headless).model_copy(update={"resources": ResourcesSpec(torch_threads=2)})
    seen: list[int] = []
    real = teacher_prep.assess

    def spy(*a: Any, **kw: Any) -> Any:
        seen.append(torch.get_num_threads())
        return real(*a, **kw)

    monkeypatch.setattr(teacher_prep, "assess", spy)
    torch.set_num_threads(1)  # the driver's own setting (the module fixture pins one thread)
    with Store.open(str(tmp_path / "nas.db")) as store:
        store.create_study(spec.name, spec.model_dump_json(), [("accuracy", "maximize")])
        assert prepare_teacher(spec, store) is not None
    assert seen == [2], "the reference is measured with resources.torch_threads, like every student"
    assert torch.get_num_threads() == 1, "the driver's thread count is restored"


def _prepared(task_dir: Path, headless: Path, tmp_path: Path,
              monkeypatch: pytest.MonkeyPatch) -> tuple[PreparedTeacher, Teacher]:
    """The driver's prepared teacher of the small study, and the teacher a trial loads from it."""
    monkeypatch.setenv("NAS_CACHE_DIR", str(tmp_path / "cache"))
    spec = _spec(task_dir, headless)
    with Store.open(str(tmp_path / "nas.db")) as store:
        store.create_study(spec.name, spec.model_dump_json(), [("accuracy", "maximize")])
        prepared = prepare_teacher(spec, store)
    assert prepared is not None
    teacher = load_teacher(prepared.path, load_task(str(task_dir), max_len=16, vocab_size=200))
    assert teacher is not None
    return prepared, teacher


def test_a_student_of_the_teachers_own_shape_starts_as_the_teacher(
        task_dir: Path, headless: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    prepared, teacher = _prepared(task_dir, headless, tmp_path, monkeypatch)
    whole = fit_to_teacher(prepared.candidate.model_copy(update={"max_len": 16}), prepared.candidate)
    # One step at a vanishing learning rate: the student must predict exactly as the teacher does.
    cfg = TrainConfig(steps=1, lr=1e-12, batch_size=8, device="cpu", eval_batch_size=64)
    result = run_trial(whole, str(task_dir), train_cfg=cfg, measure_cfg=MeasureConfig(**MEASURE),
                       teacher=prepared.path)
    assert result.accuracy == pytest.approx(prepared.reference.accuracy)
    assert result.test_accuracy == pytest.approx(prepared.reference.result.test_accuracy)
    scratch = run_trial(whole.model_copy(update={"init": "scratch"}), str(task_dir), train_cfg=cfg,
                        measure_cfg=MeasureConfig(**MEASURE), teacher=prepared.path)
    assert scratch.status == "COMPLETE"  # a scratch student of a teacher's study speaks its tokenizer too


@pytest.mark.parametrize("freeze", [True, False])
def test_freeze_inherited_embeddings_keeps_the_teachers_table(
        task_dir: Path, headless: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, freeze: bool) -> None:
    prepared, teacher = _prepared(task_dir, headless, tmp_path, monkeypatch)
    student = fit_to_teacher(prepared.candidate.model_copy(update={"max_len": 16, "n_layers": 1}),
                             prepared.candidate)
    cfg = TrainConfig(steps=3, lr=1e-2, batch_size=8, device="cpu", eval_batch_size=64,
                      freeze_inherited_embeddings=freeze)
    result = run_trial(student, str(task_dir), train_cfg=cfg, measure_cfg=MeasureConfig(**MEASURE),
                       teacher=prepared.path, weights_out=tmp_path / "w")
    assert result.status == "COMPLETE"
    model = load_trial_model(tmp_path / "w")[0]
    same = torch.equal(model.tok_emb.weight, teacher.model.tok_emb.weight)
    assert same is freeze, "frozen: the inherited table is kept; trained: it moves"
    assert not torch.equal(model.head.weight, teacher.model.head.weight), "the rest of the student still trains"


def test_no_outputs_cache_is_built_when_no_candidate_distils(
        task_dir: Path, headless: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NAS_CACHE_DIR", str(tmp_path / "cache"))
    spec = _spec(task_dir, headless, distill=["none"])
    with Store.open(str(tmp_path / "nas.db")) as store:
        store.create_study(spec.name, spec.model_dump_json(), [("accuracy", "maximize")])
        prepared = prepare_teacher(spec, store)
    assert prepared is not None and prepared.reference.cache_build is None  # no outputs cache is built
    assert not (tmp_path / "cache" / "teacher-outputs").exists()


# --- end to end: `nas search` with a head-less teacher (slow: starts local Ray) ---------------------------
@pytest.mark.slow
def test_search_with_a_headless_teacher_stores_the_reference_and_ratios(
        task_dir: Path, headless: Path, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    import yaml

    db = tmp_path / "nas.db"
    spec = _spec(task_dir, headless, n_layers=[1, 2], d_model=[32], n_heads=[1, 2], ffn_ratio=[1],
                 attention_bits=[32], ffn_bits=[32], embedding_bits=[32], kd_alpha=[0.5, 0.9])
    data = spec.model_dump(mode="json")
    data.update(budget={"trials": 2}, fidelity={"rungs": [4], "enabled": False},
                resources={"max_concurrent": 1}, storage={"url": str(db), "retention": "none"},
                sampler={"kind": "random", "seed": 0})
    path = tmp_path / "teach.yaml"
    path.write_text(yaml.safe_dump(data))
    env = {**os.environ, "NAS_CACHE_DIR": str(tmp_path / "cache"), "NAS_LANE_DIR": str(tmp_path / "lanes"),
           "RAY_AUTH_MODE": "disabled"}
    root = Path(__file__).resolve().parents[1]

    def nas(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "nas", *args], capture_output=True, text=True, cwd=root,
                              env=env, timeout=600)

    res = nas("search", str(path), "--quiet")
    assert res.returncode == 0, res.stderr[-3000:]
    with Store.open(str(db), create=False) as store:
        ref = store.teacher_reference("teach")
        assert ref is not None and ref.fine_tune is not None and ref.fine_tune.steps == FAST.steps
        views = [v for v in store.trials("teach") if v.state == "COMPLETE"]
        assert views and all(v.candidate is not None and v.candidate.init == "teacher" for v in views)
        assert all(v.candidate.norm == "post" and v.candidate.head_dim == 8 for v in views if v.candidate)
        for v in views:  # workers loaded the fitted folder: nobody fine-tuned or cached again
            assert v.result is not None and v.result.train is not None
            assert v.result.train.teacher_training is None and v.result.train.teacher_cache is None
        info = store.get_study("teach")
        trial_j = sum(v.cost.total_energy_j for v in store.trials("teach") if v.cost and v.cost.total_energy_j)
        assert info.total_energy_j == pytest.approx(trial_j + (ref.search_cost_j or 0.0))
    out = nas("pareto", "teach", "--db", str(db), "--json", "--include-trivial")
    assert out.returncode == 0, out.stderr[-2000:]
    rows = json.loads(out.stdout)
    assert rows and all(r["accuracy_ratio_to_teacher"] is not None for r in rows)
    assert all(r["energy_ratio_to_teacher"] is not None for r in rows)  # same meter, same protocol


def test_a_student_that_neither_distils_nor_inherits_does_not_load_a_self_trained_teacher(
        task_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import evaluators.pipeline as pipeline

    def refuse(*_a: Any, **_k: Any) -> Any:
        raise AssertionError("the auto teacher was loaded (and maybe trained) for nothing")

    monkeypatch.setattr(pipeline, "load_teacher_for", refuse)
    cand = Candidate(n_layers=1, d_model=16, n_heads=2, d_ffn=16, max_len=16, dropout=0.0)
    result = run_trial(cand, str(task_dir), train_cfg=TrainConfig(steps=1, batch_size=8, device="cpu"),
                       measure_cfg=MeasureConfig(**MEASURE), teacher="auto")
    assert result.status == "COMPLETE"
