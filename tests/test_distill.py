"""Distillation losses and teachers (self-trained and a tiny local Hugging Face BERT)."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from evaluators.distill import DistillLoss, kd_loss, layer_map
from evaluators.tasks import TaskData, load_task
from evaluators.teacher import Teacher, load_teacher
from evaluators.tokenize import train_wordpiece
from evaluators.train import build_for_task, train
from nas.config import AttentionConfig, Candidate, DistillConfig, TrainConfig
from nas.errors import ConfigError

STUDENT = Candidate(n_layers=1, d_model=32, n_heads=2, d_ffn=64, max_len=32, dropout=0.0)
TEACHER = Candidate(n_layers=2, d_model=48, n_heads=4, d_ffn=64, max_len=32, dropout=0.0)


@pytest.fixture(scope="module")
def task() -> TaskData:
    return load_task("builtin:sentiment", n_train=128, n_dev=32, max_len=32)


def _cfg(**kw: Any) -> TrainConfig:
    base: dict[str, Any] = {"steps": 3, "batch_size": 16, "device": "cpu", "eval_batch_size": 32}
    base.update(kw)
    return TrainConfig(**base)


def test_layer_map() -> None:
    assert layer_map(2, 4) == [2, 4]
    assert layer_map(3, 4) == [1, 3, 4]
    assert layer_map(1, 6) == [6]
    assert layer_map(4, 2) == [1, 1, 2, 2]
    assert layer_map(2, 2) == [1, 2]


def test_kd_loss_zero_for_equal_logits_and_scaled_by_t2() -> None:
    z = torch.randn(4, 3)
    assert kd_loss(z, z, 2.0).abs().item() < 1e-6
    t = torch.randn(4, 3)
    assert kd_loss(z, t, 1.0).item() > 0


@pytest.mark.parametrize("kind", ["logit", "hidden", "attention"])
def test_each_loss_is_finite_and_reaches_student_and_projection(task: TaskData, kind: str) -> None:
    student = build_for_task(STUDENT, task, seed=0)
    teacher = build_for_task(TEACHER, task, seed=1).eval()
    loss_fn = DistillLoss(DistillConfig(kind=kind), 1, 32, 2, 48)
    ids, mask, y = task.train_ids[:8], task.train_mask[:8], task.train_y[:8]
    need_h, need_a = kind in ("hidden", "attention"), kind == "attention"
    with torch.no_grad():
        t_out = teacher(ids, attention_mask=mask, output_hidden_states=need_h, output_attentions=need_a)
    s_out = student(ids, attention_mask=mask, output_hidden_states=need_h, output_attentions=need_a)
    terms = loss_fn(s_out, t_out, y, mask)
    assert math.isfinite(terms.total.item()) and terms.kd > 0
    terms.total.backward()
    assert student.tok_emb.weight.grad is not None and student.tok_emb.weight.grad.abs().sum() > 0
    if kind == "logit":
        assert len(loss_fn.proj) == 0 and terms.hidden == 0.0
    else:
        assert terms.hidden > 0
        assert loss_fn.proj[0].weight.grad is not None and loss_fn.proj[0].weight.grad.abs().sum() > 0
    if kind == "attention":
        assert terms.attention > 0  # 2 vs 4 heads: compared after head averaging
        attn_grad = student.blocks[0].attn.q_proj.weight.grad
        assert attn_grad is not None and attn_grad.abs().sum() > 0


def test_attention_term_skips_layers_without_maps(task: TaskData, caplog: pytest.LogCaptureFixture) -> None:
    student = build_for_task(STUDENT.model_copy(update={"attention": AttentionConfig(kind="linear")}), task)
    teacher = build_for_task(TEACHER, task, seed=1).eval()
    loss_fn = DistillLoss(DistillConfig(kind="attention"), 1, 32, 2, 48)
    ids, mask, y = task.train_ids[:4], task.train_mask[:4], task.train_y[:4]
    t_out = teacher(ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
    s_out = student(ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
    with caplog.at_level(logging.WARNING):
        terms = loss_fn(s_out, t_out, y, mask)
    assert terms.attention == 0.0 and math.isfinite(terms.total.item())
    assert "attention distillation skipped" in caplog.text


def test_distill_without_teacher_is_a_config_error(task: TaskData) -> None:
    with pytest.raises(ConfigError, match="needs a teacher"):
        train(build_for_task(STUDENT, task), task, _cfg(), distill=DistillConfig(kind="logit"))


def test_self_trained_teacher_is_cached_and_distils(task: TaskData, tmp_path: Path) -> None:
    t1 = load_teacher("auto", task, steps=3, candidate=TEACHER, root=tmp_path, device="cpu")
    assert isinstance(t1, Teacher) and t1.kind == "auto"
    folders = list((tmp_path / "teachers").iterdir())
    assert len(folders) == 1
    assert {p.name for p in folders[0].iterdir()} == {"model.safetensors", "candidate.json", "meta.json"}
    t2 = load_teacher("auto", task, steps=3, candidate=TEACHER, root=tmp_path, device="cpu")
    assert t2 is not None and t2.name == t1.name and t2.dev_accuracy == t1.dev_accuracy
    ids, mask = task.dev_ids[:4], task.dev_mask[:4]
    assert torch.allclose(t1(ids, mask).logits, t2(ids, mask).logits)
    assert load_teacher(None, task) is None and load_teacher("none", task) is None

    student = build_for_task(STUDENT, task)
    res = train(student, task, _cfg(), teacher=t2, distill=DistillConfig(kind="attention"))
    assert res.steps == 3 and math.isfinite(res.final_loss)
    assert res.teacher == t2.name and res.distill_kind == "attention"
    assert res.to_summary().teacher == t2.name


def _tiny_hf_teacher(task: TaskData, folder: Path) -> None:
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    tok = train_wordpiece(task.train_texts, vocab_size=200)
    hf_tok = BertTokenizerFast(tokenizer_object=tok.backend, unk_token="[UNK]", pad_token="[PAD]",
                               cls_token="[CLS]", sep_token="[SEP]", mask_token="[UNK]")
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(hf_tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64, num_labels=task.num_labels,
                     pad_token_id=0)
    BertForSequenceClassification(cfg).save_pretrained(str(folder))
    hf_tok.save_pretrained(str(folder))


def test_hf_teacher_loads_and_distils_a_student(task: TaskData, tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    folder = tmp_path / "bert"
    _tiny_hf_teacher(task, folder)
    teacher = load_teacher(str(folder), task)
    assert teacher is not None and teacher.kind == "hf"
    assert (teacher.n_layers, teacher.d_model, teacher.n_heads) == (2, 32, 2)
    with pytest.raises(ConfigError, match="different tokenizers"):
        train(build_for_task(STUDENT, task), task, _cfg(), teacher=teacher)

    student_task = teacher.adapt_task(task)
    assert student_task.tokenizer.fingerprint == teacher.tokenizer.fingerprint
    assert student_task.train_texts == task.train_texts
    # the held-out test split travels too, re-encoded with the teacher's tokenizer
    assert student_task.test_texts == task.test_texts and student_task.n_test == task.n_test > 0
    assert torch.equal(student_task.test_ids, teacher.tokenizer.encode(list(task.test_texts), task.max_len)[0])
    out = teacher(student_task.train_ids[:2], student_task.train_mask[:2], output_hidden_states=True,
                  output_attentions=True)
    assert out.logits.shape == (2, 2) and len(out.hidden_states) == 3 and len(out.attentions) == 2
    assert out.attentions[0].shape == (2, 2, 32, 32)

    student = build_for_task(STUDENT, student_task)
    res = train(student, student_task, _cfg(), teacher=teacher, distill=DistillConfig(kind="attention"))
    assert res.steps == 3 and math.isfinite(res.final_loss) and res.distill_kind == "attention"


def test_hf_teacher_label_mismatch_and_missing_folder(task: TaskData, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="teacher folder not found"):
        load_teacher(str(tmp_path / "nope"), task)
