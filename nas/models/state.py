"""Weights as a flat ``name -> tensor`` dict with shared tensors once (for safetensors), and back.

Cross-layer sharing (``candidate.sharing``) puts one module under several names, so ``state_dict()`` lists
its tensors once per layer. safetensors refuses tensors that share memory, and storing them twice would
double the file, so :func:`unique_state` keeps the first name of each tensor and :func:`load_unique_state`
loads such a dict strictly: every key must match, and the only keys it may lack are those other names.
"""

from __future__ import annotations

from torch import Tensor, nn

from nas.errors import ConfigError

__all__ = ["unique_state", "load_unique_state", "alias_keys"]


def _identity(t: Tensor) -> tuple[int, int, tuple[int, ...], tuple[int, ...]]:
    return t.untyped_storage().data_ptr(), int(t.storage_offset()), tuple(t.shape), tuple(t.stride())


def alias_keys(state: dict[str, Tensor]) -> set[str]:
    """Keys of ``state`` whose tensor is the same one as an earlier key's (a shared module's other names)."""
    seen: set[tuple[int, int, tuple[int, ...], tuple[int, ...]]] = set()
    aliases: set[str] = set()
    for key, t in state.items():
        ident = _identity(t)
        if ident in seen and t.numel() > 0:
            aliases.add(key)
        seen.add(ident)
    return aliases


def unique_state(model: nn.Module) -> dict[str, Tensor]:
    """``model.state_dict()`` on the CPU, contiguous, with each shared tensor under its first name only."""
    state = model.state_dict()
    aliases = alias_keys(state)
    return {k: v.detach().cpu().contiguous() for k, v in state.items() if k not in aliases}


def load_unique_state(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Load a dict written by :func:`unique_state` (or a full ``state_dict``) strictly.

    Raises:
        ConfigError: A key is unexpected, or one is missing that is not another name of a shared tensor.
    """
    result = model.load_state_dict(state, strict=False)
    missing = set(result.missing_keys) - alias_keys(model.state_dict())
    if missing or result.unexpected_keys:
        raise ConfigError(
            f"the weights do not match the model: missing {sorted(missing)[:5]}, unexpected "
            f"{sorted(result.unexpected_keys)[:5]}", field="weights",
            fix="load weights saved from this same candidate (re-export the trial)")
