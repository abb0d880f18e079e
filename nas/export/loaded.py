"""The Hugging Face folder (``hf/``) and its loader, :func:`load`.

Layout of ``hf/``::

    config.json         the candidate, labels, vocabulary size, sequence length; plus, by form (below),
                        a BERT / DistilBERT config or model_type "energy-nas" with auto_map
    model.safetensors   the weights, masks baked in (below)
    tokenizer.json      the trial's tokenizer, with tokenizer_config.json for transformers' AutoTokenizer
                        (plus nas_tokenizer.json; or a teacher's HF tokenizer files)

Both forms load with ``transformers.AutoModelForSequenceClassification`` (:mod:`nas.export.hf_forms`): a
candidate that is a BERT or DistilBERT is written as one (fp32, the family's key names; quantized weights
also packed in ``nas_packed.safetensors``); any other ships ``modeling_energy_nas.py`` and loads with
``trust_remote_code=True``, its quantized weights packed as integer codes with their scales
(nas.compress.pack: 1, 2, 4 and 8 bits, ternary in 2; bf16 as bfloat16), every other tensor fp32.

:func:`load` rebuilds the model from the candidate alone (build, the candidate's compression for the
pruned shapes, materialize), unpacks the packed weights to the exact values the model computed with, and
loads the weights strictly, so a folder that does not match its config fails loudly instead of
predicting nonsense.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from tokenizers import Tokenizer

from evaluators.metrics import trim_batch
from evaluators.tokenize import SPECIAL_TOKENS, TextTokenizer, load_tokenizer
from nas.compress import apply_candidate_compression, materialize_
from nas.compress.pack import PackPlan
from nas.config import Candidate, validate
from nas.errors import ExportError, NASError
from nas.models import build, load_unique_state

from .hf_forms import read_state, write_model
from .hf_standard import STANDARD_FAMILIES, standard_family

if TYPE_CHECKING:
    from torch import nn

    from nas.models import EncoderClassifier

__all__ = ["MODEL_TYPE", "HF_FORMAT_VERSION", "LoadedModel", "load", "rebuild"]

log = logging.getLogger(__name__)

#: ``model_type`` written to ``config.json``.
MODEL_TYPE = "energy-nas"
#: Version of the ``hf/`` folder layout (3: loadable by transformers, BERT/DistilBERT or custom code; 2: quantized
#: weights packed; folders of versions 1 and 2 load as before).
HF_FORMAT_VERSION = 3
_BATCH = 128
_TOKENIZER_CONFIG = "tokenizer_config.json"
_NAS_TOKENIZER = "nas_tokenizer.json"


def rebuild(candidate: Candidate, vocab_size: int, num_labels: int, state: dict[str, Any] | None = None) -> nn.Module:
    """Build ``candidate`` in its served form (pruned shapes, inference layers, plain weights); load ``state`` strictly."""
    model = build(candidate, vocab_size=vocab_size, num_labels=num_labels)
    if not (candidate.sparsity.is_noop and candidate.quant.is_noop):
        apply_candidate_compression(model)  # gives the pruned shapes; materialize_ drops the grids/masks
        materialize_(model)
    model.keep_inference_layers_()
    if state is not None:
        load_unique_state(model, state)
    return model.eval()


class LoadedModel:
    """A classifier ready to use: model, tokenizer and label names.

    Args:
        model: An :class:`~nas.models.EncoderClassifier` with plain weights, in eval mode.
        tokenizer: The tokenizer the model was trained with.
        labels: Class names in id order.
        max_len: Tokens per encoded row (``[CLS]``/``[SEP]`` included).
        candidate: The candidate the model was built from.
        meta: The rest of ``config.json`` (task, study, trial).
        pack: How :meth:`save` packs the quantized weights (:func:`nas.compress.pack.pack_plan` of the
            model before its grids were baked in); none: every weight is written fp32.
    """

    def __init__(self, model: nn.Module, tokenizer: TextTokenizer, labels: Sequence[str], max_len: int,
                 candidate: Candidate, meta: dict[str, Any] | None = None, pack: PackPlan | None = None) -> None:
        self.model = model.eval()
        self.pack = pack or PackPlan()
        self.tokenizer = tokenizer
        self.labels = tuple(labels)
        self.max_len = int(max_len)
        self.candidate = candidate
        self.meta = dict(meta or {})

    def __repr__(self) -> str:
        c = self.candidate
        return (f"LoadedModel({c.n_layers}x d{c.d_model} {c.attention.kind}, labels={list(self.labels)}, "
                f"max_len={self.max_len})")

    def encode(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Texts to ``(input_ids, attention_mask)``, each ``(len(texts), max_len)`` int64."""
        if isinstance(texts, str):
            raise ExportError("predict() takes a list of texts, not one string", field="texts",
                              fix='wrap it in a list: model.predict(["some text"])')
        return self.tokenizer.encode(list(texts), self.max_len)

    def logits_from_ids(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Logits ``(B, num_labels)`` of already encoded rows (used by the parity check)."""
        with torch.inference_mode():
            out = self.model(torch.from_numpy(np.asarray(input_ids, dtype=np.int64)),
                             attention_mask=torch.from_numpy(np.asarray(attention_mask, dtype=np.int64)))
        return np.asarray(out.logits.float().numpy())

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        """Logits ``(len(texts), num_labels)``; padding columns shared by a batch are trimmed first."""
        ids, mask = self.encode(texts)
        parts = []
        for i in range(0, ids.shape[0], _BATCH):
            b_ids, b_mask = trim_batch(ids[i : i + _BATCH], mask[i : i + _BATCH])
            parts.append(self.logits_from_ids(b_ids.numpy(), b_mask.numpy()))
        return np.concatenate(parts) if parts else np.zeros((0, len(self.labels)), dtype=np.float32)

    def predict(self, texts: Sequence[str]) -> list[dict[str, Any]]:
        """Classify texts.

        Returns:
            One ``{"label": str, "score": float, "probs": {label: probability}}`` per text.
        """
        z = self.logits(texts).astype(np.float64)
        z = z - z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        out = []
        for row in p:
            k = int(row.argmax())
            out.append({"label": self.labels[k], "score": float(row[k]),
                        "probs": {name: float(v) for name, v in zip(self.labels, row, strict=True)}})
        return out

    def save(self, folder: Path) -> Path:
        """Write the ``hf/`` layout into ``folder`` (created if needed) and return it."""
        folder.mkdir(parents=True, exist_ok=True)
        config = {
            "model_type": MODEL_TYPE,
            "nas_format_version": HF_FORMAT_VERSION,
            "candidate": self.candidate.model_dump(mode="json"),
            "num_labels": len(self.labels),
            "id2label": {str(i): name for i, name in enumerate(self.labels)},
            "label2id": {name: i for i, name in enumerate(self.labels)},
            "vocab_size": int(getattr(self.model, "vocab_size", self.tokenizer.vocab_size)),
            "max_len": self.max_len,
            "pad_token_id": self.tokenizer.pad_id,
            "tokenizer_kind": self.tokenizer.kind,
            **{k: v for k, v in self.meta.items() if k not in ("candidate",)},
        }
        config = write_model(folder, cast("EncoderClassifier", self.model), self.pack, config)
        config["weights"] = _weights_note(config["model_type"], bool(self.pack))
        (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        self.tokenizer.save(folder)
        # transformers' AutoTokenizer reads our tokenizer.json through this file; a teacher's has its own, whose
        # model_max_length (e.g. 512) is set to what the model takes, so truncation=True truncates to fit
        path = folder / _TOKENIZER_CONFIG
        tok_config = json.loads(path.read_text(encoding="utf-8")) if self.tokenizer.is_hf else _tokenizer_config()
        path.write_text(json.dumps({**tok_config, "model_max_length": self.max_len}, indent=2) + "\n")
        return folder


def _weights_note(model_type: str, packed: bool) -> str:
    """config.json's ``weights``: how the weights are stored, in words."""
    if model_type in STANDARD_FAMILIES:
        return (f"fp32 in the {model_type} layout: quantized weights at their dequantized values, pruning masks "
                "baked in, removed heads as zero heads" + ("; nas_packed.safetensors holds the quantized weights "
                                                            "packed (nas.compress.pack)" if packed else ""))
    return ("quantized weights packed as integer codes with fp32 scales (nas.compress.pack); "
            "pruning masks baked in" if packed else "plain fp32; pruning masks baked in")


def _tokenizer_config() -> dict[str, Any]:
    """``tokenizer_config.json`` for our own vocabularies: the fast tokenizer of ``tokenizer.json`` as it is."""
    pad, unk, cls, sep = SPECIAL_TOKENS
    return {"tokenizer_class": "PreTrainedTokenizerFast", "pad_token": pad, "unk_token": unk, "cls_token": cls,
            "sep_token": sep, "padding_side": "right", "truncation_side": "right"}


def _load_tokenizer(folder: Path) -> TextTokenizer:
    """The folder's tokenizer; our own vocabulary is read from ``tokenizer.json`` itself, not through transformers."""
    meta = folder / _NAS_TOKENIZER
    if meta.is_file():
        kind = str(json.loads(meta.read_text(encoding="utf-8")).get("kind", "wordpiece"))
        return TextTokenizer(Tokenizer.from_file(str(folder / "tokenizer.json")), kind)
    return load_tokenizer(folder)


def _resolve(path: str | Path) -> Path:
    p = Path(path).expanduser()
    for cand in (p, p / "hf"):
        if (cand / "config.json").is_file():
            return cand
    if not p.exists():
        raise ExportError(f"{p}: no such folder", field="path", fix="pass a folder written by `nas export`")
    raise ExportError(f"{p}: no config.json here or in {p / 'hf'}", field="path",
                      fix="pass a folder written by `nas export --format hf` (or all)")


def _read_config(folder: Path) -> dict[str, Any]:
    """``config.json`` checked key by key: a tampered file fails with one line naming the key."""
    path = folder / "config.json"
    fix = "re-export the model with `nas export` (or restore the original config.json)"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ExportError(f"{path}: unreadable ({' '.join(str(e).split())})", field="config.json", fix=fix) from e
    if not isinstance(config, dict):
        raise ExportError(f"{path} holds a JSON {type(config).__name__}, not an object", field="config.json",
                          fix=fix)
    ours = config.get("model_type") == MODEL_TYPE or config.get("model_type") in STANDARD_FAMILIES and "candidate" in config
    if not ours:  # a BERT written by energy-nas carries its candidate; any other BERT is not an export
        raise ExportError(f"{path} is not an energy-nas export", field="model_type",
                          value=config.get("model_type"), fix="pass a folder written by `nas export`")
    missing = [k for k in ("candidate", "num_labels", "id2label", "vocab_size", "max_len") if k not in config]
    if missing:
        raise ExportError(f"{path} lacks {', '.join(missing)}", field="config.json", fix=fix)
    version = config.get("nas_format_version", 0)
    for key in ("num_labels", "vocab_size", "max_len", "nas_format_version"):
        value = config.get(key, 0)
        low = 0 if key == "nas_format_version" else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ExportError(f"{path}: {key} must be an integer >= {low}", field=key, value=value, fix=fix)
    if version > HF_FORMAT_VERSION:
        raise ExportError(f"{folder} uses export layout {version}, newer than this build's {HF_FORMAT_VERSION}",
                          field="nas_format_version", fix="upgrade energy-nas")
    id2label = config["id2label"]
    if not isinstance(id2label, dict) or any(str(i) not in id2label for i in range(config["num_labels"])) \
            or config["num_labels"] < 2:
        raise ExportError(f"{path}: id2label does not name each of the num_labels={config['num_labels']} classes "
                          "(at least 2)", field="id2label", fix=fix)
    return config


def load(path: str | Path) -> LoadedModel:
    """Load an exported model: the export folder ``DIR`` or its ``DIR/hf``.

    Raises:
        ExportError: The folder is not an energy-nas export, its ``config.json`` is damaged (one line
            naming the key), or its weights or tokenizer do not match it.
        ConfigError: The candidate in ``config.json`` is invalid.
    """
    folder = _resolve(path)
    config = _read_config(folder)
    candidate = validate(Candidate, config["candidate"], source=f"{folder / 'config.json'}: candidate")
    labels = [str(config["id2label"][str(i)]) for i in range(config["num_labels"])]
    written_as = standard_family(candidate)
    if config["model_type"] in STANDARD_FAMILIES and config["model_type"] != written_as:
        raise ExportError(f"{folder / 'config.json'} says the model is a {config['model_type']}, but its candidate is "
                          f"exported as {written_as or MODEL_TYPE}", field="model_type", value=config["model_type"],
                          fix="re-export the model with `nas export` (or restore the original config.json)")
    try:
        model = rebuild(candidate, config["vocab_size"], len(labels))
        state, plan = read_state(folder, config["model_type"], cast("EncoderClassifier", model))
        load_unique_state(model, state)
    except NASError as e:
        if not isinstance(e, ExportError) and not str(e).startswith("weights"):
            raise
        if isinstance(e, ExportError):
            raise
        raise ExportError(f"{folder}: the weights do not fit the candidate in config.json ({str(e).splitlines()[0]})",
                          field="model.safetensors", fix="re-export the model") from e
    except (RuntimeError, ValueError) as e:  # ConfigError is a ValueError; a damaged file's ExportError passes
        raise ExportError(f"{folder}: the weights do not fit the candidate in config.json "
                          f"({str(e).splitlines()[0]})", field="model.safetensors", fix="re-export the model") from e
    try:
        tokenizer = _load_tokenizer(folder)
    except NASError:
        raise
    except Exception as e:  # the tokenizers library raises a plain Exception on a damaged file
        raise ExportError(f"{folder}: the tokenizer files are unreadable ({' '.join(str(e).split())})",
                          field="tokenizer.json", fix="re-export the model") from e
    meta: dict[str, Any] = {k: config[k] for k in ("task", "study", "trial") if k in config}
    log.debug("loaded %s from %s", candidate.attention.kind, folder)
    return LoadedModel(model, tokenizer, labels, config["max_len"], candidate, meta, pack=plan)
