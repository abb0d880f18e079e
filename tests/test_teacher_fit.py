"""Fine-tuning a Hugging Face teacher on the task: the spec, the content-hash cache, the CLI and ``nas trial``.

Tiny random BERT folders are built in code (hidden 32, 2 layers, a 200-word WordPiece vocabulary).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

import evaluators.teacher_fit as teacher_fit
from evaluators.metrics import evaluate
from evaluators.tasks import TaskData, load_task
from evaluators.teacher import load_teacher
from evaluators.teacher_fit import fit_key, fit_teacher, folder_digest, head_fits, resolve_teacher
from evaluators.tokenize import train_wordpiece
from nas.config import Candidate, DistillConfig, MeasureConfig, TrainConfig, validate
from nas.errors import ConfigError
from nas.spec import FineTuneSpec, StudySpec, TeacherSpec
from tests.conftest import run_cli
from tests.hf_folders import write_small_task

FAST = FineTuneSpec(steps=3, batch_size=8, lr=1e-3)


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Any:
    # Tiny models run fastest on one thread, and a busy CI box oversubscribes badly otherwise.
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


def _tiny_bert(task: TaskData, folder: Path, num_labels: int | None) -> Path:
    """A random BERT folder with its tokenizer: no classification head when ``num_labels`` is None."""
    from transformers import BertConfig, BertForSequenceClassification, BertModel, BertTokenizerFast

    tok = train_wordpiece(task.train_texts, vocab_size=200)
    hf_tok = BertTokenizerFast(tokenizer_object=tok.backend, unk_token="[UNK]", pad_token="[PAD]",
                               cls_token="[CLS]", sep_token="[SEP]", mask_token="[UNK]")
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(hf_tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=32, num_labels=num_labels or 2, pad_token_id=0)
    model = BertModel(cfg) if num_labels is None else BertForSequenceClassification(cfg)
    model.save_pretrained(str(folder))
    hf_tok.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def headless(task: TaskData, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny_bert(task, tmp_path_factory.mktemp("hf") / "bert-bare", None)


# --- the spec -------------------------------------------------------------------------------------------
def test_spec_takes_a_string_or_a_mapping_and_names_unknown_keys() -> None:
    assert StudySpec(teacher="models/bert").teacher == TeacherSpec(path="models/bert")
    assert StudySpec(teacher="none").teacher is None and StudySpec(teacher="").teacher is None
    assert StudySpec().teacher is None
    spec = validate(StudySpec, {"teacher": {"path": "m", "fine_tune": {"steps": 7, "max_examples": 100}}}, source="s")
    assert spec.teacher is not None and spec.teacher.fine_tune == FineTuneSpec(steps=7, max_examples=100)
    assert spec.teacher.fine_tune.lr == 5e-5 and spec.teacher.fine_tune.batch_size == 32
    again = validate(StudySpec, spec.model_dump(), source="dump")  # a stored spec reads back
    assert again.teacher == spec.teacher
    for bad, key in [({"path": "m", "fine_tuning": {}}, "teacher.fine_tuning"),
                     ({"path": "m", "fine_tune": {"stepz": 3}}, "teacher.fine_tune.stepz"),
                     ({"path": "m", "fine_tune": {"steps": 0}}, "teacher.fine_tune.steps")]:
        with pytest.raises(ConfigError) as e:
            validate(StudySpec, {"teacher": bad}, source="s.yaml")
        assert key in str(e.value), str(e.value)
    with pytest.raises(ConfigError, match="not to auto"):
        validate(StudySpec, {"teacher": {"path": "auto", "fine_tune": {}}}, source="s.yaml")


# --- fitting and its cache ------------------------------------------------------------------------------
def test_fit_misses_then_hits_and_the_folder_loads_as_a_teacher(
        task: TaskData, headless: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    steps: list[tuple[int, int]] = []
    first = fit_teacher(headless, task, FAST, seed=0, device="cpu", root=tmp_path,
                        progress=lambda d, t: steps.append((d, t)))
    assert not first.cached and first.training is not None and first.training.steps == 3
    assert steps == [(1, 3), (2, 3), (3, 3)]  # one call per step
    assert first.folder.parent == tmp_path / "teachers" and first.folder.name == f"ft-{first.key}"
    files = {p.name for p in first.folder.iterdir()}
    assert {"model.safetensors", "candidate.json", "meta.json", "tokenizer.json"} <= files
    meta = json.loads((first.folder / "meta.json").read_text())
    assert meta["dev_accuracy"] == first.dev_accuracy and meta["steps"] == 3 and meta["head_was_fresh"]
    assert meta["settings"]["steps"] == 3 and meta["task"] == task.name

    def no_training(*_a: Any, **_k: Any) -> Any:
        raise AssertionError("a cache hit must not train")

    monkeypatch.setattr(teacher_fit, "train_and_evaluate", no_training)
    second = fit_teacher(headless, task, FAST, seed=0, device="cpu", root=tmp_path)
    assert second.cached and second.training is None
    assert second.folder == first.folder and second.dev_accuracy == first.dev_accuracy

    teacher = load_teacher(str(first.folder), task)
    assert teacher is not None and teacher.kind == "hf" and teacher.name.endswith(f"(fine-tuned ft-{first.key})")
    assert teacher.dev_accuracy == first.dev_accuracy and teacher.tokenizer.is_hf
    assert (teacher.n_layers, teacher.d_model, teacher.n_heads) == (2, 32, 2)
    # the saved weights are the fitted ones: the same dev accuracy again
    assert evaluate(teacher.model, teacher.adapt_task(task), 64).accuracy == pytest.approx(first.dev_accuracy)


def test_key_follows_settings_seed_task_and_model_bytes_not_the_path(
        task: TaskData, headless: Path, tmp_path: Path) -> None:
    base = fit_key(headless, task, FAST, 0)
    assert fit_key(headless, task, FAST, 0) == base
    assert fit_key(headless, task, FAST.model_copy(update={"steps": 4}), 0) != base
    assert fit_key(headless, task, FAST.model_copy(update={"lr": 2e-3}), 0) != base
    assert fit_key(headless, task, FAST.model_copy(update={"max_examples": 10}), 0) != base
    assert fit_key(headless, task, FAST, 1) != base
    other = load_task(task.name, max_len=24, vocab_size=200)
    assert fit_key(headless, other, FAST, 0) != base
    copy = tmp_path / "copy"
    shutil.copytree(headless, copy)
    assert fit_key(copy, task, FAST, 0) == base  # content, not path
    weights = copy / "model.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 0x01  # one bit of one weight
    weights.write_bytes(bytes(blob))
    assert folder_digest(copy) != folder_digest(headless) and fit_key(copy, task, FAST, 0) != base
    with pytest.raises(ConfigError, match="no model files"):
        folder_digest(tmp_path / "missing")


def test_max_examples_trains_on_the_first_rows_and_a_broken_entry_is_refitted(
        task: TaskData, headless: Path, tmp_path: Path) -> None:
    settings = FAST.model_copy(update={"max_examples": 16})
    fitted = fit_teacher(headless, task, settings, device="cpu", root=tmp_path)
    assert fitted.meta["n_train_used"] == 16 and task.n_train == 48
    (fitted.folder / "model.safetensors").unlink()  # a half-deleted cache entry
    again = fit_teacher(headless, task, settings, device="cpu", root=tmp_path)
    assert not again.cached and again.folder == fitted.folder and (again.folder / "model.safetensors").is_file()


@pytest.mark.parametrize("family", ["roberta", "distilbert"])
def test_other_families_with_a_head_for_other_labels_are_refitted(family: str, task: TaskData, tmp_path: Path) -> None:
    import transformers

    tok = transformers.BertTokenizerFast(tokenizer_object=train_wordpiece(task.train_texts, vocab_size=200).backend,
                                         unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
                                         mask_token="[UNK]")
    torch.manual_seed(0)
    if family == "roberta":
        model: Any = transformers.RobertaForSequenceClassification(transformers.RobertaConfig(
            vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=40, type_vocab_size=1, num_labels=3, pad_token_id=0))
    else:
        model = transformers.DistilBertForSequenceClassification(transformers.DistilBertConfig(
            vocab_size=len(tok), dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=32,
            num_labels=3, pad_token_id=0))
    folder = tmp_path / family
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    resolved = resolve_teacher(TeacherSpec(path=str(folder), fine_tune=FAST), task, device="cpu", root=tmp_path)
    assert resolved is not None and resolved.fitted is not None and not head_fits(folder, task.num_labels)
    assert resolved.fitted.meta["head_was_fresh"] and resolved.fitted.meta["shape"]["model_type"] == family
    teacher = resolved.load(task)
    assert teacher is not None and teacher.take_training() is resolved.fitted.training  # charged to its loader
    assert evaluate(teacher.model, teacher.adapt_task(task), 64).accuracy == pytest.approx(resolved.fitted.dev_accuracy)


# --- resolving a study's teacher ------------------------------------------------------------------------
def test_resolve_fine_tunes_only_when_the_head_does_not_fit(
        task: TaskData, headless: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fits = _tiny_bert(task, tmp_path / "bert-2", task.num_labels)
    three = _tiny_bert(task, tmp_path / "bert-3", 3)
    assert head_fits(fits, 2) and not head_fits(three, 2) and not head_fits(headless, 2)
    calls: list[tuple[str, FineTuneSpec | None]] = []

    def fake_fit(path: Any, _task: TaskData, settings: FineTuneSpec | None, **_k: Any) -> Any:
        calls.append((str(path), settings))
        return teacher_fit.FittedTeacher(folder=tmp_path / "ft", source=str(path), key="k", dev_accuracy=0.5,
                                         training=None, cached=True, meta={})

    monkeypatch.setattr(teacher_fit, "fit_teacher", fake_fit)
    as_is = resolve_teacher(str(fits), task)
    assert as_is is not None and as_is.path == str(fits) and as_is.fitted is None and calls == []
    for folder in (three, headless):
        r = resolve_teacher(TeacherSpec(path=str(folder)), task)
        assert r is not None and r.path == str(tmp_path / "ft") and r.source == str(folder)
    assert calls == [(str(three), None), (str(headless), None)]  # defaults: fit_teacher's FineTuneSpec()
    asked = resolve_teacher(TeacherSpec(path=str(fits), fine_tune=FAST), task)
    assert asked is not None and asked.fitted is not None and calls[-1] == (str(fits), FAST)
    assert resolve_teacher("auto", task) == teacher_fit.ResolvedTeacher(path="auto", source="auto")
    assert resolve_teacher(None, task) is None and resolve_teacher("none", task) is None


def test_a_trial_with_a_headless_teacher_fine_tunes_it_first_and_charges_it_once(
        headless: Path, task_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from evaluators.pipeline import run_trial

    monkeypatch.setenv("NAS_CACHE_DIR", str(tmp_path))
    cand = Candidate(n_layers=1, d_model=16, n_heads=2, d_ffn=32, max_len=16, dropout=0.0,
                     distill=DistillConfig(kind="logit"))
    train_cfg = TrainConfig(steps=2, batch_size=8, device="cpu", eval_batch_size=256)
    measure = MeasureConfig(meter="estimate", window_s=0.05, n_windows=2, idle_s=0.0, warmup_iters=1,
                            batch_size=4, seq_len=16)
    phases: list[str] = []
    teacher = TeacherSpec(path=str(headless), fine_tune=FAST)
    first = run_trial(cand, str(task_dir), train_cfg=train_cfg, measure_cfg=measure, teacher=teacher,
                      progress=lambda phase, _d, _t: phases.append(phase))
    assert phases.index("fine-tune") < phases.index("train") and phases.count("fine-tune") == 3
    assert first.status == "COMPLETE" and first.train is not None
    fit_cost = first.train.teacher_training
    assert fit_cost is not None and fit_cost.steps == 3 and fit_cost.meter == "estimate" and fit_cost.is_estimate
    assert first.train.teacher is not None and "fine-tuned ft-" in first.train.teacher
    assert [p.name for p in (tmp_path / "teachers").iterdir() if p.name.startswith("ft-")]
    second = run_trial(cand, str(task_dir), train_cfg=train_cfg, measure_cfg=measure, teacher=teacher)
    assert second.train is not None and second.train.teacher_training is None  # counted once


# --- the CLI --------------------------------------------------------------------------------------------
def test_cli_fit_runs_then_reuses_the_cache(headless: Path, task_dir: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("NAS_CACHE_DIR", str(tmp_path))
    argv = ["teacher", "fit", str(headless), "--task", str(task_dir), "--steps", "3", "--batch-size", "8",
            "--max-examples", "32", "--max-len", "16", "--meter", "estimate", "--device", "cpu"]
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    folders = sorted((tmp_path / "teachers").glob("ft-*"))
    assert len(folders) == 1 and str(folders[0]) in out.replace("\n", "")
    assert "fine-tuned" in out and "3 steps" in out and "meter estimate, ESTIMATE" in out and "dev accuracy" in out
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    assert "reused the cached fine-tuned teacher" in out and "meter estimate, ESTIMATE" in out
    assert sorted((tmp_path / "teachers").glob("ft-*")) == folders


def test_cli_fit_bad_input_is_one_line_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str], headless: Path) -> None:
    monkeypatch.setenv("NAS_CACHE_DIR", str(tmp_path / "cache"))
    for argv, needle in [(["teacher", "fit", str(tmp_path / "nope"), "--task", "builtin:sentiment"], "nope"),
                         (["teacher", "fit", str(headless), "--task", "builtin:nosuch", "--max-len", "16"], "nosuch"),
                         (["teacher", "fit", str(headless), "--task", "builtin:sentiment", "--steps", "0"], "--steps"),
                         (["teacher", "fit", str(headless), "--task", "builtin:sentiment", "--max-len", "64"],
                          "--max-len")]:
        code, _out, err = run_cli(argv, capsys)
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and needle in lines[0], (argv, err)
    assert not (tmp_path / "cache" / "teachers").exists() or not any((tmp_path / "cache" / "teachers").iterdir())
