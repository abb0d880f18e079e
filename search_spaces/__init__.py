"""Search spaces: a pure function from a trial to a frozen :class:`nas.config.Candidate`.

No torch and no storage here (layer L1). ``suggest`` is duck-typed over the trial: it works with an
``optuna.trial.Trial``, an ``optuna.trial.FixedTrial`` and this module's :class:`ReplayTrial` (a
dependency-free fixed-params trial for replaying stored parameters).

Conditional parameters:

* ``window`` is suggested only when ``attention == "local"``; ``k`` only for ``lowrank``;
  ``feature_map`` only for ``linear``; ``stride`` for ``strided`` and ``fixed``, ``summary`` for
  ``fixed`` (capped below its stride); ``buckets`` for ``hash``. ``k``, ``stride`` and ``buckets`` are
  capped at ``max_len``.
* ``sparsity_amount`` only when sparsity is not ``none`` or ``2:4``.
* ``prune_importance`` (``magnitude`` or ``taylor``) only when sparsity is not ``none``; ``prune_schedule``
  (``one_shot`` or ``cubic``) only when it takes an amount (not ``2:4``).
* ``kd_temperature`` and ``kd_alpha`` only when ``distill`` is not ``none``.
* Heads must divide ``d_model``: ``n_heads`` is suggested first; if it does not divide the suggested
  ``d_model``, the largest allowed head count that does divide it is used (deterministic, so replay
  gives the same candidate).
* ``layer_shapes`` only with at least 2 layers: ``uniform`` draws ``n_heads`` and ``ffn_ratio`` once;
  ``per_layer`` (HAT's heterogeneous encoder) draws ``n_heads_i`` and ``ffn_ratio_i`` for each layer
  ``i < n_layers`` (conditional on depth), each head count fitted to ``d_model`` as below.
* ``sharing`` only with at least 2 layers of one shape, and ``group_size`` only for ``sharing`` other than ``none``
  with more than 2 layers; a group size of at least ``n_layers`` is one group of every layer (ALBERT).
* ``rank_attention`` unless sparsity is ``heads`` and ``rank_ffn`` unless it is ``ffn`` (structured
  pruning slices dense matrices); 1.0 is dense.
* ``drop_layers`` (layers dropped at inference, capped at ``n_layers - 1``) with at least 2 layers, and
  ``layerdrop`` (the training drop rate) only when some are dropped: ``infer_layers = n_layers - drop``.
* A knob with a single choice is not a parameter at all (as if it did not exist).
* ``init`` is suggested only when the space offers more than ``scratch``. A candidate with
  ``init: teacher`` starts from the teacher's weights (:mod:`evaluators.inherit`), so it takes the
  teacher's layout (post-LN, LayerNorm epsilon, pooler, CLS pooling, head width) and is cut to fit inside
  the teacher: depth, width, heads and FFN width are capped at the teacher's (the caps are deterministic,
  so replay gives the same candidate). Heads then keep the teacher's head width, so any head count fits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from nas.config import (
    ACTIVATION_BIT_WIDTHS,
    BIT_WIDTHS,
    AttentionConfig,
    Candidate,
    DistillConfig,
    PruneConfig,
    RankConfig,
    SharingConfig,
    validate,
)
from nas.errors import ConfigError
from nas.vocab import (
    ATTENTION_KIND,
    DISTILL_KIND,
    PRUNE_IMPORTANCE,
    PRUNE_SCHEDULE,
    SHARING_KIND,
    SPARSITY_KIND,
)
from search_spaces.compression import categorical, float_range, suggest_quant, suggest_sparsity

__all__ = ["SearchSpace", "ReplayTrial", "TrialLike", "suggest", "load_space", "PRESETS", "preset_path",
           "INIT_CHOICES", "fit_to_teacher"]

#: Where a candidate's weights start: fresh (``scratch``) or cut from the teacher (``teacher``).
INIT_CHOICES: tuple[str, ...] = ("scratch", "teacher")

PRESETS: tuple[str, ...] = ("tiny", "base")
_PRESET_DIR = Path(__file__).resolve().parent / "presets"


class TrialLike(Protocol):
    """The part of Optuna's trial API that :func:`suggest` uses."""

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        """One of ``choices`` for the parameter ``name``."""
        ...

    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False) -> float:
        """A float in ``[low, high]`` for the parameter ``name``."""
        ...


#: knob -> (what a bad value is called, the allowed values): one check for every closed list of choices.
_CHOICES: dict[str, tuple[str, tuple[Any, ...]]] = {
    "attention": ("unknown attention type(s)", ATTENTION_KIND.names),
    "attention_bits": ("unsupported bit-width(s)", BIT_WIDTHS),
    "ffn_bits": ("unsupported bit-width(s)", BIT_WIDTHS),
    "embedding_bits": ("unsupported bit-width(s)", BIT_WIDTHS),
    "sparsity": ("unknown sparsity kind(s)", SPARSITY_KIND.names),
    "distill": ("unknown distill kind(s)", DISTILL_KIND.names),
    "init": ("unknown init choice(s)", INIT_CHOICES),
    "sharing": ("unknown sharing kind(s)", SHARING_KIND.names),
    "layer_shapes": ("unknown layer-shape choice(s)", ("uniform", "per_layer")),
    "prune_importance": ("unknown pruning importance(s)", PRUNE_IMPORTANCE.names),
    "prune_schedule": ("unknown pruning schedule(s)", PRUNE_SCHEDULE.names),
    "activation_bits": ("unsupported activation bit-width(s)", ACTIVATION_BIT_WIDTHS),
    "activation_range": ("unknown activation range(s)", ("running", "learned")),
}


def _nonempty(name: str, v: list[Any]) -> list[Any]:
    if not v:
        raise ValueError(f"{name} needs at least one choice")
    return v


class SearchSpace(BaseModel):
    """Ranges for every searchable knob.

    Lists are categorical choices; ``(low, high)`` pairs are float ranges.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    n_layers: list[int] = Field(default=[1, 2, 3])
    d_model: list[int] = Field(default=[32, 64, 96])
    n_heads: list[int] = Field(default=[2, 4])
    ffn_ratio: list[int] = Field(default=[1, 2, 4])
    attention: list[str] = Field(default=list(ATTENTION_KIND.names))
    window: list[int] = Field(default=[2, 4, 8, 16])
    k: list[int] = Field(default=[8, 16, 32])
    stride: list[int] = Field(default=[4, 8, 16])
    summary: list[int] = Field(default=[1, 2])
    buckets: list[int] = Field(default=[2, 4, 8])
    feature_map: list[str] = Field(default=["elu", "relu"])
    attention_bits: list[int | str] = Field(default=[32, 8, 4])
    ffn_bits: list[int | str] = Field(default=[32, 8, 4])
    embedding_bits: list[int | str] = Field(default=[32, 8])
    activation_bits: list[int] = Field(default=[32])
    activation_range: list[str] = Field(default=["running"])
    quant_scheme: list[str] = Field(default=["symmetric", "asymmetric"])
    quant_granularity: list[str] = Field(default=["per_channel"])
    sparsity: list[str] = Field(default=list(SPARSITY_KIND.names))
    sparsity_amount: tuple[float, float] = (0.1, 0.5)
    prune_importance: list[str] = Field(default=["magnitude"])
    prune_schedule: list[str] = Field(default=["one_shot"])
    distill: list[str] = Field(default=["none"])
    kd_temperature: tuple[float, float] = (1.0, 4.0)
    kd_alpha: tuple[float, float] = (0.1, 0.9)
    dropout: list[float] = Field(default=[0.0, 0.1])
    pooling: list[str] = Field(default=["mean"])
    init: list[str] = Field(default=["scratch"])
    layer_shapes: list[str] = Field(default=["uniform"])
    sharing: list[str] = Field(default=["none"])
    group_size: list[int] = Field(default=[2])
    rank_attention: list[float] = Field(default=[1.0])
    rank_ffn: list[float] = Field(default=[1.0])
    drop_layers: list[int] = Field(default=[0])
    layerdrop: list[float] = Field(default=[0.1])
    max_len: int = Field(default=64, ge=8, le=8192)

    @field_validator(
        "n_layers", "d_model", "n_heads", "ffn_ratio", "attention", "window", "k", "stride", "summary", "buckets",
        "feature_map",
        "attention_bits", "ffn_bits", "embedding_bits", "quant_scheme", "quant_granularity", "sparsity",
        "distill", "dropout", "pooling", "init", "layer_shapes", "sharing", "group_size", "rank_attention", "rank_ffn", "drop_layers",
        "layerdrop", "prune_importance", "prune_schedule", "activation_bits", "activation_range",
    )
    @classmethod
    def _check_nonempty(cls, v: list[Any], info: Any) -> list[Any]:
        return _nonempty(info.field_name, v)

    @field_validator("rank_attention", "rank_ffn")
    @classmethod
    def _check_ranks(cls, v: list[float], info: Any) -> list[float]:
        bad = [x for x in v if not 0.0 < x <= 1.0]
        if bad:
            raise ValueError(f"rank ratios {bad} are outside (0, 1]: 0 removes the layer and above 1 is larger than "
                             "dense; use e.g. [1.0, 0.5, 0.25] (1.0 = dense)")
        return v

    @field_validator("group_size", "drop_layers", "layerdrop")
    @classmethod
    def _check_depth_knobs(cls, v: list[Any], info: Any) -> list[Any]:
        low, high, example = {"group_size": (2, 48, "[2, 4]"), "drop_layers": (0, 47, "[0, 1, 2]"),
                              "layerdrop": (0.0, 0.9, "[0.1, 0.2]")}[info.field_name]
        bad = [x for x in v if not low <= x <= high]
        if bad:
            raise ValueError(f"values {bad} are outside [{low}, {high}]; use e.g. {example}")
        return v

    @field_validator("attention", "attention_bits", "ffn_bits", "embedding_bits", "sparsity", "distill", "init",
                     "sharing", "layer_shapes", "prune_importance", "prune_schedule", "activation_bits",
                     "activation_range")
    @classmethod
    def _check_choices(cls, v: list[Any], info: Any) -> list[Any]:
        what, allowed = _CHOICES[info.field_name]
        bad = [x for x in v if x not in allowed]
        if bad:
            raise ValueError(f"{what} {bad}; allowed: {list(allowed)}")
        return v

    @model_validator(mode="after")
    def _check_heads(self) -> SearchSpace:
        for d in self.d_model:
            if not any(d % h == 0 for h in self.n_heads):
                raise ValueError(
                    f"d_model {d} is divisible by none of n_heads {self.n_heads}; "
                    "add a head count that divides it"
                )
        for name in ("sparsity_amount", "kd_temperature", "kd_alpha"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ValueError(f"{name}: low {lo} is greater than high {hi}")
        return self

    @property
    def uses_teacher(self) -> bool:
        """Whether a candidate may need a teacher: a distillation kind other than ``none``, or ``init: teacher``."""
        return any(d != "none" for d in self.distill) or "teacher" in self.init

    @property
    def uses_distillation(self) -> bool:
        """Whether some candidate distils (a distillation kind other than ``none``)."""
        return any(d != "none" for d in self.distill)

    @property
    def needs_teacher_hidden(self) -> bool:
        """Whether some candidate distils hidden states (``hidden`` or ``attention`` kinds)."""
        return any("hidden" in DISTILL_KIND[d].losses for d in self.distill)

    @property
    def needs_teacher_attention(self) -> bool:
        """Whether some candidate distils attention maps."""
        return any("attention" in DISTILL_KIND[d].losses for d in self.distill)


def preset_path(name: str) -> Path:
    """The YAML file of the named preset.

    Raises:
        ConfigError: When ``name`` is not one of :data:`PRESETS`.
    """
    if name not in PRESETS:
        raise ConfigError(
            f"unknown search-space preset {name!r}", field="space.preset", fix=f"use one of {list(PRESETS)}"
        )
    return _PRESET_DIR / f"{name}.yaml"


def load_space(preset: str = "tiny", overrides: dict[str, Any] | None = None) -> SearchSpace:
    """A preset's ranges with ``overrides`` (e.g. from a study YAML) laid on top, validated."""
    data = yaml.safe_load(preset_path(preset).read_text(encoding="utf-8"))
    data.update(overrides or {})
    return validate(SearchSpace, data, source=f"space (preset {preset!r} + overrides)")


def _suggest_attention(trial: TrialLike, space: SearchSpace) -> dict[str, Any]:
    """The ``attention`` block: a kind, then only that kind's parameters (see the module docstring)."""
    kind = str(trial.suggest_categorical("attention", space.attention))
    attn: dict[str, Any] = {"kind": kind}
    if kind == "local":
        attn["window"] = int(trial.suggest_categorical("window", space.window))
    elif kind == "lowrank":
        attn["k"] = min(int(trial.suggest_categorical("k", space.k)), space.max_len)
    elif kind == "linear":
        attn["feature_map"] = str(trial.suggest_categorical("feature_map", space.feature_map))
    elif kind in ("strided", "fixed"):
        attn["stride"] = min(int(trial.suggest_categorical("stride", space.stride)), space.max_len)
        if kind == "fixed":
            attn["summary"] = min(int(trial.suggest_categorical("summary", space.summary)), max(1, attn["stride"] - 1))
            if attn["stride"] == 1:
                attn["stride"] = 2  # a block of one token has no room for a summary token
    elif kind == "hash":
        attn["buckets"] = min(int(trial.suggest_categorical("buckets", space.buckets)), space.max_len)
    return attn


def _heads_dividing(requested: int, d_model: int, space: SearchSpace) -> int:
    """``requested`` if it divides ``d_model``, else the largest offered head count below it that does."""
    if d_model % requested == 0:
        return requested
    divisors = sorted(h for h in space.n_heads if d_model % h == 0)
    below = [h for h in divisors if h <= requested]
    return below[-1] if below else divisors[0]


def _suggest_shape(trial: TrialLike, space: SearchSpace) -> dict[str, Any]:
    """Depth, width, heads and FFN width: one shape for every layer, or (``per_layer``) one per layer (HAT)."""
    n_layers = int(trial.suggest_categorical("n_layers", space.n_layers))
    kind = str(categorical(trial, "layer_shapes", space.layer_shapes)) if n_layers >= 2 else "uniform"
    if kind == "uniform":
        n_heads_req = int(trial.suggest_categorical("n_heads", space.n_heads))
        d_model = int(trial.suggest_categorical("d_model", space.d_model))
        ffn_ratio = int(trial.suggest_categorical("ffn_ratio", space.ffn_ratio))
        return {"n_layers": n_layers, "d_model": d_model, "n_heads": _heads_dividing(n_heads_req, d_model, space),
                "d_ffn": d_model * ffn_ratio}
    d_model = int(trial.suggest_categorical("d_model", space.d_model))
    layers = [{"n_heads": _heads_dividing(int(trial.suggest_categorical(f"n_heads_{i}", space.n_heads)), d_model, space),
               "d_ffn": d_model * int(trial.suggest_categorical(f"ffn_ratio_{i}", space.ffn_ratio))}
              for i in range(n_layers)]
    return {"n_layers": n_layers, "d_model": d_model, "n_heads": max(s["n_heads"] for s in layers),
            "d_ffn": max(s["d_ffn"] for s in layers), "layers": layers}


def _suggest_structure(trial: TrialLike, space: SearchSpace, n_layers: int, sparsity: str, *,
                       uniform: bool = True) -> dict[str, Any]:
    """Sharing, low-rank weights and inference depth (see the module docstring for the conditions)."""
    out: dict[str, Any] = {}
    kind = str(categorical(trial, "sharing", space.sharing)) if n_layers >= 2 and uniform else "none"
    if kind != "none":
        size = int(categorical(trial, "group_size", space.group_size)) if n_layers > 2 else n_layers
        out["sharing"] = SharingConfig(kind=kind, group_size=size if size < n_layers else None)
    rank = {"attention": 1.0 if sparsity == "heads" else float(categorical(trial, "rank_attention", space.rank_attention)),
            "ffn": 1.0 if sparsity == "ffn" else float(categorical(trial, "rank_ffn", space.rank_ffn))}
    out["rank"] = RankConfig(**rank)
    drop = min(int(categorical(trial, "drop_layers", space.drop_layers)), n_layers - 1) if n_layers >= 2 else 0
    if drop:
        out["infer_layers"] = n_layers - drop
        out["layerdrop"] = float(categorical(trial, "layerdrop", space.layerdrop))
    return out


def suggest(trial: TrialLike, space: SearchSpace, teacher: Candidate | None = None) -> Candidate:
    """Sample one :class:`Candidate` from ``space`` through ``trial``. Pure: no I/O, no torch.

    Args:
        trial: An Optuna trial or a :class:`ReplayTrial`.
        space: The ranges.
        teacher: The teacher as a candidate (its layout and shape), needed when ``init: teacher`` is drawn.

    Raises:
        ConfigError: ``init: teacher`` was drawn but no teacher is given.
    """
    shape = _suggest_shape(trial, space)
    n_layers, fewest_heads = shape["n_layers"], min(s["n_heads"] for s in shape.get("layers", [shape]))

    attn = _suggest_attention(trial, space)

    quant = suggest_quant(trial, space)
    sparsity = suggest_sparsity(trial, space, fewest_heads)

    dk = str(trial.suggest_categorical("distill", space.distill))
    distill: dict[str, Any] = {"kind": dk}
    if dk != "none":
        distill["temperature"] = round(float_range(trial, "kd_temperature", space.kd_temperature), 4)
        distill["alpha"] = round(float_range(trial, "kd_alpha", space.kd_alpha), 4)

    init = str(trial.suggest_categorical("init", space.init)) if space.init != ["scratch"] else "scratch"
    cand = Candidate(
        **shape,
        dropout=float(trial.suggest_categorical("dropout", space.dropout)),
        max_len=space.max_len,
        pooling=str(trial.suggest_categorical("pooling", space.pooling)),  # type: ignore[arg-type]
        attention=AttentionConfig(**attn),
        quant=quant,
        sparsity=sparsity,
        distill=DistillConfig(**distill),
        **_suggest_structure(trial, space, n_layers, sparsity.kind, uniform="layers" not in shape),
    )
    if init == "scratch":
        return cand
    if teacher is None:
        raise ConfigError("init 'teacher' needs a teacher", field="space.init",
                          fix="set teacher in the study spec, or use init: [scratch]")
    return fit_to_teacher(cand, teacher)


def fit_to_teacher(candidate: Candidate, teacher: Candidate) -> Candidate:
    """``candidate`` with ``init: teacher``: the teacher's layout, and its shape capped at the teacher's.

    Depth, width, heads and FFN width (each layer's, with per-layer shapes) are capped at the teacher's; heads
    keep the teacher's head width;
    the layout (``norm``, ``layer_norm_eps``, ``pooler``, CLS pooling) is the teacher's; ``max_len`` is
    capped at the teacher's. Candidate-level sparsity of heads is kept below the (capped) head count.
    """
    n_layers = min(candidate.n_layers, teacher.n_layers)
    layers = None if candidate.layers is None else [
        {"n_heads": min(s.n_heads, teacher.n_heads), "d_ffn": min(s.d_ffn, teacher.d_ffn)}
        for s in candidate.layers[:n_layers]]
    n_heads = min(s["n_heads"] for s in layers) if layers else min(candidate.n_heads, teacher.n_heads)
    sparsity = candidate.sparsity
    if sparsity.kind == "heads" and round(n_heads * sparsity.amount) >= n_heads:
        sparsity = sparsity.model_copy(update={"amount": round((n_heads - 1) / n_heads, 4)}) if n_heads > 1 \
            else PruneConfig()
    return Candidate.model_validate({
        **candidate.model_dump(),
        "init": "teacher",
        "n_layers": n_layers,
        **_depth_within(candidate, n_layers),
        "d_model": min(candidate.d_model, teacher.d_model),
        "n_heads": max(s["n_heads"] for s in layers) if layers else n_heads,
        "head_dim": teacher.head_dim,
        "d_ffn": max(s["d_ffn"] for s in layers) if layers else min(candidate.d_ffn, teacher.d_ffn),
        "layers": layers,
        "max_len": min(candidate.max_len, teacher.max_len),
        "norm": teacher.norm,
        "layer_norm_eps": teacher.layer_norm_eps,
        "pooler": teacher.pooler,
        "pooling": teacher.pooling,
        "sparsity": sparsity.model_dump(),
    })


def _depth_within(candidate: Candidate, n_layers: int) -> dict[str, Any]:
    """Sharing and inference depth of ``candidate`` cut to ``n_layers`` layers.

    A group or a kept depth of at least ``n_layers`` means every layer; sharing needs 2 layers.
    """
    share, infer = candidate.sharing, candidate.infer_layers
    if share.kind != "none" and n_layers < 2:
        share = SharingConfig()
    elif share.group_size is not None and share.group_size >= n_layers:
        share = SharingConfig(kind=share.kind)
    dropped = infer is not None and infer < n_layers
    return {"sharing": share.model_dump(), "infer_layers": infer if dropped else None,
            "layerdrop": candidate.layerdrop if dropped else 0.0}


class ReplayTrial:
    """A fixed-params trial with no dependencies: replays stored ``params`` through :func:`suggest`.

    Raises :class:`ConfigError` when a parameter the space asks for is missing or outside its choices.
    """

    def __init__(self, params: dict[str, Any]) -> None:
        self.params = dict(params)
        self.used: set[str] = set()

    def _get(self, name: str) -> Any:
        if name not in self.params:
            raise ConfigError(
                f"replayed parameters lack {name!r}", field=name,
                fix="pass every parameter the space suggests (see the stored trial's params)",
            )
        self.used.add(name)
        return self.params[name]

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        """The stored value of ``name``, checked to be one of ``choices``."""
        v = self._get(name)
        if v not in list(choices):
            raise ConfigError(f"value not among the choices {list(choices)}", field=name, value=v,
                              fix="pick one of the listed choices")
        return v

    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False) -> float:
        """The stored value of ``name``, checked to lie in ``[low, high]``."""
        v = float(self._get(name))
        if not low <= v <= high:
            raise ConfigError(f"value outside [{low}, {high}]", field=name, value=v, fix="use a value in range")
        return v
