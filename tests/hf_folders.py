"""Tiny random Hugging Face folders (BERT, RoBERTa, DistilBERT, a head-less BERT) built in code for tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import transformers

HIDDEN, LAYERS, FFN, POSITIONS = 32, 2, 48, 40


def hf_tokenizer(backend: Any) -> Any:
    return transformers.BertTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]",
                                          cls_token="[CLS]", sep_token="[SEP]", mask_token="[UNK]")


def _randomise(model: torch.nn.Module) -> None:
    """Weights far from the defaults (LayerNorms included), so a wrong mapping cannot pass by accident."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)


def hf_model(family: str, vocab: int, num_labels: int = 2) -> Any:
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


def save_tiny_hf(family: str, folder: Path, backend: Any, num_labels: int = 2) -> Any:
    tok = hf_tokenizer(backend)
    model = hf_model(family, len(tok), num_labels)
    _randomise(model)
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return model.eval()


def write_small_task(folder: Path) -> Path:
    """A small file task (train/dev/test TSVs, 48/16/16 rows) drawn from builtin:sentiment: quick to load."""
    from evaluators.tasks import load_task

    src = load_task("builtin:sentiment", n_train=48, n_dev=16, n_test=16, max_len=16)
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "dev", "test"):
        rows = zip(getattr(src, f"{split}_texts"), getattr(src, f"{split}_labels"), strict=True)
        (folder / f"{split}.tsv").write_text("text\tlabel\n" + "".join(
            f"{t}\t{src.label_names[y]}\n" for t, y in rows))
    return folder
