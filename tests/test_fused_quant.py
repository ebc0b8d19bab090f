"""The fused fake-quant autograd functions against the composite reference and torch's own learnable ops.

Tolerances (stated per assert below):
  * forward values: bitwise equal to the reference (the same float ops in the same order);
  * d/dx: the reference computes (dy * a) / a, the fused path dy * m: equal within 1 ulp (rtol 2e-7 float32);
  * d/dstep, d/dzero: sums over all elements in another association order: in float64, within 1e-12 of the sum
    of absolute terms; in float32, within 1e-5 of it;
  * a whole quantized student (KD + HSAD loss): the loss is bitwise equal; every gradient within
    rtol 1e-4 / atol 1e-6 x its largest magnitude (float32 rounding through the network's backward).
"""

import copy
from pathlib import Path

import pytest
import torch
from conftest import CONF_DIR
from omegaconf import OmegaConf

from mimiq.distill.losses import hsad_loss, kd_loss
from mimiq.models import create_model
from mimiq.models.attention import capture, swap_attention
from mimiq.quant import LSQActQuantizer, QuantSpec, calibrate, quantize_model, quantizers
from mimiq.quant.functional import (
    fake_quantize,
    fake_quantize_reference,
    fused,
    is_fused,
    lsq_quantize,
    lsq_quantize_reference,
    minmax_symmetric_quantize,
    minmax_symmetric_quantize_reference,
    minmax_symmetric_ste,
    qrange,
    ste,
)

BITS = [2, 3, 4, 5, 6, 7, 8]
AXES = [(None, (6, 7, 9)), (0, (6, 7, 9)), (1, (2, 3, 5, 4)), (-1, (4, 3, 6))]  # (axis, x shape)


def _inputs(
    bits: int, signed: bool, axis: int | None, shape: tuple, dtype=torch.float64, seed: int = 0, halves: bool = True
):
    """x (shape) covering the whole grid, on-grid, half-way (if `halves`) and boundary points; steps (powers of
    2, so that x / a is exact) and integer-valued zero points in [qmin, qmax] (torch's convention), one per
    index of `axis`; an upstream gradient dy."""
    gen = torch.Generator().manual_seed(seed)
    qmin, qmax = qrange(bits, signed)
    n = 1 if axis is None else shape[axis]
    step = 2.0 ** -torch.randint(1, 4, (n,), generator=gen).to(dtype)
    zero = torch.randint(qmin, qmax + 1, (n,), generator=gen).to(dtype) * (0.5 if signed else 0.25)
    zero = zero.round()
    view = [1] * len(shape) if axis is None else [-1 if d == axis % len(shape) else 1 for d in range(len(shape))]
    s, z = step.view(view), zero.view(view)
    span = qmax - qmin + 4
    v = torch.rand(shape, generator=gen, dtype=dtype) * span + qmin - 2  # grid units, past both ends
    kind = torch.randint(0, 4, shape, generator=gen)  # 0: random, 1: integer, 2: half-way, 3: a bound
    v = torch.where(kind == 1, v.round(), v)
    v = torch.where(kind == 2, v.floor() + (0.5 if halves else 0.25), v)
    v = torch.where(kind == 3, torch.where(v > (qmin + qmax) / 2, float(qmax), float(qmin)).to(dtype), v)
    x = (v - z) * s  # exact: steps are powers of two
    dy = torch.randn(shape, generator=gen, dtype=dtype)
    return x, step, zero, dy, qmin, qmax


def _grads(fn, x, step, zero, dy):
    x, step, zero = (t.clone().requires_grad_() for t in (x, step, zero))
    y = fn(x, step, zero)
    y.backward(dy)
    return y.detach(), x.grad, step.grad, zero.grad


def _close_sum(a, b, terms, rel):
    """|a - b| <= rel x (sum of the absolute terms that a and b add up), elementwise."""
    assert a.shape == b.shape
    assert ((a - b).abs() <= rel * terms + 1e-30).all(), (a, b)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("axis,shape", AXES)
def test_lsq_fused_matches_the_composite_reference(bits, signed, axis, shape):
    x, step, zero, dy, qmin, qmax = _inputs(bits, signed, axis, shape)
    zero = zero + 0.3  # a learned, non-integer zero point: rounded (round_ste) inside
    g = 0.37
    fused_ = _grads(lambda x, s, z: lsq_quantize(x, s, z, qmin, qmax, g, axis), x, step, zero, dy)
    ref = _grads(lambda x, s, z: lsq_quantize_reference(x, s, z, qmin, qmax, g, axis), x, step, zero, dy)
    assert torch.equal(fused_[0], ref[0])  # values: bitwise
    torch.testing.assert_close(fused_[1], ref[1], rtol=1e-15, atol=0)  # d/dx (float64)
    dims = [d for d in range(x.dim()) if axis is None or d != axis % x.dim()]
    terms = (
        (dy.abs() * (x.abs() / step.view([-1 if d not in dims else 1 for d in range(x.dim())]) + qmax - qmin))
        .sum(dims)
        .reshape(step.shape)
    )
    _close_sum(fused_[2], ref[2], g * terms, 1e-12)  # d/dstep (float64)
    _close_sum(fused_[3], ref[3], (dy.abs().sum(dims) * step).reshape(step.shape), 1e-12)  # d/dzero
    assert fused_[2].abs().sum() > 0 and fused_[3].abs().sum() > 0


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("axis,shape", AXES)
def test_fused_float32_within_rounding_of_the_reference(bits, signed, axis, shape):
    x, step, zero, dy, qmin, qmax = (
        t.float() if isinstance(t, torch.Tensor) else t for t in _inputs(bits, signed, axis, shape, seed=1)
    )
    x = x + torch.randn(x.shape, generator=torch.Generator().manual_seed(2)) * 1e-3  # off the exact points too
    fused_ = _grads(lambda x, s, z: lsq_quantize(x, s, z, qmin, qmax, 0.1, axis), x, step, zero, dy)
    ref = _grads(lambda x, s, z: lsq_quantize_reference(x, s, z, qmin, qmax, 0.1, axis), x, step, zero, dy)
    assert torch.equal(fused_[0], ref[0])
    torch.testing.assert_close(fused_[1], ref[1], rtol=2.4e-7, atol=0)  # (dy a) / a vs dy: 1 ulp
    scale = (dy.abs() * (qmax - qmin + x.abs().max() / step.min())).sum()
    torch.testing.assert_close(fused_[2], ref[2], rtol=0, atol=1e-5 * 0.1 * scale.item())
    torch.testing.assert_close(fused_[3], ref[3], rtol=0, atol=1e-5 * (dy.abs().sum() * step.max()).item())


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("zero_kind", ["tensor", "float", "none"])
def test_fake_quantize_fused_matches_reference(bits, signed, zero_kind):
    """fake_quantize (integer zero point, not rounded, gradient unscaled), incl. a float scale."""
    x, step, zero, dy, qmin, qmax = _inputs(bits, signed, None, (5, 40))
    z = {"tensor": zero, "float": float(zero), "none": 0.0}[zero_kind]
    xs = x.clone().requires_grad_()
    y = fake_quantize(xs, float(step), z, qmin, qmax)
    y.backward(dy)
    xr = x.clone().requires_grad_()
    yr = fake_quantize_reference(xr, float(step), z, qmin, qmax)
    yr.backward(dy)
    assert torch.equal(y, yr)
    torch.testing.assert_close(xs.grad, xr.grad, rtol=1e-15, atol=0)
    if zero_kind == "tensor":  # a learnable integer zero point and step, as tensors
        ours = _grads(lambda x, s, z: fake_quantize(x, s, z, qmin, qmax), x, step, zero, dy)
        ref = _grads(lambda x, s, z: fake_quantize_reference(x, s, z, qmin, qmax), x, step, zero, dy)
        for a, b in zip(ours, ref, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12 * dy.abs().sum().item() * (qmax - qmin + 9))


def _torch_agrees(v, qmin, qmax):
    """torch masks the gradient after rounding with [qmin, qmax] closed, ours before rounding with (qmin, qmax)
    open: they differ on the half bins just outside and on the bounds, which get no upstream gradient in the
    comparison."""
    return ~(((v >= qmax) & (v < qmax + 0.5)) | ((v <= qmin) & (v > qmin - 0.5)))


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("axis,shape", AXES)
def test_lsq_fused_matches_torch_learnable_fake_quant(bits, signed, axis, shape):
    """torch._fake_quantize_learnable_*: z in torch's convention (x_int = round(x / a + z), clamped), zero point
    rounded and clamped into [qmin, qmax] (ours is on the grid already), float32 only; its `grad_factor` scales
    both the step and the zero-point gradient, ours only the step's (the paper code), so the zero point is
    compared with grad_factor 1. torch rounds x / a and then adds z (round(x / a) + z), which differs from
    round(x / a + z) on half-way points when z is odd: none here. Tolerances: values and d/dx exact (x / a is
    exact), d/dstep and d/dzero within 1e-5 of the sum of absolute terms (float32 sums in another order)."""
    x, step, zero, dy, qmin, qmax = (
        t.float() if isinstance(t, torch.Tensor) else t
        for t in _inputs(bits, signed, axis, shape, seed=3, halves=False)
    )
    if axis is None:  # torch's per-tensor backward rounds z by truncating z + 0.5 (z = -1 -> 0): z >= 0 only
        zero = zero.clamp_min(0)
    view = [1] * len(shape) if axis is None else [-1 if d == axis % len(shape) else 1 for d in range(len(shape))]
    dy = dy * _torch_agrees(x / step.view(view) + zero.view(view), qmin, qmax)
    g = 0.25
    ours = _grads(lambda x, s, z: lsq_quantize(x, s, z, qmin, qmax, g, axis), x, step, zero, dy)
    per_tensor = torch._fake_quantize_learnable_per_tensor_affine
    per_channel = torch._fake_quantize_learnable_per_channel_affine
    oracle = (
        (lambda x, s, z, f: per_tensor(x, s, z, qmin, qmax, f))
        if axis is None
        else (lambda x, s, z, f: per_channel(x, s, z, axis % x.dim(), qmin, qmax, f))
    )
    ref = _grads(lambda x, s, z: oracle(x, s, z, g), x, step, zero, dy)
    ref1 = _grads(lambda x, s, z: oracle(x, s, z, 1.0), x, step, zero, dy)
    assert torch.equal(ours[0], ref[0])
    assert torch.equal(ours[1], ref[1])
    dims = [d for d in range(x.dim()) if axis is None or d != axis % x.dim()]
    terms = (dy.abs() * (qmax - qmin + 4)).sum(dims).reshape(step.shape)
    _close_sum(ours[2], ref[2], g * terms, 1e-5)
    _close_sum(ours[3], ref1[3], terms * step, 1e-5)


def test_boundaries_get_no_gradient_and_half_points_round_to_even():
    """Strict (qmin, qmax) mask (no gradient at the bounds, in both paths); torch.round's half-to-even."""
    step, zero = torch.tensor([1.0]), torch.tensor([0.0])
    eps = torch.finfo(torch.float32).eps
    x = torch.tensor([-8.0, -8 + 8 * eps, 7 - 4 * eps, 7.0, 7.5, -8.5, 0.5, 1.5, -2.5, 2.5, float("nan")])
    for f in (lsq_quantize, lsq_quantize_reference):
        xs = x.clone().requires_grad_()
        y = f(xs, step, zero, -8, 7, 1.0)
        y.backward(torch.ones_like(y))
        assert torch.equal(y[:-1], torch.tensor([-8.0, -8, 7, 7, 7, -8, 0, 2, -2, 2])) and y[-1].isnan()
        assert torch.equal(xs.grad, torch.tensor([0.0, 1, 1, 0, 0, 0, 1, 1, 1, 1, 0]))


def test_no_grad_path_equals_the_autograd_path_and_the_flag_switches():
    x, step, zero, _, qmin, qmax = _inputs(4, True, 1, (2, 3, 5, 4), dtype=torch.float32)
    with torch.no_grad():
        a = lsq_quantize(x, step, zero + 0.4, qmin, qmax, 0.1, 1)
    b = lsq_quantize(x.requires_grad_(), step, zero + 0.4, qmin, qmax, 0.1, 1)
    assert b.requires_grad and torch.equal(a, b.detach())
    assert is_fused()
    with fused(False):
        assert not is_fused()
        assert lsq_quantize(x, step, zero, qmin, qmax, 0.1, 1).grad_fn.name() == "MulBackward0"
    assert is_fused() and lsq_quantize(x, step, zero, qmin, qmax, 0.1, 1).grad_fn.name() == "_FakeQuantBackward"


def test_second_backward_through_one_graph_raises():
    """The fused backward reuses the saved mask's buffer for dx: retain_graph would silently be wrong."""
    x = torch.randn(50, requires_grad=True)
    y = lsq_quantize(x, torch.tensor([0.1], requires_grad=True), torch.tensor([0.0]), -8, 7, 1.0).sum()
    y.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="second backward"):
        y.backward()
    with fused(False):
        y = lsq_quantize(x, torch.tensor([0.1], requires_grad=True), torch.tensor([0.0]), -8, 7, 1.0).sum()
        y.backward(retain_graph=True)
        y.backward()  # the composite supports it


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("axis,shape", [(0, (12, 20)), (None, (12, 20)), (0, (6, 3, 2, 2)), (1, (4, 5))])
def test_minmax_fused_values_and_identity_gradient(bits, axis, shape):
    w = torch.randn(shape, generator=torch.Generator().manual_seed(bits))
    w[0] = 0.0  # an all-zero channel (step EPS)
    ref = minmax_symmetric_quantize_reference(w, bits, axis)
    assert torch.equal(minmax_symmetric_quantize(w, bits, axis), ref)
    ws = w.clone().requires_grad_()
    y = minmax_symmetric_ste(ws, bits, axis)
    dy = torch.randn(shape)
    y.backward(dy)
    wr = w.clone().requires_grad_()
    yr = ste(wr, minmax_symmetric_quantize_reference(wr.detach(), bits, axis))
    yr.backward(dy)
    assert torch.equal(y, yr) and torch.equal(y, ref)  # w + (w_hat - w) is exact (Sterbenz), so bitwise
    assert torch.equal(ws.grad, dy) and torch.equal(wr.grad, dy)


def _model_cfg(name: str):
    cfg = OmegaConf.load(Path(CONF_DIR) / "model" / f"{name}.yaml")
    cfg.pretrained = False
    return cfg


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    "name,spec",
    [
        ("vit_test", QuantSpec()),
        ("vit_test", QuantSpec(a_granularity="head", weight_quantizer="lsq", w_bits=3, a_bits=5)),
        ("swin_test", QuantSpec(act_quantizer="ema_minmax", w_granularity="tensor")),
    ],
)
def test_quantized_student_same_loss_and_gradients_fused_and_reference(name, spec, dtype):
    """KD + HSAD of a calibrated student (activation steps halved, so that much is clipped and the zero points
    get real gradients): the loss is bitwise equal; every gradient is within rtol and atol x the largest
    gradient of its kind (weight, bias, step, zero_point, ...) in the model: float64 rtol 1e-9, atol 1e-12;
    float32 rtol 1e-4, atol 1e-4 (a step or zero-point gradient is a difference of sums over a whole activation,
    whose float32 rounding in either path reaches ~1e-5 of the largest one)."""
    torch.manual_seed(0)
    teacher = create_model(_model_cfg(name), num_classes=10).to(dtype)
    swap_attention(teacher)
    student = copy.deepcopy(teacher)
    quantize_model(student, spec)
    student.to(dtype)  # the new quantizers' steps, zero points and buffers
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(dtype)
    calibrate(student, x)
    with torch.no_grad():
        for q in quantizers(student):
            if isinstance(q, LSQActQuantizer):
                q.step.mul_(0.5)
    with torch.no_grad(), capture(teacher, "matmul_av") as t_av:
        t_logits = teacher(x)
    results = []
    for enabled in (True, False):
        model = copy.deepcopy(student)
        with fused(enabled), capture(model, "matmul_av") as s_av:
            logits = model(x)
            loss = kd_loss(logits, t_logits, 5.0) + 10 * hsad_loss(t_av, s_av, drop_cls=name == "vit_test")
            loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    (loss_f, grads_f), (loss_r, grads_r) = results
    assert torch.equal(loss_f, loss_r)
    assert grads_f.keys() == grads_r.keys()
    assert any(k.endswith("zero_point") for k in grads_f) == (spec.act_quantizer == "lsq")
    kind_max: dict[str, float] = {}
    for k, v in grads_r.items():
        kind = k.rsplit(".", 1)[-1]
        kind_max[kind] = max(kind_max.get(kind, 0.0), v.abs().max().item())
    rtol, atol = (1e-9, 1e-12) if dtype == torch.float64 else (1e-4, 1e-4)
    for k in grads_f:
        torch.testing.assert_close(
            grads_f[k],
            grads_r[k],
            rtol=rtol,
            atol=atol * kind_max[k.rsplit(".", 1)[-1]],
            msg=lambda m, k=k: f"{k}: {m}",
        )
