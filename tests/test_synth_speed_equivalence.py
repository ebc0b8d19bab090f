"""The fast generator losses (hand-written backward) against the composite implementations they replaced.

`interhead_loss` and `patch_similarity_entropy` now run their hot part as autograd Functions with the backward
written out (`_InterheadLoss`, `_GaussianKde`). The composite versions below are the previous code (commit
4c262bf), verbatim but for names: autograd differentiates them op by op. Same loss values and the same gradients
w.r.t. the attention logits / A·V features and, through a real ViT / Swin teacher, w.r.t. the input pixels.

Tolerances: float64 rel 1e-10 (loss) and 1e-9 of the largest gradient entry (the two differ only in the order of
floating-point operations; measured ~1e-14); float32 abs 1e-6 (loss, a mean of values in [0, 1]; PSE rel 1e-5) and
1e-4 of the largest gradient entry (measured: ~5e-6; against float64, the fast fp32 gradients are the closer ones,
~1.3e-6 vs ~3.3e-6); bf16 gradient storage: one bf16 rounding step (2^-7 relative) on top.
"""

import math
from pathlib import Path

import pytest
import torch
from conftest import CONF_DIR
from omegaconf import OmegaConf

from mimiq.models import create_model
from mimiq.models.attention import capture, swap_attention
from mimiq.synth.losses import interhead_loss
from mimiq.synth.psaq import patch_similarity_entropy

F64 = dict(loss_rtol=1e-10, grad_rtol=1e-9)
F32 = dict(loss_atol=1e-6, grad_rtol=1e-4)


# ------------------------------------------------------------------------ the previous (composite) implementations


def _rows_composite(logits, drop_cls):
    x = logits[:, :, 1:, 1:] if drop_cls else logits
    x = x.to(torch.promote_types(x.dtype, torch.float32)).transpose(1, 2)  # (B, Nq, H, K)
    x = x - x.amin(-1, keepdim=True)
    return x / (x.amax(-1, keepdim=True) + 1e-8)


def _ssim_composite(logits, drop_cls, c1=0.01**2, c2=0.03**2):
    with torch.autocast(logits.device.type, enabled=False):
        x = _rows_composite(logits, drop_cls)
        mu = x.mean(-1)
        xc = x - mu.unsqueeze(-1)
        cov = xc @ xc.transpose(-1, -2) / x.shape[-1]
        var = cov.diagonal(dim1=-2, dim2=-1)
        luminance = (2 * mu.unsqueeze(-1) * mu.unsqueeze(-2) + c1) / (
            mu.square().unsqueeze(-1) + mu.square().unsqueeze(-2) + c1
        )
        structure = (2 * cov + c2) / (var.unsqueeze(-1) + var.unsqueeze(-2) + c2)
        return luminance * structure


def interhead_loss_composite(logits_per_layer, drop_cls):
    return torch.stack([(1 - _ssim_composite(x, drop_cls).square()).mean() for x in logits_per_layer]).mean()


def pse_composite(feats, bandwidth=0.01, n_points=10, drop_cls=True, batch_size=None):
    with torch.autocast(feats.device.type, enabled=False):
        patches = feats.to(torch.promote_types(feats.dtype, torch.float32)).mean(dim=1)
        if drop_cls:
            patches = patches[:, 1:]
        unit = torch.nn.functional.normalize(patches, dim=-1, eps=1e-8)
        sims = unit @ unit.transpose(-1, -2)
        samples = sims.reshape(batch_size or sims.shape[0], -1)
        lo, hi = samples.detach().min(), samples.detach().max()
        points = torch.linspace(0, 1, n_points, device=samples.device, dtype=samples.dtype) * (hi - lo) + lo
        z = (points.view(1, -1, 1) - samples.unsqueeze(1)) / bandwidth
        kernel = torch.exp(-0.5 * z.square()) / (bandwidth * math.sqrt(2 * math.pi))
        density = kernel.mean(-1) + 1e-4
        return torch.trapezoid(-density * density.log(), points, dim=-1).mean()


# ------------------------------------------------------------------------------------------------------ helpers


def _value_and_grad(fn, *inputs):
    inputs = [x.detach().clone().requires_grad_() for x in inputs]
    out = fn(*inputs)
    return out.detach(), torch.autograd.grad(out, inputs)


def _assert_grads_close(new, old, rtol):
    for g_new, g_old in zip(new, old, strict=True):
        scale = g_old.abs().max()
        assert scale > 0 and torch.isfinite(g_new).all()
        torch.testing.assert_close(g_new, g_old, atol=rtol * scale.item(), rtol=0)


def _build(name: str) -> torch.nn.Module:
    cfg = OmegaConf.load(Path(CONF_DIR) / "model" / f"{name}.yaml")
    cfg.pretrained = False
    torch.manual_seed(0)
    model = create_model(cfg, num_classes=10).eval().requires_grad_(False)
    swap_attention(model)
    return model


# ------------------------------------------------------------------------------------------------- inter-head SSIM

CASES = {  # (layer shapes, grid, drop_cls)
    "vit_cls": ([(2, 3, 13, 13), (2, 3, 13, 13)], (3, 4), True),
    "vit_mini_geometry": ([(4, 4, 65, 65)], (8, 8), True),
    "swin_windows": ([(6, 4, 9, 9), (3, 2, 9, 9)], (3, 3), False),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_interhead_loss_matches_composite_values_and_logit_grads(case, dtype):
    shapes, grid, drop_cls = CASES[case]
    gen = torch.Generator().manual_seed(0)
    layers = [3 * torch.randn(s, generator=gen, dtype=dtype) for s in shapes]
    new, g_new = _value_and_grad(lambda *xs: interhead_loss(xs, [grid] * len(xs), drop_cls), *layers)
    old, g_old = _value_and_grad(lambda *xs: interhead_loss_composite(xs, drop_cls), *layers)
    assert new.dtype == old.dtype == dtype
    if dtype == torch.float64:
        torch.testing.assert_close(new, old, rtol=F64["loss_rtol"], atol=0)
        _assert_grads_close(g_new, g_old, F64["grad_rtol"])
    else:
        torch.testing.assert_close(new, old, atol=F32["loss_atol"], rtol=0)
        _assert_grads_close(g_new, g_old, F32["grad_rtol"])
    if drop_cls:  # nothing flows to the CLS query row or key column
        assert all((g[:, :, 0].abs().sum() == 0) and (g[:, :, :, 0].abs().sum() == 0) for g in g_new)


def test_interhead_loss_ties_split_like_amin_amax():
    """Tied minima / maxima in a row (identical keys): the gradient is split evenly over them, as amin/amax do."""
    x = torch.randn(2, 4, 9, 9, dtype=torch.float64)
    x[..., 3] = x[..., 5]  # ties anywhere in the row
    x[..., 1] = x[..., 2] = x.amax(-1) + 1  # tied maxima
    x[0, :, :, 7] = x[0, :, :, 8] = x[0].amin(-1) - 1  # tied minima
    new, g_new = _value_and_grad(lambda t: interhead_loss([t], [(3, 3)], False), x)
    old, g_old = _value_and_grad(lambda t: interhead_loss_composite([t], False), x)
    torch.testing.assert_close(new, old, rtol=F64["loss_rtol"], atol=0)
    _assert_grads_close(g_new, g_old, F64["grad_rtol"])
    torch.testing.assert_close(g_new[0][..., 1], g_new[0][..., 2], rtol=0, atol=0)


def _autocast_value_and_grad(fn, x, backward_in_autocast: bool):
    x = x.detach().clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fn(x)
        grad = torch.autograd.grad(out, x)[0] if backward_in_autocast else None
    return out.detach(), grad if grad is not None else torch.autograd.grad(out, x)[0]


@pytest.mark.parametrize("backward_in_autocast", [False, True], ids=["backward_outside", "backward_inside"])
def test_losses_fp32_under_bf16_autocast_match_composite(backward_in_autocast):
    """bf16 logits / features (many tied extrema) from an autocast forward. The reference's backward runs outside
    the region, as in the generators; the fast inter-head loss's also inside (its backward disables autocast; the
    entropy's cosine similarities stay composite, whose backward would run in bf16 there, before as now)."""
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 4, 65, 65, generator=gen).bfloat16()
    feats = torch.randn(2, 4, 65, 32, generator=gen).bfloat16()
    for fast, composite, x, value_tol in (
        (
            lambda t: interhead_loss([t], [(8, 8)], True),
            lambda t: interhead_loss_composite([t], True),
            logits,
            dict(atol=F32["loss_atol"], rtol=0),
        ),
        (
            lambda f: patch_similarity_entropy(f, 0.01, 10, True, 2),
            lambda f: pse_composite(f, 0.01, 10, True, 2),
            feats,
            dict(rtol=1e-5, atol=0),
        ),
    ):
        if backward_in_autocast and x is feats:
            continue
        new, g_new = _autocast_value_and_grad(fast, x, backward_in_autocast)
        old, g_old = _autocast_value_and_grad(composite, x, False)
        assert new.dtype == torch.float32 and g_new.dtype == torch.bfloat16
        torch.testing.assert_close(new, old, **value_tol)
        # fp32 gradients stored as bf16: one bf16 rounding step apart at most (2^-7 relative), plus the fp32 part
        torch.testing.assert_close(
            g_new.float(), g_old.float(), rtol=2**-7, atol=F32["grad_rtol"] * g_old.abs().max().item()
        )


@pytest.mark.parametrize("model_name", ["vit_mini", "swin_test"])
def test_generation_loss_pixel_gradients_match_composite(model_name):
    """d(L_IH + CE)/d(pixels) through a random-init teacher: the fast loss against the composite one."""
    teacher = _build(model_name)
    family_vit = model_name.startswith("vit")
    gen = torch.Generator().manual_seed(1)
    pixels = torch.randn(3, 3, 32, 32, generator=gen)
    labels = torch.randint(0, 10, (3,), generator=gen)

    def loss(x, which):
        with capture(teacher, "matmul_qk") as qk:
            ce = torch.nn.functional.cross_entropy(teacher(x), labels)
        if which == "composite":
            return interhead_loss_composite(qk, family_vit) + ce
        grids = [tuple(teacher.patch_embed.grid_size) if family_vit else (math.isqrt(t.shape[-1]),) * 2 for t in qk]
        return interhead_loss(qk, grids, family_vit) + ce

    new, g_new = _value_and_grad(lambda x: loss(x, "fast"), pixels)
    old, g_old = _value_and_grad(lambda x: loss(x, "composite"), pixels)
    torch.testing.assert_close(new, old, atol=F32["loss_atol"], rtol=0)
    _assert_grads_close(g_new, g_old, F32["grad_rtol"])


# ------------------------------------------------------------------------------------ patch-similarity entropy


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(
    ("shape", "batch", "bandwidth"), [((3, 2, 9, 5), 3, 0.01), ((12, 2, 9, 5), 3, 0.2), ((4, 4, 65, 32), 4, 0.01)]
)
def test_patch_similarity_entropy_matches_composite(shape, batch, bandwidth, dtype):
    feats = torch.randn(shape, generator=torch.Generator().manual_seed(2), dtype=dtype)
    new, g_new = _value_and_grad(lambda f: patch_similarity_entropy(f, bandwidth, 10, True, batch), feats)
    old, g_old = _value_and_grad(lambda f: pse_composite(f, bandwidth, 10, True, batch), feats)
    if dtype == torch.float64:
        torch.testing.assert_close(new, old, rtol=F64["loss_rtol"], atol=0)
        _assert_grads_close(g_new, g_old, F64["grad_rtol"])
    else:
        torch.testing.assert_close(new, old, rtol=1e-5, atol=0)
        _assert_grads_close(g_new, g_old, F32["grad_rtol"])


def test_interhead_loss_backward_twice_with_retained_graph():
    """The backward reads its saved tensors without writing to them: a retained graph gives the same gradient."""
    x = torch.randn(2, 4, 13, 13, dtype=torch.float64, requires_grad=True)
    loss = interhead_loss([x, 2 * x], [(3, 4)] * 2, drop_cls=True)
    (first,) = torch.autograd.grad(loss, x, retain_graph=True)
    (second,) = torch.autograd.grad(loss, x)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
