"""Every closed vocabulary of the service, each listed once (layer L0: stdlib and pydantic only).

A :class:`Vocabulary` holds the allowed names of one setting, in order, each with a one-line
description (and, for some, a few facts such as an objective's direction). Everything else is derived
from it:

* pydantic validation and the JSON schema ``enum``: annotate a field ``Annotated[str, VOCABULARY]``
  (the same ``literal_error`` messages and schema as a ``Literal`` of the names);
* CLI choices: :meth:`Vocabulary.literal` gives a runtime ``Literal`` for typer;
* implementation dispatch: a :class:`Registry` maps each name to its implementation; registering a name
  that is not in the vocabulary, or twice, is refused, and :meth:`Registry.require_complete` (called
  where the implementations are imported) refuses a name without one;
* documentation: :func:`markdown` is ``docs/vocabularies.md`` (regenerate it with
  ``python -c "import nas.vocab as v; print(v.markdown(), end='')" > docs/vocabularies.md``); a test keeps
  the file equal to it.

Adding a meter, an objective or a kind is one entry here plus its implementation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, fields
from typing import Any, Generic, Literal, TypeVar

from pydantic import GetCoreSchemaHandler
from pydantic_core import core_schema

from nas.errors import ConfigError

__all__ = [
    "Term",
    "MetricTerm",
    "SparsityTerm",
    "DistillTerm",
    "ReadingTerm",
    "Vocabulary",
    "Registry",
    "METER",
    "METER_READING",
    "OBJECTIVE",
    "ATTENTION_KIND",
    "SPARSITY_KIND",
    "PRUNE_IMPORTANCE",
    "PRUNE_SCHEDULE",
    "DISTILL_KIND",
    "SHARING_KIND",
    "SAMPLER",
    "EXPORT_FORMAT",
    "EXPORT_CHOICE",
    "VOCABULARIES",
    "markdown",
]


@dataclass(frozen=True)
class Term:
    """One allowed name and what it means."""

    name: str
    about: str


@dataclass(frozen=True)
class MetricTerm(Term):
    """A metric of a trial.

    ``direction`` is the better way (``minimize`` means lower is better); ``objective`` says whether a
    study may optimise it (the others are stored and filterable only). ``before_training`` says whether it
    is known once the candidate is built and compressed, before any training (ARCHITECTURE decision 12,
    :mod:`nas.feasibility`): ``no``; ``exact`` (counted from the shapes); or ``measured`` (a reading, known
    within its noise).
    """

    direction: Literal["maximize", "minimize"]
    unit: str
    objective: bool = True
    before_training: Literal["no", "exact", "measured"] = "no"


@dataclass(frozen=True)
class SparsityTerm(Term):
    """A sparsity kind.

    ``takes_amount`` when ``sparsity.amount`` must be > 0; ``fixed_amount`` when the kind always removes
    that fraction (``amount`` is ignored).
    """

    takes_amount: bool = False
    fixed_amount: float | None = None


@dataclass(frozen=True)
class DistillTerm(Term):
    """A distillation kind and the loss terms it adds (of ``logit``, ``hidden``, ``attention``)."""

    losses: tuple[str, ...] = ()


@dataclass(frozen=True)
class ReadingTerm(Term):
    """A meter name a reading carries; ``always_estimate`` when its numbers are never measurements."""

    always_estimate: bool = False


E = TypeVar("E", bound=Term)
T = TypeVar("T")


class Vocabulary(Generic[E]):
    """The ordered, closed set of names one setting may take.

    Args:
        title: What the names are, for messages and docs (e.g. ``"attention kind"``).
        field: The setting that takes them (e.g. ``"attention.kind"``).
        terms: The entries, in the order shown to users.
    """

    def __init__(self, title: str, field: str, terms: Iterable[E]) -> None:
        self.title = title
        self.field = field
        self.terms: dict[str, E] = {}
        for t in terms:
            if t.name in self.terms:
                raise ValueError(f"{title}: {t.name!r} is listed twice")
            self.terms[t.name] = t

    @property
    def names(self) -> tuple[str, ...]:
        """The allowed values, in the registry's order."""
        return tuple(self.terms)

    def __contains__(self, name: object) -> bool:
        return name in self.terms

    def __iter__(self) -> Iterator[str]:
        return iter(self.terms)

    def __len__(self) -> int:
        return len(self.terms)

    def __getitem__(self, name: str) -> E:
        return self.terms[name]

    def __repr__(self) -> str:
        return f"Vocabulary({self.title!r}, {list(self.terms)})"

    def where(self, keep: Callable[[E], bool]) -> tuple[str, ...]:
        """The names whose entry satisfies ``keep``, in order."""
        return tuple(n for n, t in self.terms.items() if keep(t))

    def literal(self) -> Any:
        """A ``Literal`` of the names, built at run time (for typer; mypy sees the option as ``str``)."""
        return Literal.__getitem__(self.names)  # type: ignore[attr-defined]

    def unknown(self, value: object, *, fix: str | None = None) -> ConfigError:
        """The error for a value outside the vocabulary: it names the field and lists the allowed names."""
        return ConfigError(f"unknown {self.title}", field=self.field, value=value,
                           fix=fix or f"use one of {', '.join(self.names)}")

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        # exactly what pydantic builds for Literal[names]: same validation, messages and JSON schema enum
        return core_schema.literal_schema(list(self.names))


class Registry(Mapping[str, T]):
    """The implementations of a vocabulary's names, one each (iterates in the vocabulary's order).

    Args:
        vocabulary: The names that may be registered.
        what: What an implementation is, for messages (e.g. ``"attention class"``).
    """

    def __init__(self, vocabulary: Vocabulary[Any], what: str) -> None:
        self.vocabulary = vocabulary
        self.what = what
        self._impl: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering its argument as the implementation of ``name``.

        Raises:
            ConfigError: ``name`` is not in the vocabulary, or already has an implementation.
        """
        if name not in self.vocabulary:
            raise ConfigError(f"cannot register a {self.what} for {name!r}: it is not a known "
                              f"{self.vocabulary.title}", field=self.vocabulary.field,
                              fix=f"add it to nas/vocab.py first; known: {', '.join(self.vocabulary.names)}")

        def deco(impl: T) -> T:
            if name in self._impl:
                raise ConfigError(f"{self.vocabulary.title} {name!r} already has a {self.what} "
                                  f"({getattr(self._impl[name], '__name__', self._impl[name])!r})",
                                  field=self.vocabulary.field, fix="register each name once")
            self._impl[name] = impl
            return impl

        return deco

    def register_class(self, name: str, attr: str) -> Callable[[T], T]:
        """Like :meth:`register`, for a class, which also gets ``name`` as its attribute ``attr``."""
        add = self.register(name)

        def deco(cls: T) -> T:
            add(cls)
            setattr(cls, attr, name)
            return cls

        return deco

    def missing(self) -> tuple[str, ...]:
        """Names of the vocabulary that have no implementation yet."""
        return tuple(n for n in self.vocabulary.names if n not in self._impl)

    def require_complete(self) -> None:
        """Raise unless every name of the vocabulary has an implementation."""
        gaps = self.missing()
        if gaps:
            raise ConfigError(f"{self.vocabulary.title} {', '.join(map(repr, gaps))} "
                              f"{'has' if len(gaps) == 1 else 'have'} no {self.what}",
                              field=self.vocabulary.field, fix=f"register a {self.what} for every name")

    def lookup(self, name: str) -> T:
        """The implementation of ``name``; an unknown name is a :class:`ConfigError` listing the names."""
        try:
            return self._impl[name]
        except KeyError:
            raise self.vocabulary.unknown(name) from None

    def __getitem__(self, name: str) -> T:
        return self._impl[name]

    def __iter__(self) -> Iterator[str]:
        return (n for n in self.vocabulary.names if n in self._impl)

    def __len__(self) -> int:
        return len(self._impl)


# ----------------------------------------------------------------------------------------- energy
#: ``MeasureConfig.meter`` and ``--meter``: which meter :func:`evaluators.meters.make_meter` builds.
METER: Vocabulary[Term] = Vocabulary("energy meter", "meter", [
    Term("auto", "nvml-counter on a CUDA device if it works, else nvml-power, else codecarbon if installed, "
                 "else estimate (quietly; debug log only)"),
    Term("nvml", "whichever NVML meter this GPU supports: the counter, else integrated power"),
    Term("nvml-counter", "GPU board energy counter (nvmlDeviceGetTotalEnergyConsumption, mJ), Volta and newer"),
    Term("nvml-power", "GPU board power polled every 20 ms and integrated (trapezoid); older GPUs"),
    Term("codecarbon", "CodeCarbon offline: CPU + GPU + RAM energy plus CO2eq"),
    Term("estimate", "CPU TDP x process CPU utilisation (always an estimate)"),
    Term("none", "no energy reading (energy_j is None)"),
])

#: The ``meter`` a reading carries (what produced the number).
METER_READING: Vocabulary[ReadingTerm] = Vocabulary("meter of a reading", "meter", [
    ReadingTerm("nvml-counter", "GPU board energy counter (mJ)"),
    ReadingTerm("nvml-power-integrated", "GPU board power polled and integrated (trapezoid)"),
    ReadingTerm("codecarbon", "CodeCarbon: an estimate whenever any part (CPU without RAPL, RAM) is modelled"),
    ReadingTerm("estimate", "CPU TDP x process utilisation", always_estimate=True),
    ReadingTerm("none", "no number"),
])

# ---------------------------------------------------------------------------------------- metrics
#: The metrics of a trial (the keys of :meth:`nas.records.TrialResult.objectives`). Those with
#: ``objective=True`` may be a study's objectives; every one is stored and usable in ``--where``.
OBJECTIVE: Vocabulary[MetricTerm] = Vocabulary("objective metric", "objectives.metric", [
    MetricTerm("accuracy", "dev-split accuracy", "maximize", "fraction"),
    MetricTerm("macro_f1", "dev-split macro-averaged F1", "maximize", "fraction"),
    MetricTerm("energy_per_sample_j", "inference energy per sample, gross (what the machine drew)",
               "minimize", "J", before_training="measured"),
    MetricTerm("energy_per_sample_net_j", "inference energy per sample, idle power subtracted", "minimize", "J",
               before_training="measured"),
    MetricTerm("latency_p50_ms", "median latency of one measurement batch", "minimize", "ms",
               before_training="measured"),
    MetricTerm("latency_p95_ms", "95th-percentile latency of one measurement batch", "minimize", "ms",
               before_training="measured"),
    MetricTerm("throughput_samples_s", "inference samples per second", "maximize", "samples/s", objective=False,
               before_training="measured"),
    MetricTerm("params", "parameter count of the compressed model", "minimize", "count", before_training="exact"),
    MetricTerm("size_bytes", "model size at its bit-widths", "minimize", "bytes", before_training="exact"),
    MetricTerm("flops_per_sample", "forward FLOPs per sample", "minimize", "FLOPs", before_training="exact"),
    MetricTerm("train_energy_j", "energy of the trial's training", "minimize", "J", objective=False),
])

# -------------------------------------------------------------------------------------- candidate
#: ``attention.kind``: implemented by :data:`nas.models.ATTENTION_REGISTRY`.
ATTENTION_KIND: Vocabulary[Term] = Vocabulary("attention kind", "attention.kind", [
    Term("softmax", "full softmax attention, O(T^2) (Vaswani et al., 2017)"),
    Term("local", "softmax within a band |i - j| <= window, in blocks: O(T window) (sliding window)"),
    Term("linear", "kernelised linear attention, feature map elu+1 or relu (Katharopoulos et al., 2020)"),
    Term("lowrank", "keys and values projected to length k (Linformer)"),
    Term("strided", "own block of `stride` tokens plus the same offset in every block, O(T sqrt T) "
         "(Sparse Transformer, Child et al., 2019)"),
    Term("fixed", "own block of `stride` tokens plus the last `summary` tokens of every block "
         "(Sparse Transformer's fixed pattern)"),
    Term("hash", "LSH buckets: sorted queries and keys attend chunk to chunk, O(T^2 / buckets) "
         "(Reformer, Kitaev et al., 2020; SMYRF)"),
])

#: ``sparsity.kind``: implemented by :func:`nas.compress.prune_`.
SPARSITY_KIND: Vocabulary[SparsityTerm] = Vocabulary("sparsity kind", "sparsity.kind", [
    SparsityTerm("none", "no pruning"),
    SparsityTerm("magnitude", "unstructured mask of the smallest |w| (dense kernels)", takes_amount=True),
    SparsityTerm("heads", "structured: whole attention heads removed", takes_amount=True),
    SparsityTerm("ffn", "structured: FFN hidden neurons removed", takes_amount=True),
    SparsityTerm("2:4", "semi-structured mask, 2 of every 4 weights (dense kernels)", fixed_amount=0.5),
])

#: ``sparsity.importance``: how pruning ranks weights, heads and neurons, implemented by
#: :data:`nas.compress.importance.IMPORTANCE`.
PRUNE_IMPORTANCE: Vocabulary[Term] = Vocabulary("pruning importance", "sparsity.importance", [
    Term("magnitude", "weight size: |w| per weight; the squared L2 norm of a head's q/k/v rows and out_proj columns, "
         "of a neuron's fc1 row and fc2 column"),
    Term("taylor", "first-order Taylor, from the task loss's gradients on 8 training batches: |w dL/dw| per weight; "
         "|dL/dgate| of a gate on each head's output (Michel et al., 2019) or FFN neuron"),
])

#: ``sparsity.schedule``: when pruning happens during training, implemented by
#: :data:`nas.compress.gradual.SCHEDULES`.
PRUNE_SCHEDULE: Vocabulary[Term] = Vocabulary("pruning schedule", "sparsity.schedule", [
    Term("one_shot", "all at once, after the dense half of the step budget, then fine-tuned"),
    Term("cubic", "gradual, s_t = s_f (1 - (1 - (t - t0) / (n dt))^3) over 10 steps from 10% to 70% of the budget, "
         "then fine-tuned (Zhu & Gupta, 2017); not for 2:4"),
])

#: ``sharing.kind``: cross-layer parameter sharing, implemented by :class:`nas.models.EncoderClassifier`.
SHARING_KIND: Vocabulary[Term] = Vocabulary("sharing kind", "sharing.kind", [
    Term("none", "every layer has its own weights"),
    Term("attention", "the layers of a group share one attention (q/k/v/out) (ALBERT's shared-attention variant)"),
    Term("ffn", "the layers of a group share one FFN (ALBERT's shared-FFN variant)"),
    Term("all", "the layers of a group share one whole block, LayerNorms included (ALBERT, Lan et al., 2020)"),
])

#: ``distill.kind``: cumulative loss terms, implemented by :class:`evaluators.distill.DistillLoss`.
DISTILL_KIND: Vocabulary[DistillTerm] = Vocabulary("distill kind", "distill.kind", [
    DistillTerm("none", "no teacher"),
    DistillTerm("logit", "KD on logits (Hinton et al., 2015)", losses=("logit",)),
    DistillTerm("hidden", "logit KD plus hidden-state MSE (TinyBERT)", losses=("logit", "hidden")),
    DistillTerm("attention", "logit and hidden KD plus attention-map KL", losses=("logit", "hidden", "attention")),
])

# ----------------------------------------------------------------------------------- search/export
#: ``sampler.kind``: implemented by :func:`nas.runner.samplers.make_sampler`.
SAMPLER: Vocabulary[Term] = Vocabulary("sampler", "sampler.kind", [
    Term("tpe", "Optuna's multivariate TPE with constant liar"),
    Term("nsga2", "Optuna's NSGA-II"),
    Term("gp", "Optuna's Gaussian-process sampler (needs scipy; at most 4 objectives); "
         "conditional knobs (e.g. window, k) are drawn at random"),
    Term("evolution", "regularized (aging) evolution (Real et al., 2019): tournaments of sample_size among "
         "the last population complete trials, one knob mutated; several objectives by rank and crowding"),
    Term("random", "uniform random search"),
])

#: Export formats: implemented by :data:`nas.export.EXPORTERS`, written by ``all`` in this order (all but
#: ``tensorrt``: :func:`nas.export.formats.all_formats`).
EXPORT_FORMAT: Vocabulary[Term] = Vocabulary("export format", "--format", [
    Term("onnx", "onnx/model.onnx (+ model.int8.onnx for 8-bit candidates)"),
    Term("torchscript", "torchscript/model.pt (torch.jit.trace)"),
    Term("hf", "hf/: weights, tokenizer and labels, loaded by nas.load"),
    Term("tensorrt", "tensorrt/model.engine: a TensorRT engine for this machine's NVIDIA GPU, built from the "
         "ONNX graph (needs tensorrt; not in all)"),
])

#: ``nas export --format`` and the HTTP export's ``format``: a format, or ``all`` of them.
EXPORT_CHOICE: Vocabulary[Term] = Vocabulary(
    "export format", "--format", [*EXPORT_FORMAT.terms.values(),
                                  Term("all", "every format above but tensorrt (ask for it by name)")]
)

#: Every vocabulary, by the heading of its table in ``docs/vocabularies.md``.
VOCABULARIES: dict[str, Vocabulary[Any]] = {
    "Energy meters (`--meter`, `measure.meter`)": METER,
    "Meters of a reading (`meter` of every energy figure)": METER_READING,
    "Metrics and objectives (`objectives[].metric`, `--where`)": OBJECTIVE,
    "Attention kinds (`attention.kind`)": ATTENTION_KIND,
    "Sparsity kinds (`sparsity.kind`)": SPARSITY_KIND,
    "Pruning importance (`sparsity.importance`)": PRUNE_IMPORTANCE,
    "Pruning schedules (`sparsity.schedule`)": PRUNE_SCHEDULE,
    "Distillation kinds (`distill.kind`)": DISTILL_KIND,
    "Parameter sharing (`sharing.kind`)": SHARING_KIND,
    "Samplers (`sampler.kind`)": SAMPLER,
    "Export formats (`nas export --format`, HTTP `format`)": EXPORT_CHOICE,
}


def _cell(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, tuple):
        return ", ".join(f"`{v}`" for v in value) or "--"
    if value is None:
        return "--"
    return str(value).replace("|", "\\|")


def table(vocabulary: Vocabulary[Any]) -> str:
    """A Markdown table of one vocabulary: name, description and the entry's other facts."""
    first = next(iter(vocabulary.terms.values()))
    extra = [f.name for f in fields(first) if f.name not in ("name", "about")]
    head = ["name", "meaning", *(e.replace("_", " ") for e in extra)]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for t in vocabulary.terms.values():
        cells = [f"`{t.name}`", _cell(t.about), *(_cell(getattr(t, e)) for e in extra)]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def markdown() -> str:
    """The whole of ``docs/vocabularies.md``."""
    parts = ["# Vocabularies", "",
             "<!-- Generated from nas/vocab.py (edit that, not this file): python -c \"import nas.vocab as v; "
             "print(v.markdown(), end='')\" > docs/vocabularies.md -->",
             "",
             "Every closed set of names the service accepts, from `nas/vocab.py` (the one list each: the spec's "
             "validation, the CLI choices, the HTTP parameters and the implementations are derived from it).",
             ""]
    for heading, vocabulary in VOCABULARIES.items():
        parts += [f"## {heading}", "", table(vocabulary), ""]
    return "\n".join(parts)
