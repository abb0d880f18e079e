"""Helpers shared by the compression modules (private)."""

from __future__ import annotations

from typing import Any, cast

from torch import nn
from torch.nn.utils import parametrize

from nas.errors import ConfigError

LayerGroups = dict[str, list[tuple[nn.Module, str]]]


def packed_int8_linears(model: nn.Module) -> list[nn.Module]:
    """Dynamically quantized Linear modules (their int8 weights are packed, not ``Parameter`` objects)."""
    return [m for m in model.modules() if hasattr(m, "_packed_params") and callable(getattr(m, "weight", None))]


def num_params(model: nn.Module) -> int:
    """Stored parameter elements.

    A parametrized weight counts its ``original`` once (masks are buffers, not parameters); the packed
    weights and biases of int8 dynamic Linear layers are counted too.
    """
    total = sum(p.numel() for p in model.parameters())
    for m in packed_int8_linears(model):
        packed: Any = m  # weight() and bias() are methods on dynamic quantized Linear
        total += packed.weight().numel()
        bias = packed.bias()
        total += bias.numel() if bias is not None else 0
    return total


def layer_groups(model: nn.Module) -> LayerGroups:
    """The model's compressible layer groups, from its ``layer_groups()`` method.

    Raises:
        ConfigError: If the model does not describe its layer groups.
    """
    fn = getattr(model, "layer_groups", None)
    if not callable(fn):
        raise ConfigError(
            f"{type(model).__name__} does not describe its layer groups",
            field="model",
            fix="pass a model built by nas.models.build (it has layer_groups())",
        )
    groups: LayerGroups = fn()
    return groups


def qualified_names(model: nn.Module) -> dict[int, str]:
    """``id(module) -> fully qualified name`` for every submodule."""
    return {id(m): name for name, m in model.named_modules()}


def bake_parametrization(module: nn.Module, name: str) -> None:
    """Bake one parametrization of ``module`` into a plain tensor, touching ``module`` only.

    ``parametrize`` gives a parametrized module a dynamically created class that holds the parametrized
    property. ``copy.deepcopy`` shares that class between the original and the copy, and removing the
    last parametrization deletes the property from the class, which would strip ``weight`` from the
    original as well (the serving copy of a compressed trial broke FLOP counting and retraining this
    way). So the module first gets a private copy of its class.
    """
    cls = type(module)
    module.__class__ = type(cls.__name__, cls.__bases__, dict(cls.__dict__))
    parametrize.remove_parametrizations(module, name, leave_parametrized=True)


def bake_all_parametrizations(module: nn.Module) -> list[str]:
    """Bake every parametrization of ``module`` (see :func:`bake_parametrization`); returns their names."""
    if not parametrize.is_parametrized(module):
        return []
    names = list(cast(nn.ModuleDict, module.parametrizations).keys())
    for pname in names:
        bake_parametrization(module, pname)
    return names
