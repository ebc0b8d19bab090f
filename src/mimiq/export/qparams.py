"""The integer view of a fake-quantized student: every quantizer's grid, step and zero point, read from its state,
and the checks that refuse what the exporters do not cover.

Every quantized tensor of the student is an affine image of integer codes q in [qmin, qmax]:

    activations  x_hat = scale * (q - zero) + offset,  q = clamp(round((x - offset) / scale + zero), qmin, qmax)
    weights      w_hat = q * scale  (LSQ)  or  q / scale  (min/max: the paper code divides by its multiplier)

`zero` is an integer (LSQ: the rounded learned zero point; EMA min/max: qmin - round(min / step)), `offset` is 0
except for LSQ+, whose real-valued offset b is no integer zero point and is kept as a float shift of the operand.
The codes are computed with the quantizers' own float arithmetic (same ops, same order), so they are the codes
the fake-quant forward rounds to.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mimiq.models.attention import MatMul
from mimiq.quant.functional import EPS, along, asymmetric_qparams, grad_scale, reduce_except
from mimiq.quant.modules import QuantConv2d, QuantLinear
from mimiq.quant.quantizers import (
    EMAMinMaxActQuantizer,
    LSQActQuantizer,
    LSQPlusActQuantizer,
    LSQWeightQuantizer,
    MinMaxWeightQuantizer,
    Quantizer,
)

QUANT_LAYERS = (QuantLinear, QuantConv2d, MatMul)  # the layers whose quantized operands are exported
ACT_KINDS = (LSQActQuantizer, LSQPlusActQuantizer, EMAMinMaxActQuantizer)
WEIGHT_KINDS = (MinMaxWeightQuantizer, LSQWeightQuantizer)  # and FrozenWeightQuantizer, below
MIN_BITS, MAX_BITS = 2, 8  # int8 containers hold every grid of these widths


class ExportError(ValueError):
    """A student the exporters refuse; the message names every offending module."""


class FrozenWeightQuantizer(Quantizer):
    """A weight quantizer frozen to its integer codes (the packed checkpoint's): returns codes * scale ('mul') or
    codes / scale ('div') whatever weight it is given, bit for bit the fake-quant weight it was frozen from.

    Args:
        codes: integer codes, the weight's shape; scale: (C,) along `axis`; grid: (qmin, qmax); op: 'mul' | 'div'."""

    kind = "frozen"

    def __init__(self, bits: int, codes: Tensor, scale: Tensor, axis: int | None, grid: tuple[int, int], op: str):
        super().__init__(bits, scale.numel() if axis is not None else 1, axis, signed=True)
        self.qgrid, self.op = (int(grid[0]), int(grid[1])), op
        small = self.qgrid[0] >= -128 and self.qgrid[1] <= 127
        self.register_buffer("codes", codes.to(torch.int8 if small else torch.int16))
        self.register_buffer("scale", scale.clone())
        self._set_flags(True, True)

    @property
    def grid(self) -> tuple[int, int]:
        return self.qgrid

    def quantize(self, w: Tensor) -> Tensor:
        q, s = self.codes.to(self.scale.dtype), along(self.scale, self.codes, self.axis)
        return q.div_(s) if self.op == "div" else q.mul_(s)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, grid={self.qgrid}, op={self.op}"


@dataclass
class ActQ:
    """An activation quantizer as integers: x_hat = scale * (q - zero) + offset, q in [qmin, qmax].

    scale, zero, offset: (C,) in the quantizer's float dtype (C = 1 per tensor, else the heads along `axis`); zero
    holds integers."""

    kind: str
    bits: int
    qmin: int
    qmax: int
    scale: Tensor
    zero: Tensor
    offset: Tensor | None
    axis: int | None

    def codes(self, x: Tensor) -> Tensor:
        """The integer codes of x (any shape) as a float tensor of x's shape, by the fake-quant's arithmetic."""
        s, z = along(self.scale, x, self.axis), along(self.zero, x, self.axis)
        v = (x - along(self.offset, x, self.axis)) / s if self.offset is not None else x / s
        return (v + z).clamp_(self.qmin, self.qmax).round_()

    def centered(self, x: Tensor) -> Tensor:
        """q - zero as int64 (the operand of the integer matmul), shape of x."""
        return (self.codes(x) - along(self.zero, x, self.axis)).long()

    def max_abs_centered(self) -> int:
        """max |q - zero| over the grid: the operand's contribution to the accumulator bound."""
        z = self.zero.abs().max().item() if self.zero.numel() else 0
        return int(max(abs(self.qmin), abs(self.qmax)) + z)


@dataclass
class WeightQ:
    """A weight quantizer as integers: w_hat = codes * scale ('mul') or codes / scale ('div'), codes in [qmin, qmax].

    codes: int32, the weight's shape; scale: (C,) along `axis` (0 = output channels) or (1,), the weight's dtype."""

    kind: str
    bits: int
    qmin: int
    qmax: int
    codes: Tensor
    scale: Tensor
    op: str
    axis: int | None

    def dequant(self) -> Tensor:
        """The fake-quant weight, bit for bit (same float op as the quantizer)."""
        q, s = self.codes.to(self.scale.dtype), along(self.scale, self.codes, self.axis)
        return q.div_(s) if self.op == "div" else q.mul_(s)

    def step(self) -> Tensor:
        """The real step per channel, (C,) float64: w_hat = codes * step up to float rounding."""
        s = self.scale.double()
        return 1.0 / s if self.op == "div" else s

    def step_along(self, ndim: int, dim: int = 0) -> Tensor:
        """step() shaped to broadcast along `dim` of an ndim-dimensional tensor (per tensor: a (1,) tensor)."""
        if self.axis is None:
            return self.step()
        shape = [1] * ndim
        shape[dim] = -1
        return self.step().view(shape)


def act_params(q: nn.Module) -> ActQ | None:
    """The integer view of an activation quantizer (None for an FP slot, nn.Identity)."""
    if not isinstance(q, Quantizer):
        return None
    qmin, qmax = q.grid
    with torch.no_grad():
        if isinstance(q, LSQActQuantizer):
            scale, zero, offset = q.step, torch.round(q.zero_point), None
        elif isinstance(q, LSQPlusActQuantizer):
            # lsq_plus_quantize's values: grad_scale(p, g) = (p - p g) + p g, not always p bit for bit
            scale, offset = grad_scale(q.step, q.g), grad_scale(q.offset, q.g).detach().clone()
            zero = torch.zeros_like(q.step)
        elif isinstance(q, EMAMinMaxActQuantizer):
            scale, zero = asymmetric_qparams(*q.range(), q.bits, q._signed)
            offset = None
        else:
            raise ExportError(f"{type(q).__name__} is not an activation quantizer the exporters cover")
        scale = scale.detach().clone().reshape(-1)  # the quantizer's dtype (float32, or float64 after .double())
        zero = zero.detach().clone().to(scale.dtype).reshape(-1)
    return ActQ(q.kind, q.bits, qmin, qmax, scale, zero, offset, q.axis)


def weight_params(q: nn.Module, w: Tensor) -> WeightQ | None:
    """The integer view of a weight quantizer applied to `w` (None for an FP weight)."""
    if not isinstance(q, Quantizer):
        return None
    qmin, qmax = q.grid
    with torch.no_grad():
        w = w.detach()
        if isinstance(q, MinMaxWeightQuantizer):  # minmax_symmetric_quantize's arithmetic
            scale = (2**q.bits - 1) / (2 * reduce_except(w.abs(), q.axis, "amax").clamp_min(EPS))
            codes = (w * along(scale, w, q.axis)).round_().clamp_(qmin, qmax)
            op = "div"
        elif isinstance(q, LSQWeightQuantizer):  # the fused fake_quant's arithmetic
            scale = q.step.detach().clone()
            codes = (w / along(scale, w, q.axis)).clamp_(qmin, qmax).round_()
            op = "mul"
        elif isinstance(q, FrozenWeightQuantizer):
            codes, scale, op = q.codes, q.scale, q.op
        else:
            raise ExportError(f"{type(q).__name__} is not a weight quantizer the exporters cover")
    return WeightQ(q.kind, q.bits, qmin, qmax, codes.to(torch.int32), scale.reshape(-1), op, q.axis)


def quant_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, layer) of the quantized layers (QuantLinear, QuantConv2d, attention MatMul) in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, QUANT_LAYERS)]


def _slot_owner(model: nn.Module) -> dict[int, str]:
    """id(quantizer) -> the layer that holds it in one of its slots."""
    owners = {}
    for name, layer in quant_layers(model):
        for attr in layer.slots.values():
            owners[id(getattr(layer, attr))] = name
    return owners


def check_student(model: nn.Module) -> None:
    """Raises ExportError listing every part of `model` the exporters do not cover: a quantizer outside a quantized
    Linear / Conv2d / attention matmul, a quantizer class other than the five covered ones, an uncalibrated or
    disabled quantizer, a bit width outside 2..8, a grouped convolution, LSQ+ on a zero-padded convolution input."""
    problems = []
    owners = _slot_owner(model)
    for name, q in model.named_modules():
        if not isinstance(q, Quantizer):
            continue
        where = f"{name} ({type(q).__name__})"
        if id(q) not in owners:
            problems.append(f"{where}: a quantizer outside a quantized Linear / Conv2d / attention matmul")
        elif type(q) not in (*ACT_KINDS, *WEIGHT_KINDS, FrozenWeightQuantizer):
            problems.append(
                f"{where}: quantizer not covered (weights: minmax, lsq; activations: lsq, lsq_plus, ema_minmax)"
            )
        elif not q.enabled:
            problems.append(f"{where}: disabled (enabled=False); the export would not match the student")
        elif not q._ready:
            problems.append(f"{where}: uncalibrated; run mimiq.quant.calibrate(model, batch) first")
        if not MIN_BITS <= q.bits <= MAX_BITS:
            problems.append(f"{where}: unsupported bit width {q.bits} (the exporters cover {MIN_BITS}..{MAX_BITS})")
    for name, layer in quant_layers(model):
        if isinstance(layer, QuantConv2d):
            if layer.conv_kwargs["groups"] != 1:
                problems.append(f"{name}: grouped convolution (groups={layer.conv_kwargs['groups']}) not covered")
            pad = layer.conv_kwargs["padding"]
            if isinstance(layer.input_quant, LSQPlusActQuantizer) and (pad == "same" or any(_as_tuple(pad))):
                problems.append(f"{name}: LSQ+ input on a zero-padded convolution (padding {pad}) not covered")
    if not any(isinstance(m, Quantizer) for m in model.modules()):
        problems.append(f"{type(model).__name__}: no quantized layer (not a fake-quantized student)")
    if problems:
        raise ExportError("cannot export this student:\n  " + "\n  ".join(problems))


def _as_tuple(p) -> tuple:
    return tuple(p) if isinstance(p, tuple | list) else (p,)
