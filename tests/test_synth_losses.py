"""Generator loss math (docs/method.md: MimiQ's and PSAQ-ViT's) against float64 loops and an independent numpy KDE."""

import math

import numpy as np
import pytest
import torch

from mimiq.synth.losses import (
    interhead_loss,
    interhead_ssim,
    interhead_ssim_reference,
    mean_interhead_similarity,
    tv_prior_mimiq,
    tv_prior_psaq,
)
from mimiq.synth.psaq import patch_similarity_entropy

VIT = dict(shape=(2, 3, 1 + 3 * 4, 1 + 3 * 4), grid=(3, 4), drop_cls=True)  # CLS + 3×4 patches
SWIN = dict(shape=(3, 4, 9, 9), grid=(3, 3), drop_cls=False)  # batch·windows, 3×3 window


@pytest.mark.parametrize("case", [VIT, SWIN], ids=["vit_cls", "swin_window"])
def test_interhead_ssim_matches_float64_loop(case):
    logits = 3 * torch.randn(case["shape"], generator=torch.Generator().manual_seed(0))
    fast = interhead_ssim(logits, case["grid"], case["drop_cls"])
    ref = interhead_ssim_reference(logits, case["grid"], case["drop_cls"])
    b, h, n, _ = case["shape"]
    assert fast.shape == (b, n - case["drop_cls"], h, h)
    torch.testing.assert_close(fast.double(), ref, atol=1e-5, rtol=0)
    assert ref.abs().max() <= 1 and (ref - torch.eye(h)).abs().max() > 0.1  # random heads really differ


def test_ssim_with_itself_is_one_and_loss_zero_for_identical_heads():
    one_head = torch.randn(2, 1, 13, 13)
    logits = one_head.expand(2, 4, 13, 13)
    ssim = interhead_ssim(logits, (3, 4), drop_cls=True)
    torch.testing.assert_close(ssim, torch.ones_like(ssim))
    assert interhead_loss([logits], [(3, 4)], drop_cls=True).item() == pytest.approx(0, abs=1e-6)
    assert mean_interhead_similarity([logits], [(3, 4)], drop_cls=True) == pytest.approx(1, abs=1e-6)
    # only the CLS row/column differs between heads: dropped, so still aligned
    with_cls = logits.clone()
    with_cls[:, :, 0] = torch.randn(2, 4, 13)
    assert interhead_loss([with_cls], [(3, 4)], drop_cls=True).item() == pytest.approx(0, abs=1e-6)


def test_interhead_loss_weighs_layers_equally():
    gen = torch.Generator().manual_seed(1)
    layers = [torch.randn(2, 3, 13, 13, generator=gen), torch.randn(5, 3, 10, 10, generator=gen)]
    grids = [(3, 4), (3, 3)]
    ssims = [
        interhead_ssim_reference(layers[0], grids[0], True),
        interhead_ssim_reference(layers[1][:, :, 1:, 1:], grids[1], False),
    ]
    expected = sum((1 - s**2).mean() for s in ssims) / 2
    assert interhead_loss(layers, grids, drop_cls=True).item() == pytest.approx(expected.item(), abs=1e-6)
    off = ~torch.eye(3, dtype=torch.bool)
    expected_sim = sum(s[..., off].mean() for s in ssims) / 2
    assert mean_interhead_similarity(layers, grids, drop_cls=True) == pytest.approx(expected_sim.item(), abs=1e-6)


def test_interhead_loss_gradients_are_exact_and_descend():
    logits = torch.randn(1, 3, 10, 10, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: interhead_loss([x], [(3, 3)], drop_cls=True), (logits,))
    loss = interhead_loss([logits], [(3, 3)], drop_cls=True)
    (grad,) = torch.autograd.grad(loss, logits)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert interhead_loss([logits - 1.0 * grad], [(3, 3)], drop_cls=True) < loss


def test_interhead_ssim_stays_fp32_under_bf16_autocast():
    logits = torch.randn(2, 3, 13, 13)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ssim = interhead_ssim(logits, (3, 4), drop_cls=True)
    assert ssim.dtype == torch.float32
    torch.testing.assert_close(ssim, interhead_ssim(logits, (3, 4), drop_cls=True))


def test_interhead_rejects_wrong_grid_and_single_head():
    with pytest.raises(ValueError, match="grid"):
        interhead_ssim(torch.randn(1, 2, 13, 13), (3, 3), drop_cls=True)
    with pytest.raises(ValueError, match="2 heads or more"):
        mean_interhead_similarity([torch.randn(1, 1, 10, 10)], [(3, 3)], drop_cls=True)


def _tv_loops(x: np.ndarray, diagonal_weight: float) -> float:
    """TV from per-pixel neighbour loops: √Σ of squared differences per direction."""
    _, _, h, w = x.shape
    sq = [0.0, 0.0, 0.0, 0.0]  # right, down, up-right, down-right neighbour
    for i in range(h):
        for j in range(w):
            p = x[:, :, i, j]
            if j + 1 < w:
                sq[0] += ((p - x[:, :, i, j + 1]) ** 2).sum()
            if i + 1 < h:
                sq[1] += ((p - x[:, :, i + 1, j]) ** 2).sum()
            if i >= 1 and j + 1 < w:
                sq[2] += ((p - x[:, :, i - 1, j + 1]) ** 2).sum()
            if i + 1 < h and j + 1 < w:
                sq[3] += ((p - x[:, :, i + 1, j + 1]) ** 2).sum()
    return math.sqrt(sq[0]) + math.sqrt(sq[1]) + diagonal_weight * (math.sqrt(sq[2]) + math.sqrt(sq[3]))


def test_tv_priors_match_neighbour_loops():
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64)
    assert tv_prior_mimiq(x).item() == pytest.approx(_tv_loops(x.numpy(), 1 / math.sqrt(2)), rel=1e-12)
    assert tv_prior_psaq(x).item() == pytest.approx(_tv_loops(x.numpy(), 1.0), rel=1e-12)
    assert tv_prior_mimiq(torch.full((1, 3, 4, 4), 0.7)).item() == 0


def _entropy_numpy(feats: np.ndarray, images: int, bandwidth: float, n_points: int) -> float:
    """PSAQ `generate_data.py` + `utils/kde.py`, written per image with explicit trapezoids."""
    patches = feats.mean(axis=1)[:, 1:]  # (R, N-1, d)
    unit = patches / np.linalg.norm(patches, axis=-1, keepdims=True)
    samples = np.einsum("rid,rjd->rij", unit, unit).reshape(images, -1)
    xs = np.linspace(samples.min(), samples.max(), n_points)
    entropies = []
    for s in samples:
        p = np.array([np.mean(np.exp(-((x - s) ** 2) / (2 * bandwidth**2))) for x in xs])
        p = p / np.sqrt(2 * np.pi * bandwidth**2) + 1e-4
        f = -p * np.log(p)
        entropies.append(sum((f[k] + f[k + 1]) / 2 * (xs[k + 1] - xs[k]) for k in range(n_points - 1)))
    return float(np.mean(entropies))


@pytest.mark.parametrize("windows", [1, 4], ids=["vit", "swin_windows_pooled"])
@pytest.mark.parametrize("bandwidth", [0.01, 0.2])
def test_patch_similarity_entropy_matches_numpy(windows, bandwidth):
    feats = torch.randn(3 * windows, 2, 1 + 8, 5, dtype=torch.float64)
    got = patch_similarity_entropy(feats, bandwidth=bandwidth, n_points=10, batch_size=3)
    expected = _entropy_numpy(feats.numpy(), 3, bandwidth, 10)
    assert got.item() == pytest.approx(expected, rel=1e-9)
    # fp32 path agrees too
    assert patch_similarity_entropy(feats.float(), bandwidth, 10, batch_size=3).item() == pytest.approx(
        expected, rel=1e-3
    )


def test_patch_similarity_entropy_is_differentiable_and_drop_cls_matters():
    feats = torch.randn(2, 3, 10, 6, requires_grad=True)
    entropy = patch_similarity_entropy(feats)
    (grad,) = torch.autograd.grad(entropy, feats)
    assert torch.isfinite(grad).all() and grad[:, :, 1:].abs().sum() > 0
    assert grad[:, :, 0].abs().sum() == 0  # CLS dropped
    assert patch_similarity_entropy(feats, drop_cls=False) != entropy
