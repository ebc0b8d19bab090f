"""The integer grid and the broadcasting helpers shared by the fake-quant math (`functional`) and its fused
autograd functions (`fused`)."""

from __future__ import annotations

from torch import Tensor

EPS = 1e-8  # smallest step, avoids division by zero for all-zero channels


def qrange(bits: int, signed: bool) -> tuple[int, int]:
    """Integer grid: [-2^(b-1), 2^(b-1)-1] signed, [0, 2^b-1] unsigned."""
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)


def along(p: Tensor | float | None, x: Tensor, axis: int | None) -> Tensor | float | None:
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
