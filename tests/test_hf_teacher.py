"""Hugging Face folders converted into our model: exact logits and hidden states for BERT, RoBERTa and
DistilBERT, a head-less folder, label checks, the unknown-token warning, and bad teachers (library and CLI)."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from evaluators.hf_teacher import check_hf_folder, load_hf_encoder, unknown_token_share
from evaluators.tasks import TaskData, load_task
from evaluators.teacher import load_hf_teacher, load_teacher
from evaluators.tokenize import train_wordpiece, word_level
from nas.errors import ConfigError
from nas.teacher_shape import TeacherShape

transformers = pytest.importorskip("transformers")

HIDDEN, LAYERS, FFN, POSITIONS = 32, 2, 48, 40


@pytest.fixture(scope="module")
def task() -> TaskData:
    return load_task("builtin:sentiment", n_train=64, n_dev=16, max_len=16)


def _hf_tokenizer(backend: Any) -> Any:
    return transformers.BertTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]",
                                          cls_token="[CLS]", sep_token="[SEP]", mask_token="[UNK]")


def _randomise(model: torch.nn.Module) -> None:
    """Weights far from the defaults (LayerNorms included), so a wrong mapping cannot pass by accident."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)


def _hf_model(family: str, vocab: int, num_labels: int = 2) -> Any:
    kw: dict[str, Any] = {"vocab_size": vocab, "hidden_size": HIDDEN, "num_hidden_layers": LAYERS,
                          "intermediate_size": FFN, "max_position_embeddings": POSITIONS, "num_labels": num_labels,
                          "pad_token_id": 0}
    if family == "bert":
        return transformers.BertForSequenceClassification(transformers.BertConfig(num_attention_heads=4, **kw))
    if family == "bare":
        return transformers.BertModel(transformers.BertConfig(num_attention_heads=4, **kw))
    if family == "roberta":
        cfg = transformers.RobertaConfig(num_attention_heads=2, type_vocab_size=1, layer_norm_eps=1e-5, **kw)
        return transformers.RobertaForSequenceClassification(cfg)
    return transformers.DistilBertForSequenceClassification(transformers.DistilBertConfig(
        vocab_size=vocab, dim=HIDDEN, n_layers=LAYERS, n_heads=4, hidden_dim=FFN,
        max_position_embeddings=POSITIONS, num_labels=num_labels, pad_token_id=0))


def _save(family: str, folder: Path, backend: Any, num_labels: int = 2) -> Any:
    tok = _hf_tokenizer(backend)
    model = _hf_model(family, len(tok), num_labels)
    _randomise(model)
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return model.eval()


@pytest.fixture(scope="module")
def folders(task: TaskData, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Any]]:
    root = tmp_path_factory.mktemp("hf")
    backend = train_wordpiece(task.train_texts, vocab_size=200).backend
    return {f: (root / f, _save(f, root / f, backend)) for f in ("bert", "roberta", "distilbert", "bare")}


def _padded_batch(task: TaskData, teacher_tok: Any) -> tuple[torch.Tensor, torch.Tensor]:
    ids, mask = teacher_tok.encode(list(task.train_texts[:4]), task.max_len)
    assert (mask == 0).any() and (mask == 1).any()  # a real padded batch
    return ids, mask


@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert"])
def test_converted_model_gives_the_hf_logits_and_hidden_states(family: str, task: TaskData,
                                                               folders: dict[str, tuple[Path, Any]]) -> None:
    folder, hf = folders[family]
    enc = load_hf_encoder(folder, 2)
    assert enc.head_fits and not enc.model.training
    assert enc.shape.model_type == family and enc.shape.n_layers == LAYERS and enc.shape.d_model == HIDDEN
    assert enc.model.candidate.norm == "post" and enc.model.candidate.pooling == "cls"
    ids, mask = _padded_batch(task, enc.tokenizer)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        ours = enc.model(ids, mask, output_hidden_states=True)
    torch.testing.assert_close(ours.logits, ref.logits, atol=1e-5, rtol=1e-5)
    assert ours.hidden_states is not None and len(ours.hidden_states) == len(ref.hidden_states) == LAYERS + 1
    real = mask.bool()
    for mine, theirs in zip(ours.hidden_states, ref.hidden_states, strict=True):
        torch.testing.assert_close(mine[real], theirs[real], atol=1e-5, rtol=1e-5)


def test_headless_folder_keeps_its_encoder_and_pooler_with_a_fresh_head(task: TaskData,
                                                                      folders: dict[str, tuple[Path, Any]]) -> None:
    folder, hf = folders["bare"]
    enc = load_hf_encoder(folder, 3)
    assert not enc.head_fits and enc.shape.num_labels is None and enc.model.head.out_features == 3
    assert enc.model.pooler is not None
    torch.testing.assert_close(enc.model.pooler.weight, hf.pooler.dense.weight)
    ids, mask = _padded_batch(task, enc.tokenizer)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask)
        ours = enc.model(ids, mask, output_hidden_states=True)
    assert ours.hidden_states is not None
    real = mask.bool()
    torch.testing.assert_close(ours.hidden_states[-1][real], ref.last_hidden_state[real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.tanh(enc.model.pooler(ours.hidden_states[-1][:, 0])), ref.pooler_output,
                               atol=1e-5, rtol=1e-5)
    with pytest.raises(ConfigError, match="no classification head"):
        load_hf_encoder(folder, None)
    with pytest.raises(ConfigError, match="no classification head") as ei:
        load_hf_teacher(folder, 2)
    assert ei.value.field == "teacher" and "fine_tune" in str(ei.value)
    teacher = load_hf_teacher(folder, 2, fine_tune=True)
    assert not teacher.head_fits and teacher.shape == enc.shape and teacher.model.head.out_features == 2


def test_a_head_with_another_label_count(folders: dict[str, tuple[Path, Any]]) -> None:
    folder, hf = folders["distilbert"]
    with pytest.raises(ConfigError, match="teacher has 2 labels but the task has 3") as ei:
        load_hf_teacher(folder, 3)
    assert ei.value.field == "teacher"
    tuned = load_hf_teacher(folder, 3, fine_tune=True)
    assert not tuned.head_fits and tuned.model.head.out_features == 3 and tuned.kind == "hf"
    # DistilBERT's pre-classifier is a trained transform: kept as the pooler even when the head is not
    torch.testing.assert_close(tuned.model.pooler.weight, hf.pre_classifier.weight)
    fits = load_hf_teacher(folder, 2)
    assert fits.head_fits and (fits.n_layers, fits.d_model, fits.n_heads) == (LAYERS, HIDDEN, 4)
    torch.testing.assert_close(fits.model.head.weight, hf.classifier.weight)


def test_teacher_shape_from_config() -> None:
    cfg = transformers.RobertaConfig(vocab_size=100, hidden_size=48, num_hidden_layers=3, num_attention_heads=6,
                                     intermediate_size=64, max_position_embeddings=66, pad_token_id=1,
                                     layer_norm_eps=1e-5, architectures=["RobertaForSequenceClassification"],
                                     num_labels=3).to_dict()
    shape = TeacherShape.from_config(cfg)
    assert (shape.max_positions, shape.position_offset, shape.num_labels, shape.head_dim) == (64, 2, 3, 8)
    assert shape.layout() == {"norm": "post", "layer_norm_eps": 1e-5, "pooler": "tanh", "pooling": "cls",
                              "head_dim": 8}
    cand = shape.candidate()
    assert (cand.n_layers, cand.d_model, cand.n_heads, cand.d_ffn, cand.max_len) == (3, 48, 6, 64, 64)
    assert TeacherShape(**shape.to_json()) == shape
    bare = TeacherShape.from_config({**cfg, "architectures": ["RobertaModel"]})
    assert bare.num_labels is None
    with pytest.raises(ConfigError, match="only exact 'gelu'"):
        TeacherShape.from_config({**cfg, "hidden_act": "gelu_new"})
    with pytest.raises(ConfigError, match="bert, roberta, distilbert"):
        TeacherShape.from_config({**cfg, "model_type": "gpt2"})
    with pytest.raises(ConfigError, match="num_hidden_layers"):
        TeacherShape.from_config({k: v for k, v in cfg.items() if k != "num_hidden_layers"})


def test_a_tokenizer_that_misses_the_task_words_warns(task: TaskData, tmp_path: Path,
                                                      folders: dict[str, tuple[Path, Any]],
                                                      caplog: pytest.LogCaptureFixture) -> None:
    good = load_teacher(str(folders["bert"][0]), task)
    assert good is not None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the task's own word pieces: no warning
        adapted = good.adapt_task(task)
    assert unknown_token_share(adapted) < 0.2
    _save("bert", tmp_path / "unk", word_level(["zebra", "quartz"]).backend)
    bad = load_teacher(str(tmp_path / "unk"), task)
    assert bad is not None
    with pytest.warns(UserWarning, match=r"maps \d+% of .* unknown token") as record:
        adapted = bad.adapt_task(task)
    share = unknown_token_share(adapted)
    assert share > 0.9 and f"{share:.0%}" in str(record[0].message) and "Fix:" in str(record[0].message)
    assert any("unknown token" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")


# --- bad teachers ----------------------------------------------------------------------------------------
def _bad_teachers(root: Path, bert: Path) -> dict[str, tuple[Path, str]]:
    """name -> (folder, what the one error line must say)."""
    (root / "not-a-model").mkdir()
    (root / "not-a-model" / "notes.txt").write_text("hello")
    shutil.copytree(bert, root / "no-type")
    (root / "no-type" / "config.json").write_text('{"hidden_size": 32}')
    shutil.copytree(bert, root / "unknown-type")
    (root / "unknown-type" / "config.json").write_text('{"model_type": "nosuchmodel", "hidden_size": 32}')
    shutil.copytree(bert, root / "truncated")
    weights = root / "truncated" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return {"missing path": (root / "does-not-exist", "not found"),
            "no config.json": (root / "not-a-model", "config.json"),
            "no model_type": (root / "no-type", "model_type"),
            "unknown model type": (root / "unknown-type", "nosuchmodel"),
            "truncated safetensors": (root / "truncated", "model.safetensors is corrupted or truncated")}


BAD = ["missing path", "no config.json", "no model_type", "unknown model type", "truncated safetensors"]


@pytest.fixture(scope="module")
def bad_teachers(folders: dict[str, tuple[Path, Any]],
                 tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    return _bad_teachers(tmp_path_factory.mktemp("bad"), folders["bert"][0])


@pytest.mark.parametrize("case", BAD)
def test_bad_teacher_is_a_one_line_config_error(case: str, bad_teachers: dict[str, tuple[Path, str]],
                                                task: TaskData) -> None:
    folder, needle = bad_teachers[case]
    for call in (lambda: check_hf_folder(folder), lambda: load_teacher(str(folder), task)):
        with pytest.raises(ConfigError) as ei:
            call()
        assert ei.value.field == "teacher" and needle in str(ei.value) and "Fix:" in str(ei.value)
        assert len(str(ei.value).splitlines()) == 1


@pytest.mark.parametrize("case", BAD)
def test_bad_teacher_on_the_cli_exits_2_with_one_line_and_writes_nothing(
        case: str, bad_teachers: dict[str, tuple[Path, str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from nas.cli import main

    folder, needle = bad_teachers[case]
    candidate = folder.parent / "candidate.yaml"
    candidate.write_text("n_layers: 1\nd_model: 16\nn_heads: 2\nd_ffn: 16\nmax_len: 64\n")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("NAS_CACHE_DIR", str(work / "cache"))
    monkeypatch.delenv("NAS_DB", raising=False)
    with pytest.raises(SystemExit) as ei:
        main(["trial", str(candidate), "--task", "builtin:sentiment", "--teacher", str(folder)])
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert ei.value.code == 2 and out == ""
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--teacher" in lines[0] and needle in lines[0]
    assert list(work.iterdir()) == []  # no nas.db, no cache folder, nothing
