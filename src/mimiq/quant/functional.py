"""Pure math of uniform fake quantization (quantize -> dequantize in float), with straight-through gradients.

Conventions (those of torch's `fake_quantize_*` ops): an integer grid [qmin, qmax], a real step `scale` and
an integer-valued `zero_point` added in grid units, so that x_int = clamp(round(x / scale + zero_point)) and
x_hat = (x_int - zero_point) * scale. `axis` picks the granularity of `scale` / `zero_point`: None = per
tensor (scalars or one-element tensors), an int = one value per index of that axis of `x` (per channel: axis 0
of a weight; per head: axis 1 of a (B, H, N, d) attention operand).

Two implementations with the same semantics (tests/test_fused_quant.py checks values and gradients):
  * fused (the default): `fake_quantize` and `lsq_quantize` are one `torch.autograd.Function` (`mimiq.quant.fused`):
    a forward of a few in-place kernels that saves what the backward needs, and a backward that writes grad_x
    once and reduces the step / zero-point gradients with dot products; the STE'd `minmax_symmetric_ste` is one
    too (`MinMaxSTE`, no graph of the min/max arithmetic);
  * composite (`*_reference`): autograd through every small op (round_ste, grad_scale, clamp_grid, ...), the
    readable statement of the math. `with fused(False):` routes every call through it, and so does tracing
    by torch.compile (the fused functions' in-place `out=` kernels break its graphs; inductor fuses the
    composite ops and their backward itself).
On a CPU (1 thread, mini ViT, W4/A4, KD + HSAD, batch 32; profile in results/mini/speed.md) the fused path cuts the
QAT step by 1.1-1.25x, i.e. QAT / (FP student fwd+bwd + teacher fwd) from 1.34-1.42 to 1.14-1.21: the composite
backward of the clamp builds boolean masks (gt, lt, logical_and, where), 5-20x slower than float kernels of the
same size, and every small op allocates a fresh buffer; the fused forward writes the mask as floats and works in
place, the fused backward writes dx into the mask's buffer and reduces with dot products. Under `compile=on`
(`mimiq.utils.compile`) the whole student forward, the composite path traced, is one inductor graph: its speed-up
of the QAT step is in results/mini/speed.md.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from mimiq.quant import fused as fused_ops
from mimiq.quant.grid import EPS, along, qrange, reduce_except

_FUSED = True  # the fused autograd functions (False: the composite reference implementations)


@contextmanager
def fused(enabled: bool = True) -> Iterator[None]:
    """Within the block, `fake_quantize`, `lsq_quantize` and `minmax_symmetric_ste` use the fused autograd
    functions (enabled=True, the default outside any block) or the composite reference implementations."""
    global _FUSED
    before, _FUSED = _FUSED, enabled
    try:
        yield
    finally:
        _FUSED = before


def is_fused() -> bool:
    return _FUSED


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


def fake_quantize(
    x: Tensor, scale: Tensor | float, zero_point: Tensor | float | None, qmin: int, qmax: int, axis: int | None = None
) -> Tensor:
    """x_hat = (round(clamp(x / scale + zero_point, qmin, qmax)) - zero_point) * scale.

    Clamp comes before round, as in the paper code (identical values, since qmin and qmax are integers); torch.round
    rounds half to even. The gradient to x is 1 where x / scale + zero_point lies strictly inside (qmin, qmax)
    and 0 elsewhere, the bounds included (`clamp_grid`, an explicit mask in both paths, whatever torch.clamp's
    backward does at its bounds); `scale` and `zero_point` get the gradients of this expression (LSQ when
    learnable).

    Args:
        x: any shape.
        scale: step; scalar / (1,) per tensor, or (C,) with C = x.shape[axis].
        zero_point: integer-valued offset in grid units, same shape rules as `scale` (0 or None: symmetric).
        qmin, qmax: integer grid bounds (see `qrange`).
        axis: the axis of x that `scale` and `zero_point` run along; None = per tensor.
    Returns:
        x_hat: shape of x, on the grid {(q - zero_point) * scale : q in [qmin, qmax]}.
    """
    if not _FUSED or torch.compiler.is_compiling():
        return fake_quantize_reference(x, scale, 0.0 if zero_point is None else zero_point, qmin, qmax, axis)
    return fused_ops.fake_quant(x, scale, zero_point, qmin, qmax, axis, 1.0, False)


def lsq_quantize(
    x: Tensor, step: Tensor, zero: Tensor | None, qmin: int, qmax: int, g: float | Tensor, axis: int | None = None
) -> Tensor:
    """LSQ with a learnable zero point, the paper code's `QuantAct_lsq` forward (docs/method.md):
    z~ = round_ste(z); x_hat = (round_ste(clamp(x / a + z~, qmin, qmax)) - z~) * a.

    Gradients (the composite's, `lsq_quantize_reference`), with v = x / a + z~ and m = [qmin < v < qmax]:
    dx = m dy; da = g sum(dy (m (round(v) - v) + (1 - m) (clamp(v) - z~))); dz = -a sum((1 - m) dy), the sums
    over the elements of each step (all of them per tensor).

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
    if not _FUSED or torch.compiler.is_compiling():
        return lsq_quantize_reference(x, step, zero, qmin, qmax, g, axis)
    return fused_ops.fake_quant(x, step, zero, qmin, qmax, axis, g, True)


def minmax_symmetric_quantize(w: Tensor, bits: int, axis: int | None = 0) -> Tensor:
    """The paper code's symmetric min/max quantizer (`SymmetricQuantFunction`), in its arithmetic:
    s = (2^b - 1) / (2 max|w|) along `axis`, q = clamp(round(s w), -2^(b-1), 2^(b-1)-1), w_hat = q / s.

    The step 1/s = 2 max|w| / (2^b - 1) puts +max|w| on 2^(b-1) - 0.5, clipped to 2^(b-1) - 1, and -max|w| on
    -2^(b-1) + 0.5, rounded to -2^(b-1) (as in the paper code: at 4 bit 7.5 -> 7, -7.5 -> -8). No gradient: use
    `minmax_symmetric_ste` for the straight-through version.

    Args:
        w: weight, e.g. (out, in) or (out, in, kh, kw).
        bits: grid width.
        axis: one scale per index of this axis (0 = per output channel); None = per tensor.
    Returns:
        w_hat: shape of w.
    """
    with torch.no_grad():
        qmin, qmax = qrange(bits, True)
        s = along((2**bits - 1) / (2 * reduce_except(w.abs(), axis, "amax").clamp_min(EPS)), w, axis)
        return (w * s).round_().clamp_(qmin, qmax).div_(s)  # in place on one buffer; values as the reference


class MinMaxSTE(torch.autograd.Function):
    """`minmax_symmetric_quantize` forward, identity backward (no graph of the min/max arithmetic)."""

    @staticmethod
    def forward(ctx, w: Tensor, bits: int, axis: int | None) -> Tensor:
        return minmax_symmetric_quantize(w, bits, axis)

    @staticmethod
    def backward(ctx, dy: Tensor):
        return dy, None, None


def minmax_symmetric_ste(w: Tensor, bits: int, axis: int | None = 0) -> Tensor:
    """`minmax_symmetric_quantize` forward, identity gradient to w everywhere (the paper code's STE, which also
    passes through the clipped positive extreme). w: any weight shape -> w_hat, same shape."""
    if not _FUSED or torch.compiler.is_compiling():
        return ste(w, minmax_symmetric_quantize_reference(w.detach(), bits, axis))
    if torch.is_grad_enabled() and w.requires_grad:
        return MinMaxSTE.apply(w, bits, axis)
    return minmax_symmetric_quantize(w, bits, axis)


# --- composite reference implementations --------------------------------------------------------------------


def clamp_grid(v: Tensor, qmin: int, qmax: int) -> Tensor:
    """clamp(v, qmin, qmax) whose gradient is 1 strictly inside (qmin, qmax) and 0 at the bounds and beyond
    (NaN: 0), through an explicit mask: the rule is ours, not torch.clamp's backward, whose value at the bounds
    has differed between torch versions (1 in torch 1.x, the paper code's). Values: torch.clamp's, bitwise."""
    inside = (v > qmin) & (v < qmax)
    return torch.where(inside, v, v.detach().clamp(qmin, qmax))


def fake_quantize_reference(
    x: Tensor, scale: Tensor | float, zero_point: Tensor | float, qmin: int, qmax: int, axis: int | None = None
) -> Tensor:
    """`fake_quantize` as autograd through each small op (round_ste, clamp_grid, div, add, sub, mul): the reference
    of the fused path. Same arguments and result."""
    s, z = along(scale, x, axis), along(zero_point, x, axis)
    return (round_ste(clamp_grid(x / s + z, qmin, qmax)) - z) * s


def minmax_symmetric_quantize_reference(w: Tensor, bits: int, axis: int | None = 0) -> Tensor:
    """`minmax_symmetric_quantize` out of place, op by op (the reference; wrap it in `ste` for a gradient)."""
    qmin, qmax = qrange(bits, True)
    s = along((2**bits - 1) / (2 * reduce_except(w.abs(), axis, "amax").clamp_min(EPS)), w, axis)
    return torch.clamp(torch.round(w * s), qmin, qmax) / s


def asymmetric_qparams(xmin: Tensor, xmax: Tensor, bits: int, signed: bool) -> tuple[Tensor, Tensor]:
    """(step, zero_point) mapping [xmin, xmax] onto the full grid: step = (max - min) / (2^b - 1),
    zero_point = qmin - round(min / step) (the paper code's asymmetric min/max, in torch's convention)."""
    qmin, _ = qrange(bits, signed)
    step = (xmax - xmin).clamp_min(EPS) / (2**bits - 1)
    return step, qmin - torch.round(xmin / step)


def lsq_quantize_reference(
    x: Tensor, step: Tensor, zero: Tensor | None, qmin: int, qmax: int, g: float | Tensor, axis: int | None = None
) -> Tensor:
    """`lsq_quantize` as composite autograd: z~ = round_ste(z); x_hat = fake_quantize_reference(x,
    grad_scale(a, g), z~, ...). The reference of the fused path; same arguments and result."""
    z = round_ste(zero) if zero is not None else 0.0
    return fake_quantize_reference(x, grad_scale(step, g), z, qmin, qmax, axis)


def lsq_plus_quantize(
    x: Tensor, step: Tensor, offset: Tensor, qmin: int, qmax: int, g: float | Tensor, axis: int | None = None
) -> Tensor:
    """LSQ+ (Bhalgat et al. 2020): a learnable real offset b instead of an integer zero point,
    x_hat = round_ste(clamp((x - b) / a, qmin, qmax)) * a + b; both gradients scaled by g."""
    b = along(grad_scale(offset, g), x, axis)
    return fake_quantize(x - b, grad_scale(step, g), 0.0, qmin, qmax, axis) + b
