"""The shape of a Hugging Face teacher, read from its ``config.json`` alone (layer L0: no torch, no I/O).

:meth:`TeacherShape.from_config` turns the parsed ``config.json`` of a BERT, RoBERTa or DistilBERT folder
(MiniLM is a BERT) into a frozen record; :meth:`TeacherShape.candidate` is the
:class:`~nas.config.Candidate` whose model holds the teacher's weights exactly, and
:meth:`TeacherShape.layout` the layout fields a student must share with the teacher to inherit from it.
Conversion itself (copying weights) is :func:`evaluators.hf_teacher.load_hf_encoder`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from nas.config import Candidate, validate
from nas.errors import ConfigError

__all__ = ["TeacherShape", "SUPPORTED_MODEL_TYPES"]

#: ``model_type`` values that convert, and the pooler activation of each family.
SUPPORTED_MODEL_TYPES: dict[str, str] = {"bert": "tanh", "roberta": "tanh", "distilbert": "relu"}

#: The config.json keys of each family, in TeacherShape's terms.
_KEYS: dict[str, dict[str, str]] = {
    "bert": {"n_layers": "num_hidden_layers", "d_model": "hidden_size", "n_heads": "num_attention_heads",
             "d_ffn": "intermediate_size", "act": "hidden_act", "dropout": "hidden_dropout_prob"},
    "distilbert": {"n_layers": "n_layers", "d_model": "dim", "n_heads": "n_heads", "d_ffn": "hidden_dim",
                   "act": "activation", "dropout": "dropout"},
}
_KEYS["roberta"] = _KEYS["bert"]
_FIX = "pass a BERT, RoBERTa, DistilBERT or MiniLM folder written by save_pretrained"
_CLASSIFIER_SUFFIX = "ForSequenceClassification"


@dataclass(frozen=True)
class TeacherShape:
    """What a Hugging Face teacher looks like, in our terms (pure JSON).

    Attributes:
        model_type: ``bert``, ``roberta`` or ``distilbert`` (the family's name in ``config.json``).
        n_layers: Encoder blocks.
        d_model: Hidden width.
        n_heads: Attention heads per block.
        head_dim: Width of one head (``d_model // n_heads`` in these families).
        d_ffn: Hidden width of the feed-forward block.
        layer_norm_eps: Epsilon of every LayerNorm.
        pooler: ``tanh`` (BERT's pooler, RoBERTa's classification dense) or ``relu`` (DistilBERT's
            pre-classifier).
        vocab_size: Rows of the token-embedding table.
        max_positions: Usable positions (RoBERTa's table has ``pad_token_id + 1`` more rows that no real
            token uses).
        num_labels: Labels of the sequence-classification head, or None when the folder has none.
        position_offset: The table row of position 0 (``pad_token_id + 1`` for RoBERTa, else 0).
        dropout: The hidden dropout probability (used when the converted model is fine-tuned).
    """

    model_type: str
    n_layers: int
    d_model: int
    n_heads: int
    head_dim: int
    d_ffn: int
    layer_norm_eps: float
    pooler: str
    vocab_size: int
    max_positions: int
    num_labels: int | None
    position_offset: int = 0
    dropout: float = 0.1

    @classmethod
    def from_config(cls, config: dict[str, Any], *, source: str = "config.json") -> TeacherShape:
        """Read the shape from a parsed ``config.json``.

        Args:
            config: The JSON object of a Hugging Face ``config.json``.
            source: Where it came from, for error messages.

        Raises:
            ConfigError: An unsupported family, an activation other than exact GELU, relative position
                embeddings, a head width that does not divide, or a missing or non-integer size.
        """
        model_type = config.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ConfigError(f"{source}: model_type {model_type!r} cannot be converted; supported: "
                              f"{', '.join(SUPPORTED_MODEL_TYPES)} (MiniLM is a bert)", field="teacher", fix=_FIX)
        keys = _KEYS[model_type]
        sizes = {name: _int(config, keys[name], source) for name in ("n_layers", "d_model", "n_heads", "d_ffn")}
        act = config.get(keys["act"], "gelu")
        if act != "gelu":
            raise ConfigError(f"{source}: {keys['act']} is {act!r}; only exact 'gelu' converts (our feed-forward "
                              "block uses it)", field="teacher", fix=_FIX)
        kind = config.get("position_embedding_type", "absolute")
        if kind != "absolute":
            raise ConfigError(f"{source}: position_embedding_type {kind!r} cannot be converted (only absolute)",
                              field="teacher", fix=_FIX)
        if sizes["d_model"] % sizes["n_heads"]:
            raise ConfigError(f"{source}: {sizes['n_heads']} heads do not divide the width {sizes['d_model']}",
                              field="teacher", fix=_FIX)
        offset = _int(config, "pad_token_id", source) + 1 if model_type == "roberta" else 0
        positions = _int(config, "max_position_embeddings", source) - offset
        eps = 1e-12 if model_type == "distilbert" else float(config.get("layer_norm_eps", 1e-12))
        return cls(model_type=model_type, **sizes, head_dim=sizes["d_model"] // sizes["n_heads"],
                   layer_norm_eps=eps, pooler=SUPPORTED_MODEL_TYPES[model_type],
                   vocab_size=_int(config, "vocab_size", source), max_positions=positions,
                   num_labels=_num_labels(config), position_offset=offset,
                   dropout=float(config.get(keys["dropout"], 0.1)))

    def layout(self) -> dict[str, Any]:
        """The Candidate fields a student shares with this teacher to inherit from it (``init: teacher``)."""
        return {"norm": "post", "layer_norm_eps": self.layer_norm_eps, "pooler": self.pooler, "pooling": "cls",
                "head_dim": self.head_dim}

    def candidate(self, *, dropout: float | None = None) -> Candidate:
        """The candidate whose model holds this teacher's weights exactly (softmax attention, no compression).

        Args:
            dropout: Dropout of the converted model; the teacher's own hidden dropout when None.

        Raises:
            ConfigError: The shape is outside what a candidate allows (e.g. fewer than 8 positions).
        """
        data = {"n_layers": self.n_layers, "d_model": self.d_model, "n_heads": self.n_heads, "d_ffn": self.d_ffn,
                "dropout": self.dropout if dropout is None else dropout, "max_len": self.max_positions,
                **self.layout()}
        return validate(Candidate, data, source=f"teacher ({self.model_type})")

    def to_json(self) -> dict[str, Any]:
        """The record as a JSON-ready dict (read back with ``TeacherShape(**d)``)."""
        return asdict(self)


def _int(config: dict[str, Any], key: str, source: str) -> int:
    value = config.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"{source}: {key} is {value!r}, expected a non-negative integer", field="teacher",
                          fix=_FIX)
    return value


def _num_labels(config: dict[str, Any]) -> int | None:
    """Labels of the classification head, or None when ``architectures`` names no sequence classifier."""
    architectures = config.get("architectures") or []
    if not any(isinstance(a, str) and a.endswith(_CLASSIFIER_SUFFIX) for a in architectures):
        return None
    labels = config.get("id2label")
    if isinstance(labels, dict) and labels:
        return len(labels)
    n = config.get("num_labels", 2)
    return n if isinstance(n, int) and n > 0 else 2
