"""Frozen, versioned configuration records (layer L0: stdlib and pydantic only).

A :class:`Candidate` is the whole description of one point of the search space: the architecture plus
its compression and distillation settings. It serialises to JSON with a ``version`` so that any stored
trial can be rebuilt exactly. Training and measurement settings live in :class:`TrainConfig` and
:class:`MeasureConfig`.

Validation errors are turned into :class:`nas.errors.ConfigError` whose message names the field, the bad
value and the allowed values (see :func:`validate`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    model_serializer,
    model_validator,
)

from nas.errors import ConfigError
from nas.vocab import ATTENTION_KIND, DISTILL_KIND, METER, SPARSITY_KIND

__all__ = [
    "CANDIDATE_VERSION",
    "AttentionConfig",
    "QuantConfig",
    "PruneConfig",
    "DistillConfig",
    "Candidate",
    "TrainConfig",
    "MeasureConfig",
    "validate",
    "load_yaml",
    "load_candidate",
    "BIT_WIDTHS",
]

CANDIDATE_VERSION = 1

# Closed vocabularies are listed once, in nas.vocab; each annotation validates like a Literal of its names.
AttentionKind = Annotated[str, ATTENTION_KIND]
SparsityKind = Annotated[str, SPARSITY_KIND]
DistillKind = Annotated[str, DISTILL_KIND]
MeterName = Annotated[str, METER]
FeatureMap = Literal["elu", "relu"]
Bits = Literal[32, 16, 8, 4, 2]
Pooling = Literal["cls", "mean"]
Init = Literal["scratch", "teacher"]
Norm = Literal["pre", "post"]
Pooler = Literal["none", "tanh", "relu"]

BIT_WIDTHS: tuple[int, ...] = (32, 16, 8, 4, 2)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class AttentionConfig(_Frozen):
    """Which attention a block uses, with the parameters of that kind only.

    ``window`` is the one-sided radius of ``local`` attention: token i sees tokens j with
    ``|i - j| <= window``. ``k`` is the projected length of ``lowrank`` (Linformer) keys and values.
    ``feature_map`` is the kernel of ``linear`` attention (Katharopoulos et al., 2020 use elu+1).
    ``stride`` is the block length of ``strided`` and ``fixed`` (Sparse Transformer); ``summary`` the
    number of each block's last tokens that every query of ``fixed`` also sees (default 1, below
    ``stride``). ``buckets`` is the number of LSH buckets (and sorted chunks) of ``hash``.
    """

    kind: AttentionKind = "softmax"
    window: int | None = Field(default=None, ge=1, le=4096)
    k: int | None = Field(default=None, ge=1, le=4096)
    feature_map: FeatureMap | None = None
    stride: int | None = Field(default=None, ge=1, le=4096)
    summary: int | None = Field(default=None, ge=1, le=4096)
    buckets: int | None = Field(default=None, ge=1, le=4096)

    @model_validator(mode="after")
    def _conditional(self) -> AttentionConfig:
        needs = {"window": ("local",), "k": ("lowrank",), "stride": ("strided", "fixed"), "buckets": ("hash",)}
        examples = {"window": "8", "k": "16", "stride": "16", "buckets": "8"}
        for name, kinds in needs.items():
            if self.kind in kinds and getattr(self, name) is None:
                raise ValueError(f"attention.{name} is required when kind is {self.kind!r} "
                                 f"(e.g. {name}: {examples[name]})")
            if self.kind not in kinds and getattr(self, name) is not None:
                raise ValueError(f"attention.{name} only applies to kind {' or '.join(map(repr, kinds))}, "
                                 f"not {self.kind!r}; remove it")
        if self.kind != "linear" and self.feature_map is not None:
            raise ValueError(
                f"attention.feature_map only applies to kind 'linear', not {self.kind!r}; remove it"
            )
        if self.summary is not None and self.kind != "fixed":
            raise ValueError(f"attention.summary only applies to kind 'fixed', not {self.kind!r}; remove it")
        if self.kind == "fixed" and self.stride is not None and self.resolved_summary >= self.stride:
            raise ValueError(f"attention.summary ({self.resolved_summary}) must be below attention.stride "
                             f"({self.stride}): the summary tokens are the last ones of each block")
        return self

    @model_serializer(mode="wrap")
    def _omit_unset_new_fields(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Leave out the fields added after version 1 when unset, so earlier candidates dump (and hash) as before."""
        d: dict[str, Any] = handler(self)
        for name in ("stride", "summary", "buckets"):
            if d.get(name) is None:
                d.pop(name, None)
        return d

    @property
    def resolved_feature_map(self) -> str:
        """The ``linear`` kernel to use: ``feature_map``, or ``elu`` when unset."""
        return self.feature_map or "elu"

    @property
    def resolved_summary(self) -> int:
        """The ``fixed`` summary tokens per block: ``summary``, or 1 when unset."""
        return self.summary or 1


class QuantConfig(_Frozen):
    """Weight quantization per layer group. 32 means unquantized.

    ``scheme`` is symmetric (zero-point 0) or asymmetric (affine). ``granularity`` is one scale per output
    channel or one per tensor. Activations stay in floating point (weight-only quantization).
    """

    version: int = 1
    embedding_bits: Bits = 32
    attention_bits: Bits = 32
    ffn_bits: Bits = 32
    scheme: Literal["symmetric", "asymmetric"] = "symmetric"
    granularity: Literal["per_channel", "per_tensor"] = "per_channel"

    @property
    def is_noop(self) -> bool:
        """True when every group stays at 32 bits (nothing to quantize)."""
        return self.embedding_bits == self.attention_bits == self.ffn_bits == 32

    @property
    def min_bits(self) -> int:
        """The smallest bit-width of the three layer groups."""
        return min(self.embedding_bits, self.attention_bits, self.ffn_bits)


class PruneConfig(_Frozen):
    """Sparsity: unstructured magnitude, structured heads, structured FFN neurons, or 2:4.

    ``amount`` is the fraction removed (ignored for ``2:4``, which is always one half of each group of 4).
    """

    version: int = 1
    kind: SparsityKind = "none"
    amount: float = Field(default=0.0, ge=0.0, le=0.95)

    @model_validator(mode="after")
    def _amount(self) -> PruneConfig:
        if SPARSITY_KIND[self.kind].takes_amount and self.amount <= 0.0:
            raise ValueError(
                f"sparsity.amount must be > 0 for kind {self.kind!r} (e.g. amount: 0.25), "
                "or set kind: none"
            )
        return self

    @property
    def is_noop(self) -> bool:
        """True when ``kind`` is ``none`` (nothing to prune)."""
        return self.kind == "none"


class DistillConfig(_Frozen):
    """Knowledge distillation from a teacher.

    Kinds are cumulative: ``logit`` is KD on logits (Hinton et al., 2015); ``hidden`` adds hidden-state
    MSE through a learned projection (TinyBERT); ``attention`` adds attention-map KL as well.
    """

    kind: DistillKind = "none"
    temperature: float = Field(default=2.0, gt=0.0, le=20.0)
    alpha: float = Field(default=0.5, ge=0.0, le=1.0)
    hidden_weight: float = Field(default=1.0, ge=0.0)
    attention_weight: float = Field(default=1.0, ge=0.0)

    @property
    def uses_logits(self) -> bool:
        """Whether the loss has a logit KD term (every kind but ``none``)."""
        return "logit" in DISTILL_KIND[self.kind].losses

    @property
    def uses_hidden(self) -> bool:
        """Whether the loss has a hidden-state term (``hidden`` and ``attention``)."""
        return "hidden" in DISTILL_KIND[self.kind].losses

    @property
    def uses_attention(self) -> bool:
        """Whether the loss has an attention-map term (``attention`` only)."""
        return "attention" in DISTILL_KIND[self.kind].losses


class Candidate(_Frozen):
    """One architecture plus its compression and distillation settings.

    Holds no torch objects; :func:`nas.models.build` turns it into a module.

    The layout fields default to our own pre-LN encoder; a converted Hugging Face teacher (and a student
    that inherits from it) sets them to the teacher's layout (see ``docs/teachers.md``):

    - ``init``: ``scratch`` (fresh weights) or ``teacher`` (the student starts from the teacher's weights,
      :func:`evaluators.inherit.inherit_`).
    - ``norm``: ``pre`` (LayerNorm before each sublayer, a final ``ln_f``) or ``post`` (BERT: LayerNorm
      after the embeddings and after each residual sum, no final LayerNorm).
    - ``layer_norm_eps``: every LayerNorm's epsilon.
    - ``pooler``: ``none``, or a ``Linear(d_model, d_model)`` with ``tanh`` (BERT, RoBERTa) or ``relu``
      (DistilBERT) between the pooled ``[CLS]`` vector and the head; needs ``pooling: cls``.
    - ``head_dim``: the width of one attention head; ``None`` means ``d_model // n_heads`` (then
      ``n_heads`` must divide ``d_model``). When set, the attention's inner width is ``n_heads * head_dim``.
    """

    version: int = CANDIDATE_VERSION
    n_layers: int = Field(default=2, ge=1, le=48)
    d_model: int = Field(default=64, ge=8, le=8192)
    n_heads: int = Field(default=4, ge=1, le=128)
    d_ffn: int = Field(default=128, ge=8, le=32768)
    dropout: float = Field(default=0.1, ge=0.0, lt=1.0)
    max_len: int = Field(default=128, ge=8, le=8192)
    pooling: Pooling = "mean"
    attention: AttentionConfig = AttentionConfig()
    quant: QuantConfig = QuantConfig()
    sparsity: PruneConfig = PruneConfig()
    distill: DistillConfig = DistillConfig()
    init: Init = "scratch"
    norm: Norm = "pre"
    layer_norm_eps: float = Field(default=1e-5, gt=0.0, le=0.1)
    pooler: Pooler = "none"
    head_dim: int | None = Field(default=None, ge=1, le=1024)

    @model_validator(mode="after")
    def _shapes(self) -> Candidate:
        if self.version != CANDIDATE_VERSION:
            raise ValueError(
                f"version {self.version} is not supported; this build reads version {CANDIDATE_VERSION}"
            )
        if self.pooler != "none" and self.pooling != "cls":
            raise ValueError(
                f"pooler={self.pooler!r} transforms the [CLS] vector, so it needs pooling: cls "
                f"(got pooling: {self.pooling}); set pooling: cls or pooler: none"
            )
        if self.head_dim is None and self.d_model % self.n_heads != 0:
            divisors = [h for h in range(1, min(self.d_model, 64) + 1) if self.d_model % h == 0]
            raise ValueError(
                f"n_heads={self.n_heads} must divide d_model={self.d_model}; "
                f"allowed n_heads for this d_model: {divisors} (or set head_dim to choose the head width)"
            )
        if self.attention.kind == "lowrank" and self.attention.k is not None and self.attention.k > self.max_len:
            raise ValueError(f"attention.k={self.attention.k} must be <= max_len={self.max_len}")
        if self.attention.kind == "local" and self.attention.window is not None \
                and self.attention.window > self.max_len:
            raise ValueError(f"attention.window={self.attention.window} must be <= max_len={self.max_len} "
                             "(a wider window is full softmax attention; use kind: softmax or a smaller window)")
        for name in ("stride", "buckets"):
            value = getattr(self.attention, name)
            if value is not None and value > self.max_len:
                raise ValueError(f"attention.{name}={value} must be <= max_len={self.max_len} (one block or "
                                 f"bucket would hold the whole sequence: that is softmax; use kind: softmax or a "
                                 f"smaller {name})")
        if self.sparsity.kind == "heads":
            removed = int(round(self.n_heads * self.sparsity.amount))
            if removed >= self.n_heads:
                raise ValueError(
                    f"sparsity.amount={self.sparsity.amount} would remove all {self.n_heads} heads; "
                    "use a smaller amount"
                )
        return self

    @property
    def resolved_head_dim(self) -> int:
        """Width of one attention head: ``head_dim``, or ``d_model // n_heads`` when unset."""
        return self.head_dim if self.head_dim is not None else self.d_model // self.n_heads

    @property
    def attention_width(self) -> int:
        """Inner width of the attention (q/k/v outputs, out_proj input): ``n_heads * resolved_head_dim``."""
        return self.n_heads * self.resolved_head_dim

    @property
    def weight_bits(self) -> int:
        """The smallest bit-width of any layer group (what ``--where weight_bits <= 8`` filters on)."""
        return self.quant.min_bits

    def to_json(self) -> str:
        """The candidate as compact JSON (read back by :meth:`from_json`)."""
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str) -> Candidate:
        """Parse and validate a candidate from JSON text.

        Raises:
            ConfigError: The text is not JSON, or not a valid candidate.
        """
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"candidate JSON is malformed: {e}", fix="pass a JSON object") from e
        return validate(cls, data, source="candidate JSON")

    def flat(self) -> dict[str, Any]:
        """A flat dict for tables and ``--where`` filters (``attention``, ``weight_bits``, ...)."""
        return {
            "n_layers": self.n_layers,
            "d_model": self.d_model,
            "n_heads": self.n_heads,
            "d_ffn": self.d_ffn,
            "attention": self.attention.kind,
            "window": self.attention.window,
            "k": self.attention.k,
            "weight_bits": self.weight_bits,
            "embedding_bits": self.quant.embedding_bits,
            "attention_bits": self.quant.attention_bits,
            "ffn_bits": self.quant.ffn_bits,
            "quant_scheme": self.quant.scheme,
            "sparsity": self.sparsity.kind,
            "sparsity_amount": self.sparsity.amount,
            "distill": self.distill.kind,
            "pooling": self.pooling,
            "init": self.init,
        }


class TrainConfig(_Frozen):
    """Brief training: AdamW with linear warmup and cosine decay, budgeted in steps and/or seconds."""

    steps: int = Field(default=300, ge=1)
    max_seconds: float | None = Field(default=None, gt=0)
    batch_size: int = Field(default=32, ge=1)
    lr: float = Field(default=1e-3, gt=0, le=1.0)
    weight_decay: float = Field(default=0.01, ge=0)
    warmup_fraction: float = Field(default=0.1, ge=0, le=0.5)
    grad_clip: float = Field(default=1.0, gt=0)
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    gradient_checkpointing: bool = False
    eval_batch_size: int = Field(default=128, ge=1)
    #: Batch rows of similar length together (each batch is trimmed to its longest row), as Hugging Face's
    #: ``group_by_length``: on real text of mixed lengths a step computes far fewer padding tokens.
    group_by_length: bool = False
    #: Keep the token embeddings that an ``init: teacher`` student inherited fixed. On a small student the
    #: AdamW update of the whole (vocabulary x width) table can cost more than the layers; scratch students
    #: always train theirs.
    freeze_inherited_embeddings: bool = False


class MeasureConfig(_Frozen):
    """Inference-energy protocol (see ARCHITECTURE.md, "Measurement protocol")."""

    meter: MeterName = "auto"
    batch_size: int = Field(default=32, ge=1)
    seq_len: int = Field(default=64, ge=1)
    warmup_iters: int = Field(default=10, ge=0)
    window_s: float = Field(default=1.0, gt=0)
    n_windows: int = Field(default=3, ge=1)
    trim_fraction: float = Field(default=0.2, ge=0, lt=0.5)
    idle_s: float = Field(default=1.0, ge=0)
    country_iso_code: str = Field(default="USA", min_length=3, max_length=3)
    cpu_tdp_w: float = Field(default=65.0, gt=0)
    #: The form measured: eager PyTorch or ``torch.compile``. ONNX Runtime is an export format
    #: (``nas export --format onnx``), not a serving form a trial can measure.
    serving_form: Literal["eager", "compiled"] = "eager"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"


M = TypeVar("M", bound=BaseModel)


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if not isinstance(p, int) or True)
        msg = e["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        inp = e.get("input")
        if e["type"] == "extra_forbidden":
            msg = "unknown key; remove it or check its spelling"
        elif e["type"] == "literal_error":
            msg = f"{msg}"
        if loc:
            shown = "" if isinstance(inp, dict) or e["type"] in ("missing",) else f" (got {inp!r})"
            lines.append(f"{loc}: {msg}{shown}")
        else:
            lines.append(msg)
    return f"{source}: " + "; ".join(lines)


def validate(model: type[M], data: Any, *, source: str = "config") -> M:
    """Validate ``data`` into ``model``; raise :class:`ConfigError` naming each bad field and value."""
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: expected a mapping of keys to values, got {type(data).__name__}",
            fix="write the file as YAML key: value pairs",
        )
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e, source)) from e


def load_yaml(path: str | Path, *, what: str = "the candidate's keys, e.g. n_layers: 2") -> Any:
    """Read a YAML file; errors name the file (and line) and say what to fix (``what`` goes in it)."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{p}: file not found", fix="check the path")
    if p.is_dir():
        raise ConfigError(f"{p}: is a directory, expected a YAML file", fix="pass the file path")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{p}:{where} is not valid YAML ({getattr(e, 'problem', e)})",
                          fix="fix the YAML syntax") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: is not UTF-8 text", fix="save the file as UTF-8") from e
    if data is None:
        raise ConfigError(f"{p}: file is empty", fix=f"write {what}")
    return data


def load_candidate(path: str | Path) -> Candidate:
    """Load a candidate from a YAML (or JSON) file."""
    data = load_yaml(path)
    if isinstance(data, dict) and "candidate" in data and len(data) == 1:
        data = data["candidate"]
    return validate(Candidate, data, source=str(path))
