"""The fused fake-quant autograd functions behind `mimiq.quant.functional` (its default path): one forward of a few
in-place kernels that saves what the backward needs, and a backward that writes grad_x once and reduces the step /
zero-point gradients with dot products. Same values and gradients as the composite `*_reference` functions there
(tests/test_fused_quant.py)."""

from __future__ import annotations

import functools

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from mimiq.quant.grid import along


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
    x: Tensor,
    scale: Tensor | float,
    zero: Tensor | float | None,
    qmin: int,
    qmax: int,
    axis: int | None,
    round_zero: bool,
    mask: bool,
) -> tuple[Tensor, Tensor | None]:
    """(x_hat, m): the fake-quant forward as in-place kernels on one new buffer, and (if `mask`) the float mask
    m = [qmin < x / s + z < qmax] of the gradient to x (strict: no gradient at the bounds). s = scale and
    z = zero (rounded if `round_zero`) broadcast along `axis` of x.

    m = [clamp(v, lo, hi) == v] with lo, hi the floats just inside (qmin, qmax): two kernels on one buffer, the
    comparison written into a float tensor (on CPU, a bool result, `&` and `where` are each ~10x slower)."""
    z = torch.round(zero) if round_zero and isinstance(zero, Tensor) else zero
    s, z = along(scale, x, axis), along(z, x, axis)
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
        x_hat, m = _quant_forward(x, scale, zero, qmin, qmax, axis, round_zero, mask=True)
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


def fake_quant(
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
    return _quant_forward(x, scale, zero, qmin, qmax, axis, round_zero, mask=False)[0]
