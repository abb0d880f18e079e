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
import math
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    model_serializer,
    model_validator,
)

from nas.candidate_parts import (
    ACTIVATION_BIT_WIDTHS,
    BIT_WIDTHS,
    AttentionConfig,
    DistillConfig,
    Frozen,
    LayerShape,
    PruneConfig,
    QuantConfig,
    RankConfig,
    SharingConfig,
    omit_defaults,
)
from nas.errors import ConfigError
from nas.vocab import METER

__all__ = [
    "CANDIDATE_VERSION",
    "AttentionConfig",
    "QuantConfig",
    "PruneConfig",
    "DistillConfig",
    "SharingConfig",
    "RankConfig",
    "LayerShape",
    "Candidate",
    "TrainConfig",
    "MeasureConfig",
    "validate",
    "load_yaml",
    "load_candidate",
    "ACTIVATION_BIT_WIDTHS",
    "BIT_WIDTHS",
    "ServingForm",
]

CANDIDATE_VERSION = 1

# The candidate's parts live in nas.candidate_parts and are re-exported here, where users import them from.
MeterName = Annotated[str, METER]
Pooling = Literal["cls", "mean"]
Init = Literal["scratch", "teacher"]
Norm = Literal["pre", "post"]
Pooler = Literal["none", "tanh", "relu"]


#: Candidate fields added after version 1, with their defaults: left out of the JSON when at the default,
#: so earlier candidates dump (and hash) exactly as before.
_OPTIONAL_FIELDS: dict[str, Any] = {
    "sharing": {"kind": "none", "group_size": None},
    "rank": {"attention": 1.0, "ffn": 1.0},
    "infer_layers": None,
    "layerdrop": 0.0,
    "layers": None,
}


class Candidate(Frozen):
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

    ``layers`` (HAT's heterogeneous encoder) gives each layer its own ``n_heads`` and ``d_ffn``; ``n_heads``
    and ``d_ffn`` are then the widest layer's (filled in when left out). Unset, every layer has ``n_heads``
    and ``d_ffn``. Candidates stored before it existed read and hash unchanged: a field added after version 1
    is left out of the JSON at its default, so the stored version needs no migration.
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
    sharing: SharingConfig = SharingConfig()
    rank: RankConfig = RankConfig()
    infer_layers: int | None = Field(default=None, ge=1, le=48)
    layerdrop: float = Field(default=0.0, ge=0.0, lt=1.0)
    layers: tuple[LayerShape, ...] | None = None

    @model_validator(mode="before")
    @classmethod
    def _widest_layer(cls, data: Any) -> Any:
        """With ``layers`` given, ``n_layers``, ``n_heads`` and ``d_ffn`` default to its length and widest layer."""
        if not isinstance(data, dict) or not isinstance(data.get("layers"), (list, tuple)) or not data["layers"]:
            return data
        try:
            shapes = [s if isinstance(s, dict) else s.model_dump() for s in data["layers"]]
            widest = {"n_heads": max(int(s["n_heads"]) for s in shapes), "d_ffn": max(int(s["d_ffn"]) for s in shapes)}
        except (AttributeError, KeyError, TypeError, ValueError):
            return data  # field validation then names what is wrong
        return {"n_layers": len(shapes), **widest, **data}

    @model_serializer(mode="wrap")
    def _omit_defaults_of_new_fields(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return omit_defaults(handler(self), _OPTIONAL_FIELDS)

    @model_validator(mode="after")
    def _structure(self) -> Candidate:
        """Per-layer shapes, sharing, low-rank weights and inference depth: each bad combination with its fix."""
        self._check_layers()
        share = self.sharing
        if share.kind != "none" and self.n_layers < 2:
            raise ValueError(f"sharing.kind={share.kind!r} needs at least 2 layers to share between (n_layers is "
                             f"{self.n_layers}); set sharing.kind: none or n_layers >= 2")
        if share.group_size is not None and share.group_size > self.n_layers:
            raise ValueError(f"sharing.group_size={share.group_size} is larger than n_layers={self.n_layers}; "
                             f"use a group_size <= {self.n_layers}, or leave it unset for one group of every layer")
        if self.rank.attention < 1.0 and self.sparsity.kind == "heads":
            raise ValueError("rank.attention < 1 factorises q/k/v/out, so sparsity.kind 'heads' cannot slice them; "
                             "use rank.attention: 1.0 or another sparsity kind")
        if self.rank.ffn < 1.0 and self.sparsity.kind == "ffn":
            raise ValueError("rank.ffn < 1 factorises fc1/fc2, so sparsity.kind 'ffn' cannot slice them; "
                             "use rank.ffn: 1.0 or another sparsity kind")
        if self.infer_layers is not None and self.infer_layers > self.n_layers:
            raise ValueError(f"infer_layers={self.infer_layers} is more than the n_layers={self.n_layers} trained; "
                             f"use infer_layers <= {self.n_layers} (or leave it unset to keep every layer)")
        if self.layerdrop > 0 and self.infer_layers is None:
            raise ValueError(f"layerdrop={self.layerdrop} trains for dropping layers at inference, but infer_layers is "
                             "unset; set infer_layers below n_layers, or layerdrop: 0")
        return self

    def _check_layers(self) -> None:
        if self.layers is None:
            return
        if len(self.layers) != self.n_layers:
            raise ValueError(f"layers has {len(self.layers)} entries but n_layers is {self.n_layers}; give one "
                             "{n_heads, d_ffn} per layer (or leave n_layers out)")
        for i, shape in enumerate(self.layers):
            if self.head_dim is None and self.d_model % shape.n_heads:
                divisors = [h for h in range(1, min(self.d_model, 64) + 1) if self.d_model % h == 0]
                raise ValueError(f"layers[{i}].n_heads={shape.n_heads} must divide d_model={self.d_model} (a head is "
                                 f"d_model / n_heads wide); allowed: {divisors} (or set head_dim)")
        for name in ("n_heads", "d_ffn"):
            widest = max(getattr(shape, name) for shape in self.layers)
            if getattr(self, name) != widest:
                raise ValueError(f"{name}={getattr(self, name)} must be the widest layer's ({widest}) when layers is "
                                 f"given; leave {name} out or set {name}: {widest}")
        if self.sharing.kind != "none":
            raise ValueError(f"sharing.kind={self.sharing.kind!r} shares one module between layers, so they need one "
                             "shape; remove layers or set sharing.kind: none")

    def for_layer(self, i: int) -> Candidate:
        """The candidate as layer ``i`` sees it: its own ``n_heads`` and ``d_ffn`` (itself when layers are uniform)."""
        if self.layers is None:
            return self
        shape = self.layers[i]
        return self.model_copy(update={"n_heads": shape.n_heads, "d_ffn": shape.d_ffn, "layers": None})

    @property
    def fewest_heads(self) -> int:
        """The smallest head count of any layer (``n_heads`` when layers are uniform)."""
        return min(s.n_heads for s in self.layers) if self.layers else self.n_heads

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
            removed = int(round(self.fewest_heads * self.sparsity.amount))
            if removed >= self.fewest_heads:
                raise ValueError(
                    f"sparsity.amount={self.sparsity.amount} would remove all {self.fewest_heads} heads of a layer; "
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
    def kept_layers(self) -> tuple[int, ...]:
        """The layers (0-based) evaluated and served: all of them, or ``infer_layers`` spread evenly.

        Layer ``round((i + 1) * L / k) - 1`` for ``i < k`` (halves up), the uniform mapping that ends at the
        last layer, as when DistilBERT or LayerDrop's "every other" rule keep a subset (Fan et al., 2020).
        """
        n, k = self.n_layers, self.infer_layers or self.n_layers
        return tuple(max(0, min(n - 1, int(math.floor((i + 1) * n / k + 0.5)) - 1)) for i in range(k))

    @property
    def weight_bits(self) -> int:
        """The fewest bits stored per weight in any group, ternary counting 2 (``--where weight_bits <= 8``)."""
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
            "activation_bits": self.quant.activation_bits,
            "activation_range": self.quant.activation_range,
            "sparsity": self.sparsity.kind,
            "sparsity_amount": self.sparsity.amount,
            "prune_importance": self.sparsity.importance,
            "prune_schedule": self.sparsity.schedule,
            "distill": self.distill.kind,
            "pooling": self.pooling,
            "init": self.init,
            "sharing": self.sharing.kind,
            "rank_attention": self.rank.attention,
            "rank_ffn": self.rank.ffn,
            "infer_layers": len(self.kept_layers),
            "layer_shapes": "per_layer" if self.layers else "uniform",
        }


class TrainConfig(Frozen):
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


#: A form a trial can measure (evaluators.forms.SERVING_FORMS).
ServingForm = Literal["eager", "compiled", "cuda_graph", "onnxruntime"]


class MeasureConfig(Frozen):
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
    #: The form(s) measured: eager PyTorch, ``torch.compile``, a captured CUDA graph, or ONNX Runtime (the
    #: exported graph; int8 where the candidate is 8-bit). A list measures each, one reading per form;
    #: the front uses ``primary_form`` (default: the first listed). See ``docs/measurement.md``.
    serving_form: ServingForm | list[ServingForm] = "eager"
    primary_form: ServingForm | None = None
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"

    @model_validator(mode="after")
    def _forms(self) -> MeasureConfig:
        listed = [self.serving_form] if isinstance(self.serving_form, str) else list(self.serving_form)
        if not listed:
            raise ValueError("measure.serving_form lists no form; give one, e.g. eager, or a list [eager, onnxruntime]")
        if len(set(listed)) != len(listed):
            raise ValueError(f"measure.serving_form lists a form twice ({listed}); list each once")
        if self.primary_form is not None and self.primary_form not in listed:
            raise ValueError(f"measure.primary_form {self.primary_form!r} is not among serving_form {listed}; "
                             "add it to serving_form, or name one of those")
        return self

    @property
    def forms(self) -> tuple[str, ...]:
        """The forms to measure, the primary first."""
        listed = [self.serving_form] if isinstance(self.serving_form, str) else list(self.serving_form)
        primary = self.primary_form or listed[0]
        return (primary, *[f for f in listed if f != primary])

    @property
    def primary(self) -> str:
        """The form whose reading is the trial's energy (the front's)."""
        return self.forms[0]

    def for_form(self, form: str) -> MeasureConfig:
        """This protocol measuring ``form`` alone."""
        return self.model_copy(update={"serving_form": form, "primary_form": None})


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
