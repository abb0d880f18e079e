"""Drawing the compression blocks of a candidate (quantization and sparsity), and the draw helpers they share.

Layer L1 of the search space: pure (no I/O, no torch). A knob offered with one choice is not an Optuna
parameter (:func:`categorical`), so a study that leaves a knob added later at its default samples and
replays exactly as before the knob existed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nas.config import PruneConfig, QuantConfig
from nas.vocab import SPARSITY_KIND

if TYPE_CHECKING:
    from search_spaces import SearchSpace, TrialLike

__all__ = ["categorical", "float_range", "suggest_quant", "suggest_sparsity"]


def float_range(trial: TrialLike, name: str, rng: tuple[float, float]) -> float:
    """A float drawn from ``rng``, or its one value when low equals high (then not a parameter)."""
    lo, hi = rng
    if lo == hi:
        return float(lo)
    return float(trial.suggest_float(name, lo, hi))


def categorical(trial: TrialLike, name: str, choices: list[Any]) -> Any:
    """``trial.suggest_categorical``, except that a knob with one choice is not a parameter."""
    return choices[0] if len(choices) == 1 else trial.suggest_categorical(name, choices)


def _bits(choice: Any) -> Any:
    """A drawn bit-width as the candidate takes it: ``"ternary"`` as is, a number as an int."""
    return choice if choice == "ternary" else int(choice)


def suggest_quant(trial: TrialLike, space: SearchSpace) -> QuantConfig:
    """The quantization block: bits per weight group, grid, and the activations' bits (a range only if quantized)."""
    activation_bits = int(categorical(trial, "activation_bits", space.activation_bits))
    activation_range = (str(categorical(trial, "activation_range", space.activation_range))
                        if activation_bits != 32 else "running")
    return QuantConfig(
        embedding_bits=_bits(trial.suggest_categorical("embedding_bits", space.embedding_bits)),
        attention_bits=_bits(trial.suggest_categorical("attention_bits", space.attention_bits)),
        ffn_bits=_bits(trial.suggest_categorical("ffn_bits", space.ffn_bits)),
        scheme=str(trial.suggest_categorical("quant_scheme", space.quant_scheme)),  # type: ignore[arg-type]
        granularity=str(trial.suggest_categorical("quant_granularity", space.quant_granularity)),  # type: ignore[arg-type]
        activation_bits=activation_bits,  # type: ignore[arg-type]
        activation_range=activation_range,  # type: ignore[arg-type]
    )


def suggest_sparsity(trial: TrialLike, space: SearchSpace, fewest_heads: int) -> PruneConfig:
    """The sparsity block: a kind, its amount (heads keep at least one per layer), importance and schedule.

    Importance is drawn unless nothing is pruned; a schedule only for kinds with an amount.
    """
    kind = str(trial.suggest_categorical("sparsity", space.sparsity))
    term = SPARSITY_KIND[kind]
    amount = 0.0
    if term.takes_amount:
        amount = round(float_range(trial, "sparsity_amount", space.sparsity_amount), 4)
        if kind == "heads" and round(fewest_heads * amount) >= fewest_heads:
            amount = round((fewest_heads - 1) / fewest_heads, 4)
    elif term.fixed_amount is not None:
        amount = term.fixed_amount
    if kind == "none":
        return PruneConfig()
    importance = str(categorical(trial, "prune_importance", space.prune_importance))
    schedule = str(categorical(trial, "prune_schedule", space.prune_schedule)) if term.takes_amount else "one_shot"
    return PruneConfig(kind=kind, amount=amount, importance=importance, schedule=schedule)
