"""Pure fake-quant math: grid, clamping, idempotence, STE gradients, LSQ gradients vs torch's own ops."""

import pytest
import torch

from mimiq.quant.functional import (
    asymmetric_qparams,
    fake_quantize,
    fake_quantize_reference,
    grad_scale,
    lsq_plus_quantize,
    lsq_quantize,
    lsq_quantize_reference,
    minmax_symmetric_quantize,
    qrange,
    round_ste,
)

torch.manual_seed(0)


def test_qrange():
    assert qrange(4, True) == (-8, 7) and qrange(4, False) == (0, 15)
    assert qrange(2, True) == (-2, 1) and qrange(8, False) == (0, 255)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("axis", [None, 0, 1, -1])
def test_values_on_grid_within_range_and_idempotent(bits, signed, axis):
    qmin, qmax = qrange(bits, signed)
    x = torch.randn(5, 6, 7) * 2**bits  # wide enough to hit both ends of the grid
    n = 1 if axis is None else x.shape[axis]
    scale, zero = torch.rand(n) * 0.5 + 0.05, torch.randint(-2, 3, (n,)).float()
    x_hat = fake_quantize(x, scale, zero, qmin, qmax, axis)
    shape = [1, 1, 1] if axis is None else [-1 if d == axis % 3 else 1 for d in range(3)]
    q = x_hat / scale.view(shape) + zero.view(shape)  # back to the integer grid
    assert torch.allclose(q, q.round(), atol=1e-4)
    assert q.min() >= qmin - 1e-4 and q.max() <= qmax + 1e-4
    assert q.round().min() == qmin and q.round().max() == qmax  # wide x: both ends reached
    assert torch.equal(fake_quantize(x_hat, scale, zero, qmin, qmax, axis), x_hat)


def test_per_head_grids_are_independent():
    x = torch.randn(2, 3, 5, 4)  # (B, H, N, d)
    scale = torch.tensor([0.1, 0.2, 0.4])
    x_hat = fake_quantize(x, scale, 0.0, -8, 7, axis=1)
    for h in range(3):
        assert torch.equal(x_hat[:, h], fake_quantize(x[:, h], scale[h], 0.0, -8, 7))
    with pytest.raises(RuntimeError):
        fake_quantize(x, torch.ones(4), 0.0, -8, 7, axis=1)


def test_round_ste_and_grad_scale():
    x = torch.tensor([0.4, 0.5, 1.5, -2.6], requires_grad=True)
    y = round_ste(x)
    assert torch.equal(y, torch.tensor([0.0, 0.0, 2.0, -3.0]))  # half to even
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones(4))
    s = torch.tensor([2.0], requires_grad=True)
    (grad_scale(s, 0.25) * 3).sum().backward()
    assert grad_scale(s, 0.25).item() == 2.0 and s.grad.item() == 0.75


def test_ste_gradient_is_one_inside_zero_outside():
    x = torch.linspace(-2, 2, 400).add(0.0037).requires_grad_()  # no point exactly on a bound
    fake_quantize(x, 0.1, 0.0, -8, 7).sum().backward()
    inside = (x / 0.1 > -8) & (x / 0.1 < 7)
    assert torch.equal(x.grad, inside.float())
    assert inside.any() and (~inside).any()


def _grads(fn, x, *params, gy):
    x = x.clone().requires_grad_()
    params = [p.clone().requires_grad_() for p in params]
    y = fn(x, *params)
    (y * gy).sum().backward()
    return y.detach(), x.grad, *[p.grad for p in params]


def _off_half_bins(v, qmin, qmax):
    """torch's ops mask gradients after rounding, ours (the paper code's order) before: they differ only on
    the half bins just outside [qmin, qmax]; those elements get no upstream gradient in the comparison."""
    return ~(((v > qmax) & (v < qmax + 0.5)) | ((v < qmin) & (v > qmin - 0.5)))


@pytest.mark.parametrize("signed", [True, False])
def test_lsq_per_tensor_matches_torch_learnable_fake_quant(signed):
    qmin, qmax = qrange(4, signed)
    x = torch.randn(2000) * 2
    step, zero, g = torch.tensor([0.3]), torch.tensor([1.0 if signed else 3.0]), 0.37
    gy = torch.randn_like(x) * _off_half_bins(x / step + zero, qmin, qmax)
    ours = _grads(lambda x, s, z: lsq_quantize(x, s, z, qmin, qmax, g), x, step, zero, gy=gy)
    oracle = torch._fake_quantize_learnable_per_tensor_affine
    ref = _grads(lambda x, s, z: oracle(x, s, z, qmin, qmax, g), x, step, zero, gy=gy)
    ref1 = _grads(lambda x, s, z: oracle(x, s, z, qmin, qmax, 1.0), x, step, zero, gy=gy)
    torch.testing.assert_close(ours[0], ref[0], rtol=0, atol=1e-6)  # values
    torch.testing.assert_close(ours[1], ref[1])  # d/dx
    torch.testing.assert_close(ours[2], ref[2], rtol=1e-4, atol=1e-4)  # d/dstep, scaled by g
    torch.testing.assert_close(ours[3], ref1[3], rtol=1e-4, atol=1e-4)  # d/dzero: not scaled (paper code)
    assert ours[2].abs() > 1 and ours[3].abs() > 0.1


@pytest.mark.parametrize("shape,axis", [((6, 40), 0), ((2, 3, 16, 8), 1)])
def test_lsq_per_channel_and_per_head_match_torch(shape, axis):
    qmin, qmax = -8, 7
    x = torch.randn(shape) * 2
    n = shape[axis]
    step, zero, g = torch.rand(n) * 0.3 + 0.1, torch.randint(-2, 3, (n,)).float(), 0.5
    view = [-1 if d == axis else 1 for d in range(len(shape))]
    gy = torch.randn_like(x) * _off_half_bins(x / step.view(view) + zero.view(view), qmin, qmax)
    ours = _grads(lambda x, s, z: lsq_quantize(x, s, z, qmin, qmax, g, axis), x, step, zero, gy=gy)
    oracle = torch._fake_quantize_learnable_per_channel_affine
    ref = _grads(lambda x, s, z: oracle(x, s, z, axis, qmin, qmax, g), x, step, zero, gy=gy)
    ref1 = _grads(lambda x, s, z: oracle(x, s, z, axis, qmin, qmax, 1.0), x, step, zero, gy=gy)
    torch.testing.assert_close(ours[0], ref[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(ours[1], ref[1])
    torch.testing.assert_close(ours[2], ref[2], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours[3], ref1[3], rtol=1e-4, atol=1e-4)
    assert ours[2].shape == ours[3].shape == (n,)


def test_lsq_plus_gradients_match_float64_reference():
    qmin, qmax, g = 0, 15, 0.2
    x = torch.randn(500, dtype=torch.float64) * 2
    step, offset = torch.tensor([0.2], dtype=torch.float64), torch.tensor([-1.3], dtype=torch.float64)
    gy = torch.randn_like(x)
    y, dx, ds, db = _grads(lambda x, s, b: lsq_plus_quantize(x, s, b, qmin, qmax, g), x, step, offset, gy=gy)
    v = (x - offset) / step
    inside = (v >= qmin) & (v <= qmax)
    q = v.clamp(qmin, qmax).round()
    torch.testing.assert_close(y, q * step + offset)
    torch.testing.assert_close(dx, gy * inside)
    torch.testing.assert_close(ds, g * (gy * torch.where(inside, q - v, q)).sum().view(1))  # LSQ+ Eq. (6)
    torch.testing.assert_close(db, g * (gy * ~inside).sum().view(1))


def test_minmax_symmetric_is_the_paper_codes_grid():
    w = torch.tensor([[-1.0, 0.2, 1.0], [0.5, -0.25, 0.1]])
    q = minmax_symmetric_quantize(w, 4, axis=0) * torch.tensor([[7.5], [15.0]])  # s = 15 / (2 max|w_c|)
    assert torch.equal(q, torch.tensor([[-8.0, 2.0, 7.0], [7.0, -4.0, 2.0]]))  # 7.5 -> 7 clipped, -7.5 -> -8
    w = torch.randn(16, 32)
    for bits in (2, 4, 8):
        err = (minmax_symmetric_quantize(w, bits) - w).abs()
        step = 2 * w.abs().amax(dim=1, keepdim=True) / (2**bits - 1)
        assert (err <= step / 2 + 1e-6).all()  # no clipping beyond half a step, per channel
    per_tensor = minmax_symmetric_quantize(w, 4, axis=None) * 15 / (2 * w.abs().max())
    assert torch.allclose(per_tensor, per_tensor.round(), atol=1e-4)


@pytest.mark.parametrize("signed", [True, False])
def test_asymmetric_qparams_cover_the_range(signed):
    x = torch.rand(1000) * 5 - 1.5
    step, zero = asymmetric_qparams(x.min(), x.max(), 4, signed)
    qmin, qmax = qrange(4, signed)
    x_hat = fake_quantize(x, step, zero, qmin, qmax)
    assert (x_hat - x).abs().max() <= step / 2 + 1e-6  # nothing clipped beyond half a step
    torch.testing.assert_close(step, (x.max() - x.min()) / 15)


# --- the bound rule, against a float64 loop ----------------------------------------------------------------------
# v = x / a + round(z) on the grid [qmin, qmax]: the gradient to x is 1 strictly inside (qmin, qmax), 0 at the
# bounds and beyond. torch 1.x's clamp backward (the paper code's) passed it at the bounds as well; ours is an
# explicit mask in both paths, so it holds whatever torch.clamp does.
BOUND_V = [-9.7, -8.5, -8.0, -8.0 + 2**-20, -7.5, -0.5, 0.0, 2.5, 6.5, 7.0 - 2**-20, 7.0, 7.25, 7.5, 12.0]


def _lsq_loop(x, a, z, dy, qmin, qmax, g):
    """LSQ with a learnable zero point, element by element in Python floats (float64): the value
    (round(clamp(v)) - z~) a, dx = m dy, da = g sum dy (m (round(v) - v) + (1 - m) (clamp(v) - z~)) and
    dz = -a sum (1 - m) dy, with z~ = round(z), v = x / a + z~, m = [qmin < v < qmax]. round(): half to even."""
    zr = round(z)
    y, dx, da, dz = [], [], 0.0, 0.0
    for xi, di in zip(x, dy, strict=True):
        v = xi / a + zr
        inside = qmin < v < qmax
        c = min(max(v, qmin), qmax)
        y.append((round(c) - zr) * a)
        dx.append(di if inside else 0.0)
        da += di * (round(v) - v if inside else c - zr)
        dz += 0.0 if inside else -a * di
    return y, dx, g * da, dz


def _inclusive_reference(x, step, zero, qmin, qmax, g, axis):
    """The composite LSQ with torch 1.x's clamp backward (gradient 1 at the bounds): what the rule rules out."""
    a = grad_scale(step, g).view(-1, 1) if axis == 0 else grad_scale(step, g)
    z = round_ste(zero).view(-1, 1) if axis == 0 else round_ste(zero)
    v = x / a + z
    return (round_ste(torch.where((v >= qmin) & (v <= qmax), v, v.detach().clamp(qmin, qmax))) - z) * a


def _bound_case(axis):
    """x (C, N) on BOUND_V for C = 2 channels (a, z~) = (0.25, 1), (0.5, -2) along axis 0, or one channel
    (0.25, 1) per tensor (axis None, x (N,)); a learned zero point 1.3 / -2.2 (round_ste'd)."""
    qmin, qmax = qrange(4, True)
    steps, zeros = ([0.25, 0.5], [1.3, -2.2]) if axis == 0 else ([0.25], [1.3])
    v = torch.tensor(BOUND_V, dtype=torch.float64)
    x = torch.stack([(v - round(z)) * a for a, z in zip(steps, zeros, strict=True)])  # exact: a is a power of 2
    dy = torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    step, zero = torch.tensor(steps, dtype=torch.float64), torch.tensor(zeros, dtype=torch.float64)
    if axis is None:
        x, dy = x[0], dy[0]
    return x, dy, step, zero, qmin, qmax


def _run(fn, x, dy, step, zero):
    x, step, zero = (t.clone().requires_grad_() for t in (x, step, zero))
    y = fn(x, step, zero)
    y.backward(dy)
    return y.detach(), x.grad, step.grad, zero.grad


@pytest.mark.parametrize("axis", [None, 0])
@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_bound_rule_for_value_step_and_zero_point_against_a_float64_loop(axis, impl):
    x, dy, step, zero, qmin, qmax = _bound_case(axis)
    g = 0.3
    f = lsq_quantize if impl == "fused" else lsq_quantize_reference
    y, dx, d_step, d_zero = _run(lambda x, s, z: f(x, s, z, qmin, qmax, g, axis), x, dy, step, zero)
    rows = (x, dy) if axis == 0 else (x[None], dy[None])
    for c, (xc, dyc) in enumerate(zip(*rows, strict=True)):
        want = _lsq_loop(xc.tolist(), step[c].item(), zero[c].item(), dyc.tolist(), qmin, qmax, g)
        yc, dxc = (y, dx) if axis is None else (y[c], dx[c])
        assert yc.tolist() == want[0]
        assert dxc.tolist() == want[1]
        torch.testing.assert_close(d_step[c].item(), want[2], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(d_zero[c].item(), want[3], rtol=1e-12, atol=1e-12)
    col = (lambda t: t.view(-1, 1)) if axis == 0 else (lambda t: t)
    on_bound = torch.isin(x / col(step) + col(zero.round()), torch.tensor([qmin, qmax], dtype=x.dtype))
    assert on_bound.any() and (dx[on_bound] == 0).all()  # the bounds themselves get no gradient

    # the torch 1.x rule (gradient at the bounds) disagrees with the loop on the bound points, for x, a and z
    old = _run(lambda x, s, z: _inclusive_reference(x, s, z, qmin, qmax, g, axis), x, dy, step, zero)
    assert torch.equal(old[0], y) and not torch.equal(old[1], dx)
    assert (old[1] != dx).eq(on_bound).all()
    assert not torch.allclose(old[2], d_step) and not torch.allclose(old[3], d_zero)


@pytest.mark.parametrize("impl", [fake_quantize, fake_quantize_reference])
def test_fake_quantize_bound_rule_against_a_float64_loop(impl):
    """fake_quantize: an integer zero point used as is and gradients unscaled (the loop with g = 1)."""
    x, dy, step, zero, qmin, qmax = _bound_case(None)
    zero = zero.round()
    y, dx, d_step, d_zero = _run(lambda x, s, z: impl(x, s, z, qmin, qmax), x, dy, step, zero)
    want = _lsq_loop(x.tolist(), step.item(), zero.item(), dy.tolist(), qmin, qmax, 1.0)
    assert y.tolist() == want[0] and dx.tolist() == want[1]
    torch.testing.assert_close(d_step.item(), want[2], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(d_zero.item(), want[3], rtol=1e-12, atol=1e-12)
