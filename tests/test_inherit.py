"""Inheritance: a student sliced out of its teacher (exact copy, layers, heads, neurons, width, layout)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from evaluators.distill import layer_map
from evaluators.hf_teacher import load_hf_encoder
from evaluators.inherit import embedding_projection, inherit_
from evaluators.tokenize import word_level
from nas.compress import prune_
from nas.config import AttentionConfig, Candidate, PruneConfig
from nas.errors import ConfigError
from nas.models import EncoderClassifier, build
from tests.hf_folders import save_tiny_hf

VOCAB, LABELS = 60, 3
TEACHER = Candidate(n_layers=4, d_model=32, n_heads=4, head_dim=8, d_ffn=48, dropout=0.0, max_len=16,
                    norm="post", layer_norm_eps=1e-12, pooler="tanh", pooling="cls")


def _student(teacher: Candidate, **changes: Any) -> Candidate:
    return Candidate.model_validate({**teacher.model_dump(), "init": "teacher", **changes})


def _random_teacher(seed: int = 0) -> EncoderClassifier:
    torch.manual_seed(seed)
    model = build(TEACHER, vocab_size=VOCAB, num_labels=LABELS).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # LayerNorms and biases away from 1 and 0
    return model


def _batch(vocab: int = VOCAB) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(4, vocab, (3, 12), generator=g)
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[2, 5:] = 0
    ids[2, 5:] = 0
    return ids, mask


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, EncoderClassifier]:
    root = tmp_path_factory.mktemp("hf")
    backend = word_level([f"w{i}" for i in range(40)]).backend
    out = {}
    for family in ("bert", "roberta", "distilbert"):
        save_tiny_hf(family, root / family, backend)
        out[family] = load_hf_encoder(root / family, 2).model
    return out


@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert"])
def test_a_student_of_the_teachers_shape_is_an_exact_copy(family: str,
                                                         converted: dict[str, EncoderClassifier]) -> None:
    teacher = converted[family]
    torch.manual_seed(1)
    student = build(_student(teacher.candidate), vocab_size=teacher.vocab_size, num_labels=2).eval()
    ids, mask = _batch(teacher.vocab_size)
    assert not torch.allclose(student(ids, mask).logits, teacher(ids, mask).logits)
    report = inherit_(student, teacher)
    assert report.head_copied and not report.projected and report.fresh == ()
    assert report.teacher_layers == (0, 1)
    for name, value in teacher.state_dict().items():
        assert torch.equal(student.state_dict()[name], value), name
    with torch.no_grad():
        torch.testing.assert_close(student(ids, mask).logits, teacher(ids, mask).logits, atol=0.0, rtol=0.0)


def test_a_shallower_student_copies_the_mapped_layers() -> None:
    teacher = _random_teacher()
    student = build(_student(TEACHER, n_layers=2), vocab_size=VOCAB, num_labels=LABELS)
    report = inherit_(student, teacher)
    assert report.teacher_layers == tuple(j - 1 for j in layer_map(2, 4)) == (1, 3)
    for i, j in enumerate(report.teacher_layers):
        s_block, t_block = student.blocks[i], teacher.blocks[j]
        for name, value in t_block.state_dict().items():
            assert torch.equal(s_block.state_dict()[name], value), (i, name)
    assert torch.equal(student.head.weight, teacher.head.weight)


def _boost(teacher: EncoderClassifier, heads: list[int], neurons: list[int]) -> None:
    """Make ``heads`` and ``neurons`` of every block the most important by scaling up their weights."""
    with torch.no_grad():
        for block in teacher.blocks:
            for h in heads:
                rows = slice(h * 8, (h + 1) * 8)
                for lin in (block.attn.q_proj, block.attn.k_proj, block.attn.v_proj):
                    lin.weight[rows] *= 5.0
                block.attn.out_proj.weight[:, rows] *= 5.0
            block.ffn.fc1.weight[neurons] *= 5.0
            block.ffn.fc2.weight[:, neurons] *= 5.0


def test_fewer_heads_and_neurons_keep_the_most_important() -> None:
    teacher = _random_teacher()
    keep_heads, keep_neurons = [1, 3], [2, 7, 11, 20, 30, 33, 40, 47]
    _boost(teacher, keep_heads, keep_neurons)
    cand = _student(TEACHER, n_heads=2, d_ffn=8)
    assert cand.attention_width == 16
    student = build(cand, vocab_size=VOCAB, num_labels=LABELS)
    report = inherit_(student, teacher)
    assert report.heads == ((1, 3),) * 4 and report.neurons == (8,) * 4
    rows = torch.cat([torch.arange(h * 8, (h + 1) * 8) for h in keep_heads])
    for s_block, t_block in zip(student.blocks, teacher.blocks, strict=True):
        assert torch.equal(s_block.attn.q_proj.weight, t_block.attn.q_proj.weight[rows])
        assert torch.equal(s_block.attn.v_proj.bias, t_block.attn.v_proj.bias[rows])
        assert torch.equal(s_block.attn.out_proj.weight, t_block.attn.out_proj.weight[:, rows])
        assert torch.equal(s_block.attn.out_proj.bias, t_block.attn.out_proj.bias)
        assert torch.equal(s_block.ffn.fc1.weight, t_block.ffn.fc1.weight[keep_neurons])
        assert torch.equal(s_block.ffn.fc2.weight, t_block.ffn.fc2.weight[:, keep_neurons])
        assert torch.equal(s_block.ln_2.weight, t_block.ln_2.weight)
    ids, mask = _batch()
    assert torch.isfinite(student(ids, mask).logits).all()


def test_a_narrower_student_goes_through_the_embedding_projection() -> None:
    teacher = _random_teacher()
    cand = _student(TEACHER, d_model=16, n_heads=2, d_ffn=24, n_layers=2)
    student = build(cand, vocab_size=VOCAB, num_labels=LABELS)
    report = inherit_(student, teacher)
    p = embedding_projection(teacher, 16)
    assert p is embedding_projection(teacher, 16)  # computed once per teacher and width
    assert report.projected and p.shape == (32, 16)
    torch.testing.assert_close(p.T @ p, torch.eye(16), atol=1e-5, rtol=0)
    e = teacher.tok_emb.weight.detach()
    s = torch.linalg.svdvals(e)
    torch.testing.assert_close((e @ p).pow(2).sum(), s[:16].pow(2).sum(), rtol=1e-4, atol=1e-4)  # top directions
    torch.testing.assert_close(student.tok_emb.weight, e @ p)
    torch.testing.assert_close(student.emb_ln.bias, p.T @ teacher.emb_ln.bias)
    block, src = student.blocks[0], teacher.blocks[report.teacher_layers[0]]
    rows = torch.cat([torch.arange(h * 8, (h + 1) * 8) for h in report.heads[0]])
    torch.testing.assert_close(block.attn.k_proj.weight, (src.attn.k_proj.weight @ p)[rows])
    torch.testing.assert_close(block.attn.out_proj.bias, p.T @ src.attn.out_proj.bias)
    torch.testing.assert_close(student.head.weight, teacher.head.weight @ p)
    assert student.pooler is not None and student.pooler.weight.shape == (16, 16)
    ids, mask = _batch()
    assert torch.isfinite(student(ids, mask).logits).all()


def test_other_attention_kinds_and_label_counts_inherit_what_exists() -> None:
    teacher = _random_teacher()
    cand = _student(TEACHER, attention=AttentionConfig(kind="lowrank", k=4), n_layers=1)
    student = build(cand, vocab_size=VOCAB - 10, num_labels=2)
    report = inherit_(student, teacher)
    assert not report.head_copied and report.vocab_rows == VOCAB - 10
    assert set(report.fresh) == {"blocks.0.attn.E", "blocks.0.attn.F", "head.weight", "head.bias"}
    assert torch.equal(student.tok_emb.weight, teacher.tok_emb.weight[: VOCAB - 10])


@pytest.mark.parametrize("changes, needle", [
    ({"init": "scratch"}, "init: teacher"),
    ({"norm": "pre"}, "norm"),
    ({"layer_norm_eps": 1e-5}, "layer_norm_eps"),
    ({"pooler": "relu"}, "pooler"),
    ({"pooler": "none", "pooling": "mean"}, "pooler"),
    ({"head_dim": 4}, "head_dim"),
    ({"n_heads": 8}, "n_heads"),
    ({"d_model": 64}, "d_model"),
    ({"d_ffn": 64}, "d_ffn"),
])
def test_a_student_that_cannot_inherit_is_a_config_error(changes: dict[str, Any], needle: str) -> None:
    teacher = _random_teacher()
    student = build(_student(TEACHER, **changes), vocab_size=VOCAB, num_labels=LABELS)
    with pytest.raises(ConfigError, match=needle) as ei:
        inherit_(student, teacher)
    assert ei.value.fix


def test_inheritance_uses_pruning_importance_one_definition() -> None:
    """A student with fewer heads keeps what structured head pruning would keep (the same score)."""
    teacher = _random_teacher(seed=5)
    pruned = _random_teacher(seed=5)
    prune_(pruned, PruneConfig(kind="heads", amount=0.5))
    student = build(_student(TEACHER, n_heads=2), vocab_size=VOCAB, num_labels=LABELS)
    inherit_(student, teacher)
    for s_block, p_block in zip(student.blocks, pruned.blocks, strict=True):
        assert torch.equal(s_block.attn.q_proj.weight, p_block.attn.q_proj.weight)
