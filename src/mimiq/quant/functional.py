"""Pure math of uniform fake quantization (quantize -> dequantize in float), with straight-through gradients.

Conventions (those of torch's `fake_quantize_*` ops): an integer grid [qmin, qmax], a real step `scale` and
an integer-valued `zero_point` added in grid units, so that x_int = clamp(round(x / scale + zero_point)) and
x_hat = (x_int - zero_point) * scale. `axis` picks the granularity of `scale` / `zero_point`: None = per
tensor (scalars or one-element tensors), an int = one value per index of that axis of `x` (per channel: axis 0
of a weight; per head: axis 1 of a (B, H, N, d) attention operand).

Two implementations with the same semantics (tests/test_fused_quant.py checks values and gradients):
  * fused (the default): `fake_quantize`, `lsq_quantize` and the STE'd `minmax_symmetric_ste` are one
    `torch.autograd.Function` each: a forward of a few in-place kernels that saves what the backward needs, and
    a backward that writes grad_x once and reduces the step / zero-point gradients with dot products;
  * composite (`*_reference`): autograd through every small op (round_ste, grad_scale, clamp, ...), the
    readable statement of the math. `with fused(False):` routes every call through it.
On a CPU (1 thread, mini ViT, W4/A4, KD + HSAD, batch 32; profile in results/mini/speed.md) the fused path cuts the
QAT step by 1.1-1.25x, i.e. QAT / (FP student fwd+bwd + teacher fwd) from 1.34-1.42 to 1.14-1.21: the composite
backward of torch.clamp builds boolean masks (gt, lt, logical_and, where), 5-20x slower than float kernels of the
same size, and every small op allocates a fresh buffer; the fused forward writes the mask as floats and works in
place, the fused backward writes dx into the mask's buffer and reduces with dot products. Not used, measured:
torch.compile of the forward / backward kernels (CPU inductor: 35 s cold compile, 4 s from a warm cache, 10
graphs for the mini ViT) made the QAT step only 1-7 % faster.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

EPS = 1e-8  # smallest step, avoids division by zero for all-zero channels
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


def fake_quantize(
    x: Tensor, scale: Tensor | float, zero_point: Tensor | float | None, qmin: int, qmax: int, axis: int | None = None
) -> Tensor:
    """x_hat = (round(clamp(x / scale + zero_point, qmin, qmax)) - zero_point) * scale.

    Clamp comes before round, as in the paper code (identical values, since qmin and qmax are integers); torch.round
    rounds half to even. The gradient to x is 1 where x / scale + zero_point lies strictly inside (qmin, qmax)
    and 0 elsewhere (torch.clamp's rule); `scale` and `zero_point` get the gradients of this expression (LSQ when
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
    if not _FUSED:
        return fake_quantize_reference(x, scale, 0.0 if zero_point is None else zero_point, qmin, qmax, axis)
    return _fake_quant(x, scale, zero_point, qmin, qmax, axis, 1.0, False)


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
    if not _FUSED:
        return lsq_quantize_reference(x, step, zero, qmin, qmax, g, axis)
    return _fake_quant(x, step, zero, qmin, qmax, axis, g, True)


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


def minmax_symmetric_ste(w: Tensor, bits: int, axis: int | None = 0) -> Tensor:
    """`minmax_symmetric_quantize` forward, identity gradient to w everywhere (the paper code's STE, which also
    passes through the clipped positive extreme). w: any weight shape -> w_hat, same shape."""
    if not _FUSED:
        return ste(w, minmax_symmetric_quantize_reference(w.detach(), bits, axis))
    if torch.is_grad_enabled() and w.requires_grad:
        return _MinMaxSTE.apply(w, bits, axis)
    return minmax_symmetric_quantize(w, bits, axis)


# --- fused autograd functions -------------------------------------------------------------------------------


def _dims_except(x: Tensor, axis: int) -> list[int]:
    return [d for d in range(x.dim()) if d != axis % x.dim()]


def _sum_prod(a: Tensor, b: Tensor, axis: int | None) -> Tensor:
    """sum(a * b) over every dim but `axis`: () per tensor, (C,) along `axis`; a dot product (no temporary)
    when both are contiguous of one dtype."""
    if axis is not None:
        return (a * b).sum(_dims_except(a, axis))
    if a.dtype == b.dtype and a.is_contiguous() and b.is_contiguous():
        return torch.dot(a.view(-1), b.view(-1))
    return (a * b).sum()


def _sum(a: Tensor, axis: int | None) -> Tensor:
    return a.sum() if axis is None else a.sum(_dims_except(a, axis))


@functools.lru_cache(maxsize=64)
def _open_bounds(qmin: int, qmax: int, dtype: torch.dtype) -> tuple[float, float]:
    """The floats of `dtype` next to qmin (upwards) and qmax (downwards): v in [lo, hi] <=> qmin < v < qmax."""
    lo, hi = torch.tensor([qmin, qmax], dtype=dtype).nextafter(torch.tensor([qmax, qmin], dtype=dtype)).tolist()
    return lo, hi


def _quant_forward(
    x: Tensor, s: Tensor | float, z: Tensor | float | None, qmin: int, qmax: int, mask: bool
) -> tuple[Tensor, Tensor | None]:
    """(x_hat, m): the fake-quant forward as in-place kernels on one new buffer, and (if `mask`) the float mask
    m = [qmin < x / s + z < qmax] of the gradient to x (torch.clamp's strict rule). s, z broadcast to x.

    m = [clamp(v, lo, hi) == v] with lo, hi the floats just inside (qmin, qmax): two kernels on one buffer, the
    comparison written into a float tensor (on CPU, a bool result, `&` and `where` are each ~10x slower)."""
    v = x / s
    if z is not None:
        v = v.add_(z) if torch.result_type(v, z) == v.dtype else v + z
    m = None
    if mask:
        if v.dtype in (torch.float32, torch.float64):
            m = v.clamp(*_open_bounds(qmin, qmax, v.dtype))
            torch.eq(m, v, out=m)
        else:  # nextafter of a half-precision integer can round back onto it: compare with each bound
            m = torch.gt(v, qmin, out=torch.empty_like(v)).mul_(torch.lt(v, qmax, out=torch.empty_like(v)))
    x_hat = v.clamp_(qmin, qmax).round_()
    if z is not None:
        x_hat.sub_(z)
    return x_hat.mul_(s), m


class _FakeQuant(torch.autograd.Function):
    """Fused `fake_quantize` / `lsq_quantize`: one forward, one backward (see `lsq_quantize` for the formulas).

    The step gradient uses x_hat = (q - z~) a and x / a = v - z~ (LSQ: round(v) - v inside, clamp(v) - z~
    outside): da = g (sum(dy x_hat) - sum(m dy x)) / a; the zero point's: dz = -a (sum(dy) - sum(m dy)). These
    are the sums the composite backward forms (mul, div, sub and add backward), in other association orders:
    equal up to float rounding. The backward writes dx into the saved mask's buffer (no new allocation), so it
    runs once per forward: a second backward through the same graph (retain_graph) raises.
    """

    @staticmethod
    def forward(
        ctx,
        x: Tensor,
        scale: Tensor | float,
        zero: Tensor | float | None,
        qmin: int,
        qmax: int,
        axis: int | None,
        g: float | Tensor,
        round_zero: bool,
    ) -> Tensor:
        z = torch.round(zero) if round_zero and isinstance(zero, Tensor) else zero
        x_hat, m = _quant_forward(x, along(scale, x, axis), along(z, x, axis), qmin, qmax, mask=True)
        ctx.axis, ctx.g, ctx.scale, ctx.used = axis, g, scale, False  # scale: a float, or saved below
        ctx.zero_meta = (zero.shape, zero.dtype) if isinstance(zero, Tensor) else None
        ctx.save_for_backward(x, x_hat, m, scale if isinstance(scale, Tensor) else None)
        return x_hat

    @staticmethod
    @once_differentiable
    def backward(ctx, dy: Tensor):
        if ctx.used:
            raise RuntimeError(
                "fused fake-quant: a second backward through one graph (retain_graph=True) is not "
                "supported; run it under mimiq.quant.functional.fused(False)"
            )
        ctx.used = True
        x, x_hat, m, scale = ctx.saved_tensors
        axis, need = ctx.axis, ctx.needs_input_grad
        a = ctx.scale if scale is None else scale.view(-1 if axis is not None else ())  # () or (C,)
        dx = m.mul_(dy) if m.shape == dy.shape else m * dy  # (x's shape); m is used up
        d_scale = d_zero = None
        if need[1]:  # (sum(dy x_hat) - sum(dx x)) / a, times the LSQ factor g
            d = (_sum_prod(dy, x_hat, axis) - _sum_prod(dx, x, axis)) / a * ctx.g
            d_scale = d.reshape(scale.shape).to(scale.dtype)
        if need[2]:  # -a * (sum of dy over the clipped elements)
            shape, dtype = ctx.zero_meta
            d_zero = ((_sum(dx, axis) - _sum(dy, axis)) * a).reshape(shape).to(dtype)
        return dx if need[0] else None, d_scale, d_zero, None, None, None, None, None


def _fake_quant(
    x: Tensor,
    scale: Tensor | float,
    zero: Tensor | float | None,
    qmin: int,
    qmax: int,
    axis: int | None,
    g: float | Tensor,
    round_zero: bool,
) -> Tensor:
    """The fused path: the autograd function when a gradient is needed, else the bare in-place forward."""
    if not isinstance(zero, Tensor) and not zero:
        zero = None
    if torch.is_grad_enabled() and (
        x.requires_grad or getattr(scale, "requires_grad", False) or getattr(zero, "requires_grad", False)
    ):
        return _FakeQuant.apply(x, scale, zero, qmin, qmax, axis, g, round_zero)
    z = torch.round(zero) if round_zero and isinstance(zero, Tensor) else zero
    return _quant_forward(x, along(scale, x, axis), along(z, x, axis), qmin, qmax, mask=False)[0]


class _MinMaxSTE(torch.autograd.Function):
    """`minmax_symmetric_quantize` forward, identity backward (no graph of the min/max arithmetic)."""

    @staticmethod
    def forward(ctx, w: Tensor, bits: int, axis: int | None) -> Tensor:
        return minmax_symmetric_quantize(w, bits, axis)

    @staticmethod
    def backward(ctx, dy: Tensor):
        return dy, None, None


# --- composite reference implementations --------------------------------------------------------------------


def fake_quantize_reference(
    x: Tensor, scale: Tensor | float, zero_point: Tensor | float, qmin: int, qmax: int, axis: int | None = None
) -> Tensor:
    """`fake_quantize` as autograd through each small op (round_ste, clamp, div, add, sub, mul): the reference of
    the fused path. Same arguments and result."""
    s, z = along(scale, x, axis), along(zero_point, x, axis)
    return (round_ste(torch.clamp(x / s + z, qmin, qmax)) - z) * s


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
