"""Weight fake-quantization (QAT with a straight-through estimator) and the real int8 CPU path.

Quantization is a parametrization (``torch.nn.utils.parametrize``) on each selected weight, so:

- the model keeps training after :func:`quantize_` (the STE passes gradients straight to the fp32
  ``original``; Bengio et al., 2013; the QAT recipe of Jacob et al., 2018);
- ``state_dict`` keys become ``<module>.parametrizations.weight.original``; a freshly built model given the
  same compression has the same keys, so checkpoints round-trip;
- the forward graph is plain ``abs/amax/div/round/clamp/mul``, which ``torch.jit.trace`` and
  ``torch.onnx.export`` handle.

Scales are recomputed from the weight at every forward (a min/max weight observer). During inference the
recomputation costs time and energy that a real low-bit kernel would not spend: measure inside
``torch.nn.utils.parametrize.cached()`` or call :func:`nas.compress.materialize_` first.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from collections.abc import Callable
from typing import cast

import torch
from torch import Tensor, nn
from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic
from torch.nn.utils import parametrize

from nas.config import QuantConfig
from nas.errors import ConfigError

from ._util import LayerGroups, bake_all_parametrizations, layer_groups, num_params, qualified_names
from .act_quant import convert_static_int8_, quantize_activations_
from .report import CompressionReport

__all__ = ["FakeQuantize", "QuantGrid", "TERNARY_THRESHOLD", "quantize_", "convert_int8_for_cpu", "int8_backend", "fake_quant_description"]

log = logging.getLogger(__name__)

#: ``filter_fn(module, fqn) -> bool``; fqn is the weight's qualified name, e.g. ``blocks.0.ffn.fc1.weight``.
FilterFn = Callable[[nn.Module, str], bool]

_GROUP_BITS = {"embedding": "embedding_bits", "attention": "attention_bits", "ffn": "ffn_bits"}


#: 0.7 x mean|w|: TernaryBERT's threshold (Zhang et al., 2020, after Li & Liu's ternary weight networks).
TERNARY_THRESHOLD = 0.7


@dataclasses.dataclass(frozen=True)
class QuantGrid:
    """A weight on its grid: ``value = (codes - zero_point) * scale``, exactly what the forward returns.

    Attributes:
        codes: Unsigned integer codes, ``0 .. 2**storage_bits - 1`` (int64, the weight's shape).
        scale: One scale per output channel (shape ``(out, 1, ...)``) or per tensor.
        zero_point: The same shape as ``scale``: an integer code for uniform grids, 0.5 for binary
            (scale ``2a``, so the values are ``(c - 0.5) * 2a = +-a``), 1 for ternary.
        storage_bits: Bits per stored code (ternary: 2).
    """

    codes: Tensor
    scale: Tensor
    zero_point: Tensor
    storage_bits: int

    def value(self) -> Tensor:
        """The dequantized weight."""
        out: Tensor = (self.codes.to(self.scale.dtype) - self.zero_point) * self.scale
        return out


def _channel_stat(x: Tensor, per_channel: bool, op: str) -> Tensor:
    """``x.amax/amin/mean/sum`` over every dim but 0 (kept, for broadcasting) when ``per_channel``, else over all."""
    if per_channel and x.dim() > 1:
        return cast(Tensor, getattr(x, op)(dim=tuple(range(1, x.dim())), keepdim=True))
    return cast(Tensor, getattr(x, op)())


class FakeQuantize(nn.Module):
    """Parametrization ``w -> dequant(quant(w))`` with a straight-through gradient.

    Grids (:meth:`grid`), per output row (dim 0) with ``per_channel`` or one for the tensor:

    * uniform symmetric (16 > bits >= 2): ``q = clamp(round(w / s), -(2^(b-1) - 1), 2^(b-1) - 1)``,
      ``s = max|w| / (2^(b-1) - 1)`` (the restricted range, so 0 is exact; 2 bits gives {-s, 0, s} with
      ``s = max|w|``);
    * uniform asymmetric: ``q = clamp(round(w / s) + z, 0, 2^b - 1)``, ``s = (max - min) / (2^b - 1)`` with
      the range widened to include 0 and an integer zero-point ``z``, so 0 stays exact;
    * ``bits == 1``, binary (BinaryBERT, Bai et al., 2021; XNOR-Net's scale): ``sign(w) * a`` with
      ``a = mean|w|``;
    * ``bits == "ternary"`` (TernaryBERT, Zhang et al., 2020): ``a * sign(w)`` where ``|w| > 0.7 mean|w|``,
      else 0, with ``a`` the mean ``|w|`` above that threshold. Stored in 2-bit codes.

    Binary and ternary have their own symmetric rule: ``scheme`` applies to the uniform grids only.
    ``bits == 16`` rounds to bfloat16 and back (a bf16 storage simulation).

    The forward value is exactly :meth:`QuantGrid.value`: the STE is written ``deq + (w - w.detach())``,
    which adds an exact zero, so the values lie on the grid bit for bit.

    Args:
        bits: 16, 8, 4, 2, 1 or ``"ternary"``.
        scheme: ``"symmetric"`` or ``"asymmetric"``.
        granularity: ``"per_channel"`` or ``"per_tensor"``.
    """

    def __init__(self, bits: int | str, scheme: str = "symmetric", granularity: str = "per_channel") -> None:
        super().__init__()
        if bits not in (16, 8, 4, 2, 1, "ternary"):
            raise ConfigError("fake-quant bit-width must be 16, 8, 4, 2, 1 or ternary", field="bits", value=bits,
                              fix="use 32 to leave a group unquantized")
        if scheme not in ("symmetric", "asymmetric"):
            raise ConfigError("unknown quantization scheme", field="quant.scheme", value=scheme,
                              fix="use 'symmetric' or 'asymmetric'")
        if granularity not in ("per_channel", "per_tensor"):
            raise ConfigError("unknown quantization granularity", field="quant.granularity",
                              value=granularity, fix="use 'per_channel' or 'per_tensor'")
        self.bits = bits
        self.scheme = scheme
        self.granularity = granularity

    def extra_repr(self) -> str:
        """The bit-width, scheme and granularity, for ``print(model)``."""
        return f"bits={self.bits}, scheme={self.scheme}, granularity={self.granularity}"

    @property
    def storage_bits(self) -> int:
        """Bits per stored weight: 2 for ternary, else the bit-width."""
        return 2 if self.bits == "ternary" else int(self.bits)

    @property
    def stores_zero_point(self) -> bool:
        """Whether each channel stores a zero-point (uniform asymmetric only; the others' is implied)."""
        return self.scheme == "asymmetric" and self.bits not in (1, "ternary", 16)

    def n_channels(self, shape: torch.Size) -> int:
        """Number of scales (and zero-points) stored for a weight of ``shape``."""
        if self.bits == 16:
            return 0
        return int(shape[0]) if self.granularity == "per_channel" and len(shape) > 1 else 1

    def grid(self, w: Tensor) -> QuantGrid:
        """``w`` (detached) on this quantizer's grid: codes, scales and zero-points (not for 16 bits)."""
        w = w.detach()
        per = self.granularity == "per_channel"
        tiny = torch.finfo(w.dtype).tiny
        if self.bits == 1:
            scale = 2 * _channel_stat(w.abs(), per, "mean")
            return QuantGrid((w >= 0).long(), scale, torch.full_like(scale, 0.5), 1)
        if self.bits == "ternary":
            keep = w.abs() > TERNARY_THRESHOLD * _channel_stat(w.abs(), per, "mean")
            n_kept = _channel_stat(keep.to(w.dtype), per, "sum").clamp(min=1.0)
            scale = _channel_stat(w.abs() * keep, per, "sum") / n_kept
            return QuantGrid((torch.sign(w) * keep + 1).long(), scale, torch.ones_like(scale), 2)
        w_min, w_max = _channel_stat(w, per, "amin"), _channel_stat(w, per, "amax")
        bits = int(self.bits)
        if self.scheme == "symmetric":
            q_max = 2 ** (bits - 1) - 1
            scale = (torch.maximum(w_max.abs(), w_min.abs()) / q_max).clamp(min=tiny)
            q = torch.clamp(torch.round(w / scale), -q_max, q_max)
            return QuantGrid((q + q_max).long(), scale, torch.full_like(scale, float(q_max)), bits)
        levels = 2**bits - 1
        lo, hi = w_min.clamp(max=0.0), w_max.clamp(min=0.0)
        scale = ((hi - lo) / levels).clamp(min=tiny)
        zero_point = torch.round(-lo / scale)
        q = torch.clamp(torch.round(w / scale) + zero_point, 0, levels)
        return QuantGrid(q.long(), scale, zero_point, bits)

    def forward(self, w: Tensor) -> Tensor:
        """The dequantized weight (its value on the grid), with a straight-through gradient."""
        if self.bits == 16:
            deq = w.to(torch.bfloat16).to(w.dtype)
            return deq.detach() + (w - w.detach())
        out: Tensor = self.grid(w).value() + (w - w.detach())  # value == grid exactly; d/dw == 1 (STE)
        return out


def fake_quant_description(cfg: QuantConfig) -> str:
    """Human-readable ``kernels`` text for a fake-quant config."""
    names = {16: "bf16", 1: "binary", "ternary": "ternary"}
    parts = []
    for group, attr in _GROUP_BITS.items():
        bits = getattr(cfg, attr)
        if bits == 32:
            continue
        parts.append(f"{group} {names.get(bits, f'int{bits}')}")
    what = []
    if parts:
        what.append(f"weights ({', '.join(parts)}; {cfg.granularity.replace('_', '-')} {cfg.scheme})")
    if cfg.activation_bits != 32:
        what.append(f"Linear inputs (int{cfg.activation_bits} per-tensor affine, {cfg.activation_range} range)")
    if not what:
        return "dense fp32 (no quantization)"
    return f"fake-quant {' and '.join(what)} (fp32 compute, no energy saving)"


def _activation_linears(model: nn.Module, groups: LayerGroups) -> list[tuple[str, nn.Linear]]:
    """``(fqn, module)`` of each distinct ``nn.Linear`` in the attention and FFN groups."""
    names = qualified_names(model)
    seen: dict[int, tuple[str, nn.Linear]] = {}
    for group in ("attention", "ffn"):
        for module, _ in groups[group]:
            if isinstance(module, nn.Linear):
                seen.setdefault(id(module), (names.get(id(module), "?"), module))
    return list(seen.values())


def _has_fake_quant(module: nn.Module, name: str) -> bool:
    if not parametrize.is_parametrized(module, name):
        return False
    plist = cast(nn.ModuleDict, module.parametrizations)[name]
    return any(isinstance(p, FakeQuantize) for p in cast(nn.ModuleList, plist))


def quantize_(model: nn.Module, quant_config: QuantConfig, filter_fn: FilterFn | None = None) -> CompressionReport:
    """Fake-quantize the weights of each layer group in place (torchao-style ``quantize_``).

    Groups: ``embedding`` (token and position tables), ``attention`` (q/k/v/out projections and
    Linformer E/F), ``ffn`` (fc1/fc2). A group at 32 bits is left alone; biases, LayerNorms and the
    classifier head stay fp32. The model stays trainable (straight-through estimator).

    Args:
        model: A model from :func:`nas.models.build` (anything with ``layer_groups()``).
        quant_config: Bits per group, scheme and granularity.
        filter_fn: Optional ``filter_fn(module, fqn) -> bool``; a weight is quantized only if it returns
            True. ``fqn`` is the weight's qualified name, e.g. ``"blocks.0.ffn.fc1.weight"``.

    Returns:
        A :class:`CompressionReport` with ``simulated=True`` (fake-quant saves no energy).

    Raises:
        ConfigError: If a weight is already fake-quantized, or the model has no layer groups.
    """
    if not isinstance(quant_config, QuantConfig):
        raise ConfigError(f"quantize_ needs a QuantConfig, got {type(quant_config).__name__}",
                          field="quant_config", fix="pass nas.config.QuantConfig(...)")
    before = num_params(model)
    names = qualified_names(model)
    done: dict[str, list[str]] = {}
    for group, pairs in layer_groups(model).items():
        bits = getattr(quant_config, _GROUP_BITS[group])
        if bits == 32:
            continue
        for module, pname in pairs:
            fqn = f"{names.get(id(module), '?')}.{pname}"
            if filter_fn is not None and not filter_fn(module, fqn):
                continue
            if _has_fake_quant(module, pname):
                raise ConfigError(
                    "weight is already fake-quantized",
                    field=fqn,
                    fix="quantize a freshly built model, or call quantize_ once per model",
                )
            parametrize.register_parametrization(
                module, pname, FakeQuantize(bits, quant_config.scheme, quant_config.granularity)
            )
            done.setdefault(group, []).append(fqn)
    if quant_config.activation_bits != 32:
        done["activations"] = quantize_activations_(model, _activation_linears(model, layer_groups(model)),
                                                    int(quant_config.activation_bits), quant_config.activation_range)
    log.info("fake-quantized %d weights and Linear inputs: %s", sum(len(v) for v in done.values()),
             {g: len(v) for g, v in done.items()})
    return CompressionReport(
        kernels=fake_quant_description(quant_config),
        simulated=True,
        params_before=before,
        params_after=num_params(model),
        details={
            "step": "quantize",
            "embedding_bits": quant_config.embedding_bits,
            "attention_bits": quant_config.attention_bits,
            "ffn_bits": quant_config.ffn_bits,
            "scheme": quant_config.scheme,
            "granularity": quant_config.granularity,
            "activation_bits": quant_config.activation_bits,
            "activation_range": quant_config.activation_range,
            "quantized": done,
        },
    )


def int8_backend() -> str | None:
    """The quantized CPU engine that can run int8 dynamic Linear here, or None.

    Probed, not assumed: a tiny dynamically quantized Linear must run on the current engine.
    """
    engines = torch.backends.quantized.supported_engines
    engine = torch.backends.quantized.engine
    if engine in (None, "none") or engine not in engines:
        preferred = [e for e in ("x86", "fbgemm", "qnnpack", "onednn") if e in engines]
        if not preferred:
            return None
        engine = preferred[0]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.backends.quantized.engine = engine
            probe = quantize_dynamic(  # type: ignore[no-untyped-call]
                nn.Sequential(nn.Linear(4, 4)), {nn.Linear}, dtype=torch.qint8)
            probe(torch.zeros(1, 4))
    except Exception as e:  # any failure means "no real int8 kernel here"
        log.info("int8 dynamic quantization unavailable on engine %s: %s", engine, e)
        return None
    return str(engine)


def _int8_quant_config(model: nn.Module, quant_config: QuantConfig | None) -> QuantConfig:
    """The quant config to follow (given, else ``model.candidate.quant``), once the model is on the CPU.

    Raises:
        ConfigError: If no quant config can be found, or the model is not on the CPU.
    """
    if quant_config is None:
        cand = getattr(model, "candidate", None)
        if cand is None:
            raise ConfigError("no quantization config to follow", field="quant_config",
                              fix="pass quant_config= or use a model built by nas.models.build")
        quant_config = cand.quant
    if any(p.device.type != "cpu" for p in model.parameters()):
        raise ConfigError("int8 dynamic quantization runs on the CPU only", field="model.device",
                          fix="call model.cpu() first, or keep the fake-quant model on the GPU")
    return quant_config


def _int8_targets(model: nn.Module, quant_config: QuantConfig, groups: LayerGroups) -> list[str]:
    """Qualified names of the ``nn.Linear`` layers in 8-bit attention/FFN groups."""
    names = qualified_names(model)
    targets: list[str] = []
    for group in ("attention", "ffn"):
        if getattr(quant_config, _GROUP_BITS[group]) != 8:
            continue
        for module, pname in groups[group]:
            if isinstance(module, nn.Linear) and pname == "weight":
                targets.append(names[id(module)])
    return targets


def _quantize_linears(model: nn.Module, targets: list[str], granularity: str) -> tuple[list[str], list[str]]:
    """Bake each target's masks and fake-quant grid, then swap it for an int8 Linear in place.

    A target whose input is quantized at 8 bits (and trained) becomes a static int8 x int8 Linear with its
    trained input range; the others become int8 dynamic Linears (activations quantized on the fly), keeping
    a fake-quant input grid of another bit-width in front of them.

    Returns:
        ``(static, dynamic)``: the qualified names converted each way.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization deprecation notices
        qconfig = per_channel_dynamic_qconfig if granularity == "per_channel" else default_dynamic_qconfig
        modules = dict(model.named_modules())
        for fqn in targets:
            # Bake masks and the fake-quant grid into a plain weight; the class reverts to nn.Linear.
            bake_all_parametrizations(modules[fqn])
        static = convert_static_int8_(model, targets)
        dynamic = [t for t in targets if t not in static]
        inputs = {fqn: modules[fqn].input_quant for fqn in dynamic if hasattr(modules[fqn], "input_quant")}
        quantize_dynamic(  # type: ignore[no-untyped-call]
            model, dict.fromkeys(dynamic, qconfig), dtype=torch.qint8, inplace=True
        )
        swapped = dict(model.named_modules())
        for fqn, quant in inputs.items():  # the swap keeps the hooks, not the child they call
            swapped[fqn].input_quant = quant
    return static, dynamic


def _int8_kernels(quant_config: QuantConfig, groups: LayerGroups, engine: str, static: list[str],
                  dynamic: list[str]) -> tuple[str, bool]:
    """The ``kernels`` label after conversion, and whether some quantized weights stay simulated.

    Embeddings, Linformer E/F, groups at bit-widths other than 8 and Linear inputs not served by a static
    kernel keep fake-quant (fp32 compute).
    """
    rest = [g for g in ("embedding",) if getattr(quant_config, _GROUP_BITS[g]) != 32]
    lowrank_fake = any(pname in ("E", "F") for _, pname in groups["attention"]) and quant_config.attention_bits != 32
    inputs_fake = quant_config.activation_bits != 32 and (
        bool(dynamic) or any(getattr(quant_config, _GROUP_BITS[g]) != 8 for g in ("attention", "ffn")))
    simulated_rest = bool(rest) or lowrank_fake or inputs_fake or any(
        getattr(quant_config, _GROUP_BITS[g]) not in (8, 32) for g in ("attention", "ffn")
    )
    kinds = []
    if static:
        kinds.append(f"int8 x int8 static quantized Linear (weights and inputs int8, trained input ranges; "
                     f"torch.ao.nn.quantized.Linear, {engine} engine) for {len(static)} layers")
    if dynamic:
        kinds.append(f"int8 dynamic quantized Linear (torch.ao quantize_dynamic, {engine} engine) "
                     f"for {len(dynamic)} layers")
    kernels = "; ".join(kinds)
    if simulated_rest:
        kernels += "; other quantized weights or inputs stay fake-quant (fp32 compute)"
    return kernels, simulated_rest


def convert_int8_for_cpu(model: nn.Module, quant_config: QuantConfig | None = None) -> CompressionReport:
    """Swap 8-bit attention/FFN ``nn.Linear`` layers for real int8 kernels (inference only, CPU).

    Uses ``torch.ao.quantization.quantize_dynamic`` (int8 weights, activations quantized on the fly)
    when a quantized engine (x86/fbgemm/qnnpack) works here; a Linear whose input is quantized at 8 bits
    runs as a static int8 x int8 kernel with its trained input range instead. Fake-quant and pruning masks are first
    baked into the weights. Linformer E/F and embeddings are not Linear layers and stay fake-quant.
    The converted model can no longer be trained, and its state_dict no longer matches a fresh build;
    ONNX export of dynamically quantized Linear is not supported.

    Args:
        model: A CPU model from :func:`nas.models.build`, usually after :func:`quantize_`.
        quant_config: Which groups are 8-bit; defaults to ``model.candidate.quant``.

    Returns:
        A report whose ``kernels`` names the real int8 kernel, or says fake-quant when none is available
        (then the model is left unchanged).

    Raises:
        ConfigError: If the model is not on the CPU or no quant config can be found.
    """
    quant_config = _int8_quant_config(model, quant_config)
    before = num_params(model)
    groups = layer_groups(model)
    targets = _int8_targets(model, quant_config, groups)
    fake = fake_quant_description(quant_config)
    if not targets:
        return CompressionReport(kernels=fake, simulated=not quant_config.is_noop, params_before=before,
                                 params_after=before,
                                 details={"step": "int8", "converted": [], "reason": "no 8-bit attention/ffn group"})
    engine = int8_backend()
    if engine is None:
        return CompressionReport(kernels=fake, simulated=True, params_before=before, params_after=before,
                                 details={"step": "int8", "converted": [],
                                          "reason": "no quantized CPU engine available; kept fake-quant"})
    static, dynamic = _quantize_linears(model, targets, quant_config.granularity)
    kernels, simulated_rest = _int8_kernels(quant_config, groups, engine, static, dynamic)
    log.info("converted %d Linear layers to int8 (%s; %d static)", len(targets), engine, len(static))
    return CompressionReport(
        kernels=kernels,
        simulated=simulated_rest,
        params_before=before,
        params_after=num_params(model),
        details={"step": "int8", "engine": engine, "converted": targets, "static": static,
                 "weight_scheme": "symmetric int8 (the kernel's scheme, regardless of quant.scheme)"},
    )
