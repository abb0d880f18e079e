"""The parts of a :class:`nas.config.Candidate`: attention, quantization, pruning, distillation, sharing, rank.

Frozen pydantic records (layer L0: stdlib and pydantic only), re-exported by :mod:`nas.config`; see there
for how validation errors are reported.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from nas.vocab import (
    ATTENTION_KIND,
    DISTILL_KIND,
    PRUNE_IMPORTANCE,
    PRUNE_SCHEDULE,
    SHARING_KIND,
    SPARSITY_KIND,
)

__all__ = ["AttentionConfig", "QuantConfig", "PruneConfig", "DistillConfig", "SharingConfig", "RankConfig",
           "LayerShape", "BIT_WIDTHS", "ACTIVATION_BIT_WIDTHS", "Frozen", "omit_defaults", "storage_bits"]

# Closed vocabularies are listed once, in nas.vocab; each annotation validates like a Literal of its names.
AttentionKind = Annotated[str, ATTENTION_KIND]
SparsityKind = Annotated[str, SPARSITY_KIND]
PruneImportance = Annotated[str, PRUNE_IMPORTANCE]
PruneSchedule = Annotated[str, PRUNE_SCHEDULE]
DistillKind = Annotated[str, DISTILL_KIND]
SharingKind = Annotated[str, SHARING_KIND]
FeatureMap = Literal["elu", "relu"]
Bits = Literal[32, 16, 8, 4, 2, 1, "ternary"]
ActivationBits = Literal[32, 8, 4]

#: Every bit-width activations can take: 32 (floating point), 8 and 4.
ACTIVATION_BIT_WIDTHS: tuple[int, ...] = (32, 8, 4)

#: Every bit-width a layer group can take: 32 (unquantized), bf16, uniform 8/4/2, binary (1) and ternary.
BIT_WIDTHS: tuple[int | str, ...] = (32, 16, 8, 4, 2, 1, "ternary")


def storage_bits(bits: int | str) -> int:
    """Bits stored per weight at ``bits``: ternary weights are stored in 2-bit codes."""
    return 2 if bits == "ternary" else int(bits)


def omit_defaults(dumped: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """``dumped`` without the fields that hold their default.

    This is how a field added after version 1 stays out of the JSON (and the hash) of a record not using it.
    """
    return {k: v for k, v in dumped.items() if k not in defaults or v != defaults[k]}


class Frozen(BaseModel):
    """Base of every configuration record: immutable, unknown keys refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class AttentionConfig(Frozen):
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
        return omit_defaults(handler(self), {"stride": None, "summary": None, "buckets": None})

    @property
    def resolved_feature_map(self) -> str:
        """The ``linear`` kernel to use: ``feature_map``, or ``elu`` when unset."""
        return self.feature_map or "elu"

    @property
    def resolved_summary(self) -> int:
        """The ``fixed`` summary tokens per block: ``summary``, or 1 when unset."""
        return self.summary or 1


class QuantConfig(Frozen):
    """Weight quantization per layer group. 32 means unquantized.

    ``scheme`` is symmetric (zero-point 0) or asymmetric (affine); it shapes the uniform grids (16 to 2
    bits). ``1`` is binary (sign x scale, BinaryBERT) and ``ternary`` is {-a, 0, +a} (TernaryBERT), each
    with its own symmetric rule. ``granularity`` is one scale per output channel or one per tensor.

    ``activation_bits`` (8 or 4; 32 leaves them in floating point) fake-quantizes the input of every
    attention and FFN Linear on an affine per-tensor grid whose range is ``running`` (moving min/max) or
    ``learned`` (trained, LSQ-style); 8-bit activations with 8-bit weights serve as real int8 x int8
    kernels on CPU. Both were added after version 1 and are left out of the JSON at their defaults. See
    ``docs/quantization.md``.
    """

    version: int = 1
    embedding_bits: Bits = 32
    attention_bits: Bits = 32
    ffn_bits: Bits = 32
    scheme: Literal["symmetric", "asymmetric"] = "symmetric"
    granularity: Literal["per_channel", "per_tensor"] = "per_channel"
    activation_bits: ActivationBits = 32
    activation_range: Literal["running", "learned"] = "running"

    @field_validator("activation_bits", mode="before")
    @classmethod
    def _activation_bits(cls, v: Any) -> Any:
        if v not in ACTIVATION_BIT_WIDTHS:
            raise ValueError(f"quant.activation_bits={v!r}: activations have a grid at 8 bits (real int8 kernels on "
                             "CPU) or 4 bits (fake-quant) only; use 8, 4, or 32 to keep them in floating point")
        return v

    @model_validator(mode="after")
    def _range_needs_bits(self) -> QuantConfig:
        if self.activation_bits == 32 and self.activation_range != "running":
            raise ValueError("quant.activation_range only applies to quantized activations; set "
                             "quant.activation_bits to 8 or 4, or remove activation_range")
        return self

    @model_serializer(mode="wrap")
    def _omit_unset_new_fields(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Leave out the fields added after version 1 at their defaults, so earlier candidates dump (and hash) as before."""
        return omit_defaults(handler(self), {"activation_bits": 32, "activation_range": "running"})

    @property
    def is_noop(self) -> bool:
        """True when every group stays at 32 bits and activations stay in floating point (nothing to quantize)."""
        return self.embedding_bits == self.attention_bits == self.ffn_bits == self.activation_bits == 32

    @property
    def quantizes_weights(self) -> bool:
        """True when some layer group's weights are below 32 bits."""
        return any(b != 32 for b in self.groups_bits)

    @property
    def groups_bits(self) -> tuple[int | str, int | str, int | str]:
        """The bit-widths of the embedding, attention and FFN groups."""
        return self.embedding_bits, self.attention_bits, self.ffn_bits

    @property
    def min_bits(self) -> int:
        """The fewest bits stored per weight in any layer group (ternary: 2)."""
        return min(storage_bits(b) for b in self.groups_bits)

    @property
    def bits_label(self) -> str:
        """The lowest precision in words: ``binary``, ``ternary`` or ``N-bit``."""
        if 1 in self.groups_bits:
            return "binary"
        if "ternary" in self.groups_bits:
            return "ternary"
        return f"{self.min_bits}-bit"

    @property
    def label(self) -> str:
        """:attr:`bits_label`, plus the activations' bits when they are quantized (``8-bit, A8``)."""
        return self.bits_label if self.activation_bits == 32 else f"{self.bits_label}, A{self.activation_bits}"


class PruneConfig(Frozen):
    """Sparsity: unstructured magnitude, structured heads, structured FFN neurons, or 2:4.

    ``amount`` is the fraction removed (ignored for ``2:4``, which is always one half of each group of 4).
    ``importance`` ranks what is removed: ``magnitude`` (weight size) or ``taylor`` (first-order Taylor from
    the task loss's gradients). ``schedule`` is ``one_shot`` or ``cubic`` (gradual, Zhu & Gupta 2017). Both
    were added after version 1 and are left out of the JSON at their defaults (earlier candidates hash as
    before). See ``docs/pruning.md``.
    """

    version: int = 1
    kind: SparsityKind = "none"
    amount: float = Field(default=0.0, ge=0.0, le=0.95)
    importance: PruneImportance = "magnitude"
    schedule: PruneSchedule = "one_shot"

    @model_validator(mode="after")
    def _amount(self) -> PruneConfig:
        if SPARSITY_KIND[self.kind].takes_amount and self.amount <= 0.0:
            raise ValueError(
                f"sparsity.amount must be > 0 for kind {self.kind!r} (e.g. amount: 0.25), "
                "or set kind: none"
            )
        if self.kind == "none" and (self.importance, self.schedule) != ("magnitude", "one_shot"):
            name = "importance" if self.importance != "magnitude" else "schedule"
            raise ValueError(f"sparsity.{name}={getattr(self, name)!r} only applies when something is pruned "
                             "(sparsity.kind is not 'none'); remove it, or set a sparsity.kind")
        if self.schedule == "cubic" and not SPARSITY_KIND[self.kind].takes_amount:
            raise ValueError(f"sparsity.schedule 'cubic' grows sparsity towards amount, but kind {self.kind!r} has a "
                             "fixed pattern (2 of every 4); use schedule: one_shot, or kind magnitude, heads or ffn")
        return self

    @model_serializer(mode="wrap")
    def _omit_unset_new_fields(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Leave out the fields added after version 1 at their defaults, so earlier candidates dump (and hash) as before."""
        return omit_defaults(handler(self), {"importance": "magnitude", "schedule": "one_shot"})

    @property
    def is_noop(self) -> bool:
        """True when ``kind`` is ``none`` (nothing to prune)."""
        return self.kind == "none"


class DistillConfig(Frozen):
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


class SharingConfig(Frozen):
    """Cross-layer parameter sharing (ALBERT, Lan et al., 2020).

    Consecutive layers form groups of ``group_size`` (the last group may be shorter); the layers of a
    group share one attention (``attention``), one FFN (``ffn``) or one whole block, LayerNorms included
    (``all``). ``group_size`` unset means one group of every layer (ALBERT). Shared weights are stored and
    counted once (parameters, size); every layer still computes, so FLOPs do not shrink.
    """

    kind: SharingKind = "none"
    group_size: int | None = Field(default=None, ge=2, le=48)

    @model_validator(mode="after")
    def _group(self) -> SharingConfig:
        if self.kind == "none" and self.group_size is not None:
            raise ValueError("sharing.group_size only applies when sharing.kind is attention, ffn or all; remove it")
        return self

    def owner(self, layer: int, n_layers: int) -> int:
        """The first layer of ``layer``'s group: the layer whose shared modules ``layer`` uses."""
        if self.kind == "none":
            return layer
        size = self.group_size or n_layers
        return (layer // size) * size


class RankConfig(Frozen):
    """Low-rank factorised Linear weights: a rank ratio per layer group (1.0 = dense, the default).

    A ratio ``r < 1`` replaces each Linear ``W`` (``out x in``) of the group by ``up @ down`` with rank
    ``max(1, round(r * min(in, out)))`` (:class:`nas.models.LowRankLinear`): ``rank * (in + out)`` weights
    instead of ``in * out``, and as many multiply-adds. ``attention`` covers q/k/v/out, ``ffn`` fc1/fc2.
    """

    attention: float = 1.0
    ffn: float = 1.0

    @model_validator(mode="after")
    def _ratios(self) -> RankConfig:
        for name in ("attention", "ffn"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                what = "rank 0 removes the layer" if value <= 0 else "a rank above the layer's width is larger than dense"
                raise ValueError(f"rank.{name}={value} must be in (0, 1] ({what}); use e.g. 0.5 for half the "
                                 "width, or 1.0 for the dense layer")
        return self

    def of(self, group: str, in_features: int, out_features: int) -> int | None:
        """The rank of a ``group`` Linear of this shape, or None when it stays dense."""
        ratio = float(getattr(self, group))
        if ratio >= 1.0:
            return None
        return max(1, int(round(ratio * min(in_features, out_features))))


class LayerShape(Frozen):
    """One encoder layer's shape where layers differ (HAT's heterogeneous encoder): its heads and FFN width.

    Each head is ``d_model / n_heads`` wide (or the candidate's ``head_dim``), so a layer with fewer heads
    has narrower q/k/v/out projections only when ``head_dim`` is set.
    """

    n_heads: int = Field(ge=1, le=128)
    d_ffn: int = Field(ge=8, le=32768)
