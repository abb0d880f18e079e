"""Activation fake-quantization of Linear inputs (QAT), and the static int8 Linear it serves as on CPU.

:func:`quantize_activations_` gives every ``nn.Linear`` of the attention and FFN groups an
:class:`ActivationQuant` child (``<linear>.input_quant``) and two hooks: a forward pre-hook that puts the
input on an affine per-tensor grid of ``2**bits`` levels (0 always exact).

Ranges (``quant.activation_range``):

* ``running``: the min/max of the first training batch, then an exponential moving average
  (``MOMENTUM``) of each batch's min/max, as torch.ao's ``MovingAverageMinMaxObserver`` (Jacob et al., 2018);
* ``learned``: initialised the same way, then trained with the task loss through a straight-through
  estimator (LSQ, Esser et al., 2020; LSQ+ learns the offset too, Bhalgat et al., 2020).

Before a module has seen a training batch it passes its input through unchanged (it has no range yet);
the first training batch sets the range and is quantized on it. Ranges are buffers or
parameters of ``input_quant``, so they are saved and loaded with the state dict. The grid is plain
``div/round/clamp/mul``, which ``torch.jit.trace`` and ``torch.onnx.export`` both take.

:func:`convert_static_int8_` (CPU, inference) replaces a Linear whose weights are 8-bit and whose input is
quantized at 8 bits by :class:`StaticInt8Linear`: a real int8 x int8 kernel (fbgemm's
``quantized::linear_with_input_q_dq_qweight_dq_output_fp32``: the input quantized on the trained grid, int32
accumulation, fp32 output) where the engine has it.
"""

from __future__ import annotations

import warnings
from typing import Any, cast

import torch
from torch import Tensor, nn

from nas.errors import ConfigError

__all__ = ["ActivationQuant", "StaticInt8Linear", "MOMENTUM", "quantize_activations_", "activation_quantizers",
           "convert_static_int8_", "ACTIVATION_BITS"]

#: Activation bit-widths with a fake-quant grid (8 also runs as real int8 on CPU).
ACTIVATION_BITS = (8, 4)

#: Weight of each new training batch in a running range.
MOMENTUM = 0.05


def _round_ste(x: Tensor) -> Tensor:
    """``round(x)`` forward, identity backward."""
    return x + (torch.round(x) - x).detach()


class ActivationQuant(nn.Module):
    """An affine per-tensor grid for one Linear's input.

    Args:
        bits: 8 or 4.
        range_kind: ``"running"`` (moving-average min/max buffers) or ``"learned"`` (trained parameters).
    """

    def __init__(self, bits: int, range_kind: str = "running") -> None:
        super().__init__()
        if bits not in ACTIVATION_BITS:
            raise ConfigError("no activation grid at this bit-width", field="quant.activation_bits", value=bits,
                              fix="use 8 (real int8 on CPU) or 4 (fake-quant), or 32 to leave activations alone")
        if range_kind not in ("running", "learned"):
            raise ConfigError("unknown activation range", field="quant.activation_range", value=range_kind,
                              fix="use 'running' or 'learned'")
        self.bits, self.range_kind, self.levels = bits, range_kind, 2**bits - 1
        if range_kind == "learned":
            self.lo = nn.Parameter(torch.zeros(()))
            self.hi = nn.Parameter(torch.zeros(()))
        else:
            self.register_buffer("lo", torch.zeros(()))
            self.register_buffer("hi", torch.zeros(()))
        self.ready = False
        self.register_load_state_dict_post_hook(_mark_ready)  # type: ignore[no-untyped-call]

    def extra_repr(self) -> str:
        """The bit-width and range kind, for ``print(model)``."""
        return f"bits={self.bits}, range={self.range_kind}"

    def grid(self) -> tuple[Tensor, Tensor]:
        """``(scale, zero_point)``: the input grid, widened to include 0 (zero_point is an integer code)."""
        lo, hi = torch.clamp(self.lo, max=0.0), torch.clamp(self.hi, min=0.0)
        scale = ((hi - lo) / self.levels).clamp(min=1e-8)
        zero_point = torch.clamp(torch.round(-lo.detach() / scale.detach()), 0, self.levels)
        return scale, zero_point

    @torch.no_grad()
    def _track(self, x: Tensor) -> None:
        """Fold a training batch into the range: the first sets it; a running range then moves towards each."""
        lo, hi = cast(Tensor, self.lo), cast(Tensor, self.hi)
        x_lo, x_hi = x.detach().amin().to(lo.dtype), x.detach().amax().to(hi.dtype)
        if not self.ready:
            lo.copy_(x_lo)
            hi.copy_(x_hi)
        elif self.range_kind == "running":
            lo.lerp_(x_lo, MOMENTUM)
            hi.lerp_(x_hi, MOMENTUM)
        self.ready = True

    def forward(self, x: Tensor) -> Tensor:
        """``x`` on the grid (straight-through), or unchanged before the first training batch."""
        if self.training:
            self._track(x)
        if not self.ready:
            return x
        scale, zero_point = self.grid()
        codes = torch.clamp(_round_ste(x / scale) + zero_point, 0, self.levels)
        return (codes - zero_point) * scale


def _mark_ready(module: nn.Module, _keys: Any) -> None:
    """After ``load_state_dict``: a loaded range is a trained one."""
    quant = cast(ActivationQuant, module)
    quant.ready = bool(quant.hi > quant.lo)


def _quant_input(linear: nn.Module, args: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    return (cast(ActivationQuant, linear.input_quant)(args[0]), *args[1:])


def activation_quantizers(model: nn.Module) -> dict[str, ActivationQuant]:
    """``{linear fqn: its ActivationQuant}`` for every Linear whose input is quantized."""
    return {name: cast(ActivationQuant, m.input_quant) for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and isinstance(getattr(m, "input_quant", None), ActivationQuant)}


def quantize_activations_(model: nn.Module, linears: list[tuple[str, nn.Linear]], bits: int,
                          range_kind: str) -> list[str]:
    """Fake-quantize the input of each of ``linears`` (``(fqn, module)`` pairs) in place; their fqns.

    Raises:
        ConfigError: If a Linear's input is quantized already.
    """
    done: list[str] = []
    for fqn, linear in linears:
        if hasattr(linear, "input_quant"):
            raise ConfigError("this Linear's input is quantized already", field=fqn,
                              fix="quantize a freshly built model, or apply the compression once per model")
        device = linear.weight.device
        linear.input_quant = ActivationQuant(bits, range_kind).to(device)
        linear.register_forward_pre_hook(_quant_input)
        done.append(fqn)
    return done


class StaticInt8Linear(nn.Module):
    """A Linear run as int8 x int8 with a static input range: quantize the input, int8 GEMM, fp32 output.

    The weight is re-quantized symmetric per output channel (exact for a symmetric per-channel 8-bit
    weight); products accumulate in int32 and the output is fp32, so nothing is requantized. The input is
    read on the trained grid with every other level (``reduce_range``, as torch's x86 and fbgemm qconfigs
    do): fbgemm's AVX2 kernel adds pairs of u8 x s8 products in int16, which saturates when input codes
    reach 255 (measured: a max error of 13.8 on outputs of 54 with full-range codes, 1e-5 with 7-bit ones).
    So the served input differs from the trained grid by at most one of its steps.
    """

    def __init__(self, linear: nn.Linear, quant: ActivationQuant) -> None:
        super().__init__()
        w = linear.weight.detach().float()
        w_scale = (w.abs().amax(dim=1) / 127).clamp(min=1e-8).double()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao quantized-tensor deprecation notices
            qweight = torch.quantize_per_channel(w, w_scale, torch.zeros_like(w_scale, dtype=torch.long), 0, torch.qint8)
            bias = None if linear.bias is None else linear.bias.detach().float()
            self.packed = torch.ops.quantized.linear_prepack(qweight, bias)
        scale, zero_point = quant.grid()
        self.in_scale, self.in_zero_point = 2 * float(scale), int(zero_point) // 2  # reduce_range: codes 0..127
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def extra_repr(self) -> str:
        """Shapes and the input grid, for ``print(model)``."""
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"input_scale={self.in_scale:.4g}, input_zero_point={self.in_zero_point}")

    def forward(self, x: Tensor) -> Tensor:
        """The int8 product of ``x`` (on the input grid) and the weight, in fp32."""
        op = torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32
        return cast(Tensor, op(x.float(), self.in_scale, self.in_zero_point, self.packed))


def _runs_here(module: StaticInt8Linear) -> bool:
    """Whether this engine has the kernel (fbgemm/x86 do; a failure means "not here")."""
    try:
        module(torch.zeros(1, module.in_features))
    except Exception:  # any failure means "no static int8 kernel here"
        return False
    return True


def convert_static_int8_(model: nn.Module, targets: list[str]) -> list[str]:
    """Replace each target Linear (weights baked, input quantized at 8 bits) by a :class:`StaticInt8Linear`.

    Returns:
        The fqns converted (targets whose input is not quantized at 8 bits, or never trained, are left; none
        when this engine has no static int8 kernel).
    """
    modules = dict(model.named_modules())
    done: list[str] = []
    for fqn in targets:
        linear = modules[fqn]
        quant = getattr(linear, "input_quant", None)
        if not isinstance(linear, nn.Linear) or not isinstance(quant, ActivationQuant) or quant.bits != 8 \
                or not quant.ready:
            continue
        served = StaticInt8Linear(linear, quant)
        if not _runs_here(served):
            return []
        parent_name, _, child = fqn.rpartition(".")
        setattr(modules[parent_name] if parent_name else model, child, served)
        done.append(fqn)
    return done
