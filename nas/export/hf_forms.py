"""The two forms of an ``hf/`` folder's model, both loaded by ``transformers``, and reading them back.

* **standard** (:mod:`nas.export.hf_standard`): a candidate that is a BERT or DistilBERT is written as one:
  the family's ``config.json`` (plus our keys) and its key names in ``model.safetensors``, fp32.
  ``AutoModelForSequenceClassification.from_pretrained(folder)`` loads it with no custom code. When the
  candidate has quantized weights, ``nas_packed.safetensors`` holds them packed too (what :func:`nas.load`
  reads, and the size the trial reported).
* **custom code** (every other candidate): ``model_type: energy-nas``, our key names in ``model.safetensors``
  with quantized weights packed (:mod:`nas.compress.pack`), ``modeling_energy_nas.py``
  (:mod:`nas.export.hf_bundle`) and ``auto_map``, so the same call with ``trust_remote_code=True`` loads it.
  ``config.json``'s ``nas_served`` holds the served model's shapes, which the file builds it from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from nas.compress.act_quant import activation_quantizers
from nas.compress.pack import PackPlan, pack_state, unpack_state
from nas.errors import ExportError
from nas.models import EncoderClassifier, LowRankLinear, unique_state
from nas.models.state import _identity, alias_keys

from .hf_bundle import auto_map, write_modeling
from .hf_modeling import WEIGHTS_FILE, build_served
from .hf_standard import (
    STANDARD_FAMILIES,
    from_standard,
    standard_config,
    standard_family,
    to_standard,
    why_not_standard,
)

__all__ = ["WEIGHTS_FILE", "PACKED_FILE", "served_description", "write_model", "read_state", "transformers_call"]

#: The packed companion of a standard-form folder with quantized weights (our key names).
PACKED_FILE = "nas_packed.safetensors"
_FIX = "re-export the model with `nas export`"


def _rank(layer: object) -> int | None:
    return int(layer.rank) if isinstance(layer, LowRankLinear) else None


def served_description(model: EncoderClassifier) -> dict[str, Any]:
    """``nas_served``: what :class:`~nas.export.hf_modeling.ServedCandidate` builds the served model from."""
    cand, blocks = model.candidate, model.iter_blocks()
    part = {"all": lambda b: b, "attention": lambda b: b.attn, "ffn": lambda b: b.ffn}.get(cand.sharing.kind)
    owners = [next(i for i in range(j + 1) if part(blocks[i]) is part(blocks[j])) if part else j
              for j in range(len(blocks))]
    state = model.state_dict()
    shared = alias_keys(state)  # a shared tensor's other names, each mapped to the name it is stored under
    stored = {_identity(t): k for k, t in state.items() if k not in shared}
    aliases = {k: stored[_identity(state[k])] for k in shared}
    a = cand.attention
    quantized = activation_quantizers(model)
    activation = None if not quantized else {"bits": cand.quant.activation_bits, "range": cand.quant.activation_range,
                                             "linears": sorted(quantized)}
    return {
        "d_model": cand.d_model, "max_len": cand.max_len, "dropout": cand.dropout, "norm": cand.norm,
        "layer_norm_eps": cand.layer_norm_eps, "pooling": cand.pooling, "pooler": cand.pooler,
        "attention": {"kind": a.kind, "window": a.window, "k": a.k, "stride": a.stride, "buckets": a.buckets,
                      "resolved_feature_map": a.resolved_feature_map, "resolved_summary": a.resolved_summary},
        "sharing": cand.sharing.kind, "owners": owners,
        "layers": [{"n_heads": int(b.attn.n_heads), "head_dim": int(b.attn.head_dim),
                    "attention_width": int(b.attn.n_heads * b.attn.head_dim), "d_ffn": int(b.ffn.d_ffn),
                    "rank": {"attention": _rank(b.attn.q_proj), "ffn": _rank(b.ffn.fc1)}} for b in blocks],
        "aliases": aliases,
        **({"activation": activation} if activation else {}),
    }


def transformers_call(family: str | None) -> str:
    """How ``transformers`` loads a folder of this form (for ``config.json``, the card and the docs)."""
    remote = "" if family else ", trust_remote_code=True"
    return f"AutoModelForSequenceClassification.from_pretrained(folder{remote})"


def _unbuilt(model: EncoderClassifier, served: dict[str, Any]) -> list[str]:
    """The tensors of ``model`` that the custom-code model built from ``served`` lacks, adds or shapes otherwise."""
    with torch.device("meta"):  # no memory, no initialisation cost
        probe = build_served(served, vocab_size=model.vocab_size, num_labels=model.num_labels)
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in probe.state_dict().items()}
    return sorted(k for k in want.keys() | got.keys() if want.get(k) != got.get(k))


def write_model(folder: Path, model: EncoderClassifier, pack: PackPlan, config: dict[str, Any]) -> dict[str, Any]:
    """Write the weights (and, for custom code, ``modeling_energy_nas.py``) into ``folder``.

    Args:
        folder: The ``hf/`` folder.
        model: The served model, plain weights.
        pack: Which weights to store packed.
        config: Our ``config.json`` keys (candidate, labels, ids, provenance).

    Returns:
        The whole ``config.json``: ``config`` plus the form's keys.
    """
    state = unique_state(model)
    packed, meta = pack_state(state, pack)
    family = standard_family(model.candidate)
    if family is None:
        save_file(packed, str(folder / WEIGHTS_FILE), metadata={"format": "pt", **meta})
        served = served_description(model)
        unbuilt = _unbuilt(model, served)
        if unbuilt:  # the folder still loads with nas.load; transformers is not told it can load it
            why = f"modeling_energy_nas.py does not build {unbuilt[:3]}"
            return {**config, "architectures": ["EncoderClassifier"], "nas_transformers": None,
                    "nas_transformers_unsupported": why}
        write_modeling(folder)
        return {**config, "architectures": ["EnergyNasForSequenceClassification"], "auto_map": auto_map(),
                "nas_transformers": transformers_call(None), "nas_custom_code_because": why_not_standard(model.candidate),
                "nas_served": served}
    full = {**config, **standard_config(family, model), "nas_transformers": transformers_call(family)}
    save_file(to_standard(state, full), str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    if pack:
        save_file(packed, str(folder / PACKED_FILE), metadata={"format": "pt", **meta})
    return full


def _read(path: Path) -> tuple[dict[str, Tensor], PackPlan]:
    if not path.is_file():
        raise ExportError(f"{path.parent}: {path.name} is missing", field="path", fix=_FIX)
    try:
        with safe_open(str(path), framework="pt") as f:
            raw, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()  # noqa: SIM118
    except Exception as e:  # safetensors raises its own SafetensorError on a damaged file
        raise ExportError(f"{path}: unreadable ({' '.join(str(e).split())})", field=path.name, fix=_FIX) from e
    return unpack_state(raw, meta)


def read_state(folder: Path, model_type: str, model: EncoderClassifier) -> tuple[dict[str, Tensor], PackPlan]:
    """The served state of ``model`` from either form, with the packing plan to write it again.

    Raises:
        ExportError: A weights file is missing, unreadable or damaged.
    """
    if model_type not in STANDARD_FAMILIES:
        return _read(folder / WEIGHTS_FILE)
    if (folder / PACKED_FILE).is_file():
        return _read(folder / PACKED_FILE)
    state, plan = _read(folder / WEIGHTS_FILE)
    return from_standard(state, model_type, model), plan
