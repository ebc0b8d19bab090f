"""Pure math of uniform fake quantization (quantize -> dequantize in float), with straight-through gradients.

Conventions (those of torch's `fake_quantize_*` ops): an integer grid [qmin, qmax], a real step `scale` and
an integer-valued `zero_point` added in grid units, so that x_int = clamp(round(x / scale + zero_point)) and
x_hat = (x_int - zero_point) * scale. `axis` picks the granularity of `scale` / `zero_point`: None = per
tensor (scalars or one-element tensors), an int = one value per index of that axis of `x` (per channel: axis 0
of a weight; per head: axis 1 of a (B, H, N, d) attention operand).
"""

from __future__ import annotations

import torch
from torch import Tensor

EPS = 1e-8  # smallest step, avoids division by zero for all-zero channels


class RoundSTE(torch.autograd.Function):
    """round() forward, identity backward (straight-through estimator, Bengio et al. 2013)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return torch.round(x)  # half to even, as the paper code's torch.round

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad


def round_ste(x: Tensor) -> Tensor:
    return RoundSTE.apply(x)


def grad_scale(x: Tensor, g: float | Tensor) -> Tensor:
    """Returns x unchanged, with its gradient multiplied by g (LSQ, Esser et al. 2020)."""
    y = x * g
    return (x - y).detach() + y


def ste(x: Tensor, x_hat: Tensor) -> Tensor:
    """x_hat forward, identity gradient to x everywhere (no clipping mask)."""
    return x + (x_hat - x).detach()


def qrange(bits: int, signed: bool) -> tuple[int, int]:
    """Integer grid: [-2^(b-1), 2^(b-1)-1] signed, [0, 2^b-1] unsigned."""
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)


def along(p: Tensor | float, x: Tensor, axis: int | None) -> Tensor | float:
    """Reshapes a per-channel vector p (C,) to broadcast along `axis` of x; per-tensor p is returned as is."""
    if axis is None or not isinstance(p, Tensor):
        return p
    shape = [1] * x.dim()
    shape[axis] = -1
    return p.view(shape)


def reduce_except(x: Tensor, axis: int | None, op: str) -> Tensor:
    """amin / amax / mean of x over every dim but `axis`: shape (C,), or (1,) when axis is None."""
    if axis is None:
        return getattr(x, op)().reshape(1)
    dims = [d for d in range(x.dim()) if d != axis % x.dim()]
    return getattr(x, op)(dim=dims)


def fake_quantize(x: Tensor, scale: Tensor | float, zero_point: Tensor | float, qmin: int, qmax: int,
                  axis: int | None = None) -> Tensor:  # fmt: skip
    """x_hat = (round(clamp(x / scale + zero_point, qmin, qmax)) - zero_point) * scale.

    Clamp comes before round, as in the paper code (identical values, since qmin and qmax are integers). The
    gradient to x is 1 where x / scale + zero_point lies strictly inside (qmin, qmax) and 0 elsewhere
    (torch.clamp's rule); `scale` and `zero_point` get the gradients of this expression (LSQ when learnable).

    Args:
        x: any shape.
        scale: step; scalar / (1,) per tensor, or (C,) with C = x.shape[axis].
        zero_point: integer-valued offset in grid units, same shape rules as `scale` (0 for symmetric).
        qmin, qmax: integer grid bounds (see `qrange`).
        axis: the axis of x that `scale` and `zero_point` run along; None = per tensor.
    Returns:
        x_hat: shape of x, on the grid {(q - zero_point) * scale : q in [qmin, qmax]}.
    """
    s, z = along(scale, x, axis), along(zero_point, x, axis)
    return (round_ste(torch.clamp(x / s + z, qmin, qmax)) - z) * s


def minmax_symmetric_quantize(w: Tensor, bits: int, axis: int | None = 0) -> Tensor:
    """The paper code's symmetric min/max quantizer (`SymmetricQuantFunction`), in its arithmetic:
    s = (2^b - 1) / (2 max|w|) along `axis`, q = clamp(round(s w), -2^(b-1), 2^(b-1)-1), w_hat = q / s.

    The step 1/s = 2 max|w| / (2^b - 1) puts +max|w| on 2^(b-1) - 0.5, clipped to 2^(b-1) - 1, and -max|w| on
    -2^(b-1) + 0.5, rounded to -2^(b-1) (MIMIQ_SPEC.md §3: at 4 bit 7.5 -> 7, -7.5 -> -8). No gradient: wrap
    it in `ste`.

    Args:
        w: weight, e.g. (out, in) or (out, in, kh, kw).
        bits: grid width.
        axis: one scale per index of this axis (0 = per output channel); None = per tensor.
    """
    qmin, qmax = qrange(bits, True)
    s = along((2**bits - 1) / (2 * reduce_except(w.abs(), axis, "amax").clamp_min(EPS)), w, axis)
    return torch.clamp(torch.round(w * s), qmin, qmax) / s


def asymmetric_qparams(xmin: Tensor, xmax: Tensor, bits: int, signed: bool) -> tuple[Tensor, Tensor]:
    """(step, zero_point) mapping [xmin, xmax] onto the full grid: step = (max - min) / (2^b - 1),
    zero_point = qmin - round(min / step) (the paper code's asymmetric min/max, in torch's convention)."""
    qmin, _ = qrange(bits, signed)
    step = (xmax - xmin).clamp_min(EPS) / (2**bits - 1)
    return step, qmin - torch.round(xmin / step)


def lsq_quantize(x: Tensor, step: Tensor, zero: Tensor | None, qmin: int, qmax: int, g: float | Tensor,
                 axis: int | None = None) -> Tensor:  # fmt: skip
    """LSQ with a learnable zero point, the paper code's `QuantAct_lsq` forward (MIMIQ_SPEC.md §3):
    z~ = round_ste(z); x_hat = (round_ste(clamp(x / a + z~, qmin, qmax)) - z~) * a.

    Args:
        x: any shape.
        step: learnable step a, (1,) or (C,) along `axis`; its gradient is scaled by g.
        zero: learnable zero point z in grid units (same shape as step), gradient unscaled; None = 0.
        qmin, qmax: integer grid bounds.
        g: step-gradient scale, 1 / sqrt(numel * qmax) in LSQ.
        axis: see `fake_quantize`.
    Returns:
        x_hat: shape of x.
    """
    z = round_ste(zero) if zero is not None else 0.0
    return fake_quantize(x, grad_scale(step, g), z, qmin, qmax, axis)


def lsq_plus_quantize(x: Tensor, step: Tensor, offset: Tensor, qmin: int, qmax: int, g: float | Tensor,
                      axis: int | None = None) -> Tensor:  # fmt: skip
    """LSQ+ (Bhalgat et al. 2020): a learnable real offset b instead of an integer zero point,
    x_hat = round_ste(clamp((x - b) / a, qmin, qmax)) * a + b; both gradients scaled by g."""
    b = along(grad_scale(offset, g), x, axis)
    return fake_quantize(x - b, grad_scale(step, g), 0.0, qmin, qmax, axis) + b
