"""The ``transformers`` face of an exported model: a config class and a sequence classifier around our encoder.

This module is shipped inside an ``hf/`` folder as ``modeling_energy_nas.py`` (:mod:`nas.export.hf_bundle`
writes it: the model's own source from :mod:`nas.models`, the unpacking of :mod:`nas.compress.pack`, then
this module, with every ``nas`` import removed), so that::

    AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)

runs the exported model where energy-nas is not installed. It may therefore import only the standard
library, ``torch``, ``safetensors`` and ``transformers``, besides the ``nas`` names the bundle carries.

A :class:`~nas.config.Candidate` is a pydantic record, which the bundle cannot carry; the model is built
from ``config.nas_served`` instead: the served model's resolved shapes (after pruning, low-rank
factorisation and dropped layers), written at export from the model itself. :class:`ServedCandidate` gives
the encoder the attributes it reads of a candidate, read from that record, and computes nothing itself.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from safetensors import safe_open
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.utils import cached_file  # type: ignore[attr-defined]

from nas.compress.act_quant import ActivationQuant, _mark_ready, quantize_activations_
from nas.compress.pack import unpack_state
from nas.models.encoder import EncoderClassifier

__all__ = ["ServedCandidate", "EnergyNasConfig", "EnergyNasForSequenceClassification", "read_weights",
           "build_served"]

#: The weights file of an ``hf/`` folder.
WEIGHTS_FILE = "model.safetensors"
#: ``from_pretrained`` arguments that say where to find the files (passed to ``cached_file``).
_HUB_ARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder", "proxies")
#: Where the encoder sits in the ``transformers`` model (its state-dict keys start with it).
_PREFIX = "model."


class _Record:
    """The values of a JSON object as attributes (``attention`` of ``nas_served``)."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__.update(values)


class _ServedRank:
    """``rank.of(group, in, out)``: the rank each group's Linears of one layer were served at (None: dense)."""

    def __init__(self, ranks: dict[str, int | None]) -> None:
        self.ranks = ranks

    def of(self, group: str, in_features: int, out_features: int) -> int | None:
        """The served rank of ``group`` in this layer (the shapes are those the record was written for)."""
        return self.ranks.get(group)


class _ServedSharing:
    """``sharing.owner(layer, n)``: the served layer whose shared modules ``layer`` uses."""

    def __init__(self, kind: str, owners: list[int]) -> None:
        self.kind = kind
        self.owners = owners

    def owner(self, layer: int, n_layers: int) -> int:
        """The first served layer that holds ``layer``'s shared module (``layer`` itself when none is shared)."""
        return int(self.owners[layer])


class ServedCandidate:
    """What :class:`~nas.models.EncoderClassifier` reads of a candidate, for the served model, from ``nas_served``.

    Args:
        served: The ``nas_served`` record of ``config.json``.
        layer: Which layer's shape the per-layer attributes (``n_heads``, ``d_ffn``, ``rank``) hold.
    """

    def __init__(self, served: dict[str, Any], layer: int = 0) -> None:
        self.served = served
        for key in ("d_model", "max_len", "dropout", "norm", "layer_norm_eps", "pooling", "pooler"):
            setattr(self, key, served[key])
        self.attention = _Record(served["attention"])
        self.sharing = _ServedSharing(served["sharing"], served["owners"])
        self.n_layers = len(served["layers"])
        self.layerdrop = 0.0
        self.infer_layers = None
        shape = served["layers"][layer]
        self.n_heads = int(shape["n_heads"])
        self.head_dim = int(shape["head_dim"])
        self.resolved_head_dim = self.head_dim
        self.attention_width = int(shape["attention_width"])
        self.d_ffn = int(shape["d_ffn"])
        self.rank = _ServedRank(shape["rank"])

    @property
    def kept_layers(self) -> tuple[int, ...]:
        """Every served layer (layers dropped for inference are gone from the record already)."""
        return tuple(range(self.n_layers))

    def for_layer(self, i: int) -> ServedCandidate:
        """The record as layer ``i`` sees it."""
        return ServedCandidate(self.served, i)


def build_served(served: dict[str, Any], *, vocab_size: int, num_labels: int) -> EncoderClassifier:
    """The served encoder ``nas_served`` describes: its layers, and its activation grids (``activation``)."""
    model = EncoderClassifier(ServedCandidate(served), vocab_size=vocab_size, num_labels=num_labels)  # type: ignore[arg-type]
    model.keep_inference_layers_()
    act = served.get("activation")
    if act:
        modules = dict(model.named_modules())
        quantize_activations_(model, [(n, modules[n]) for n in act["linears"]], int(act["bits"]), act["range"])
    return model


def _ranges_loaded(model: torch.nn.Module) -> None:
    """Activation ranges read by ``transformers``' loader (which runs no load hooks) count as trained."""
    for m in model.modules():
        if isinstance(m, ActivationQuant):
            _mark_ready(m, None)  # the rule load_state_dict applies


class EnergyNasConfig(PretrainedConfig):  # type: ignore[no-untyped-call]
    """``config.json`` of an energy-nas export: ``nas_served`` builds the model; the rest is provenance.

    Args:
        nas_served: The served model's resolved shapes (see :class:`ServedCandidate`).
        candidate: The searched candidate, as JSON (for people; the model is built from ``nas_served``).
        max_len: Tokens per encoded row, ``[CLS]`` and ``[SEP]`` included.
    """

    model_type = "energy-nas"

    def __init__(self, nas_served: dict[str, Any] | None = None, candidate: dict[str, Any] | None = None,
                 max_len: int = 128, **kwargs: Any) -> None:
        self.nas_served = nas_served or {}
        self.candidate = candidate or {}
        self.max_len = max_len
        super().__init__(**kwargs)


def read_weights(path: str, served: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The model's state dict from an export's ``model.safetensors``.

    Packed low-bit weights are unpacked to their exact fp32 values, and each shared tensor is given under
    every name the model has for it.
    """
    with safe_open(path, framework="pt") as f:
        state, _ = unpack_state({k: f.get_tensor(k) for k in f.keys()}, f.metadata())  # noqa: SIM118
    state = {k.removeprefix(_PREFIX): v for k, v in state.items()}
    for alias, source in served.get("aliases", {}).items():
        state.setdefault(alias, state[source])
    return {_PREFIX + k: v for k, v in state.items()}


class EnergyNasForSequenceClassification(PreTrainedModel):  # type: ignore[no-untyped-call]
    """An energy-nas encoder classifier as a ``transformers`` model: ``model(input_ids, attention_mask).logits``."""

    config_class = EnergyNasConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"

    def __init__(self, config: EnergyNasConfig) -> None:
        super().__init__(config)
        self.model = build_served(config.nas_served, vocab_size=config.vocab_size,
                                  num_labels=int(config.num_labels or 2))
        # layers sharing weights (candidate.sharing) hold one tensor under several names: transformers saves it once
        self._tied_weights_keys = {_PREFIX + a: _PREFIX + s for a, s in config.nas_served.get("aliases", {}).items()}
        self.post_init()  # type: ignore[no-untyped-call]

    def _init_weights(self, module: torch.nn.Module) -> None:
        """Nothing: the encoder initialises itself, and :meth:`from_pretrained` loads every weight."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, *model_args: Any, **kwargs: Any) -> Any:
        """``transformers``' loader, given the state dict that :func:`read_weights` makes of the folder's file."""
        if pretrained_model_name_or_path is None or kwargs.get("state_dict") is not None:
            return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        hub = {k: kwargs.pop(k) for k in _HUB_ARGS if k in kwargs}
        config = kwargs.pop("config", None)
        if not isinstance(config, PretrainedConfig):
            config = cls.config_class.from_pretrained(config or pretrained_model_name_or_path, **hub)
        path = cached_file(pretrained_model_name_or_path, WEIGHTS_FILE, **hub)
        state = read_weights(str(path), config.nas_served)
        loaded = super().from_pretrained(None, *model_args, config=config, state_dict=state, **kwargs)
        _ranges_loaded(loaded[0] if isinstance(loaded, tuple) else loaded)  # (model, info) with output_loading_info
        return loaded

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, output_hidden_states: bool | None = None,
                output_attentions: bool | None = None, **kwargs: Any) -> SequenceClassifierOutput:
        """Logits ``(B, num_labels)``; with ``labels``, the cross-entropy loss too. ``token_type_ids`` are ignored."""
        out = self.model(input_ids, attention_mask=attention_mask, output_hidden_states=bool(output_hidden_states),
                         output_attentions=bool(output_attentions))
        loss = F.cross_entropy(out.logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=out.logits, hidden_states=out.hidden_states,
                                        attentions=out.attentions)
