"""Loss math of the synthetic-data generators, as pure functions on hooked tensors (no models, no hooks).

MimiQ (spec §2.1): the inter-head attention similarity loss on pre-softmax Q·Kᵀ rows and its TV prior.
PSAQ-ViT (spec §6.1): the patch-similarity entropy (Gaussian KDE) and its TV prior.

Every loss runs in at least fp32 with autocast disabled, so a bf16 forward pass upstream does not turn the
SSIM covariances or the cosine similarities into bf16 matmuls.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

C1 = 0.01**2  # SSIM luminance constant (spec §2.1)
C2 = 0.03**2  # SSIM contrast/structure constant (spec §2.1)
MINMAX_EPS = 1e-8  # min-max normalisation of each attention row, as in the code's `ssim_loss_att_map`
KDE_FLOOR = 1e-4  # PSAQ `differential_entropy`: p + 1e-4 before p·log p


def _at_least_fp32(x: Tensor) -> Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _attention_rows(logits: Tensor, grid: tuple[int, int], drop_cls: bool) -> Tensor:
    """Min-max normalised attention rows, one per (image, query, head).

    Args:
        logits: (B, H, N, N) pre-softmax Q·Kᵀ of one attention layer.
        grid: (gh, gw) key grid; gh·gw must equal the number of keys left after dropping CLS.
        drop_cls: drop token 0 as query and as key (ViT); False for Swin windows.

    Returns:
        (B, Nq, H, gh·gw) rows in [0, 1].
    """
    if logits.ndim != 4 or logits.shape[-1] != logits.shape[-2]:
        raise ValueError(f"expected attention logits (B, H, N, N), got {tuple(logits.shape)}")
    x = logits[:, :, 1:, 1:] if drop_cls else logits
    if x.shape[-1] != grid[0] * grid[1]:
        raise ValueError(
            f"{x.shape[-1]} keys (drop_cls={drop_cls}) do not fill the grid {tuple(grid)} "
            f"of the attention logits {tuple(logits.shape)}"
        )
    # §2.1 step 2: one row per spatial query patch and head
    x = _at_least_fp32(x).transpose(1, 2)  # (B, Nq, H, K)
    x = x - x.amin(-1, keepdim=True)
    return x / (x.amax(-1, keepdim=True) + MINMAX_EPS)


def interhead_ssim(logits: Tensor, grid: tuple[int, int], drop_cls: bool, c1: float = C1, c2: float = C2) -> Tensor:
    """Global SSIM between the attention maps of every pair of heads, per image and query patch (spec §2.1).

    Each (query, head) row of Q·Kᵀ is min-max normalised over the keys and read as a gh×gw map. SSIM uses
    population statistics over the whole map (no Gaussian window); as a global statistic it does not depend on
    the map's layout, so it is computed on the flattened row. All head pairs come from one batched matmul.

    Args:
        logits: (B, H, N, N) pre-softmax, pre-scale Q·Kᵀ of one layer. ViT: N = 1 + gh·gw with CLS first;
            Swin: B = batch·windows, N = Ws² and drop_cls False.
        grid: (gh, gw) patch grid of the keys (ViT 224/16: (14, 14); Swin window: (Ws, Ws)).
        drop_cls: drop the CLS token as query and as key.
        c1: luminance constant.
        c2: contrast/structure constant.

    Returns:
        (B, Nq, H, H) SSIM matrix, symmetric, with ones on the diagonal.
    """
    with torch.autocast(logits.device.type, enabled=False):
        x = _attention_rows(logits, grid, drop_cls)  # (B, Nq, H, K)
        mu = x.mean(-1)  # (B, Nq, H)
        xc = x - mu.unsqueeze(-1)
        cov = xc @ xc.transpose(-1, -2) / x.shape[-1]  # (B, Nq, H, H) population σ_ij; σ_i² on the diagonal
        var = cov.diagonal(dim1=-2, dim2=-1)  # (B, Nq, H)
        luminance = (2 * mu.unsqueeze(-1) * mu.unsqueeze(-2) + c1) / (
            mu.square().unsqueeze(-1) + mu.square().unsqueeze(-2) + c1
        )
        structure = (2 * cov + c2) / (var.unsqueeze(-1) + var.unsqueeze(-2) + c2)
        return luminance * structure


def interhead_ssim_reference(logits: Tensor, grid: tuple[int, int], drop_cls: bool) -> Tensor:
    """Plain float64 loop over (image, query, head i, head j) of :func:`interhead_ssim`, for tests.

    Args:
        logits: (B, H, N, N) as in :func:`interhead_ssim`.
        grid: (gh, gw) key grid.
        drop_cls: drop the CLS token as query and as key.

    Returns:
        (B, Nq, H, H) float64 SSIM matrix.
    """
    # Constants spelled out here, independently of the fast path, so that a changed constant is caught.
    c1, c2, eps = 0.01**2, 0.03**2, 1e-8
    x = logits.detach().double()
    if drop_cls:
        x = x[:, :, 1:, 1:]
    b_size, heads, n_q, _ = x.shape
    out = torch.empty(b_size, n_q, heads, heads, dtype=torch.float64)
    for b in range(b_size):
        for n in range(n_q):
            maps = []
            for h in range(heads):
                row = x[b, h, n] - x[b, h, n].min()
                maps.append((row / (row.max() + eps)).reshape(grid))
            for i in range(heads):
                for j in range(heads):
                    mi, mj = maps[i], maps[j]
                    mu_i, mu_j = mi.mean(), mj.mean()
                    var_i, var_j = ((mi - mu_i) ** 2).mean(), ((mj - mu_j) ** 2).mean()
                    cov = ((mi - mu_i) * (mj - mu_j)).mean()
                    out[b, n, i, j] = ((2 * mu_i * mu_j + c1) * (2 * cov + c2)) / (
                        (mu_i**2 + mu_j**2 + c1) * (var_i + var_j + c2)
                    )
    return out


def interhead_loss(logits_per_layer: Sequence[Tensor], grids: Sequence[tuple[int, int]], drop_cls: bool) -> Tensor:
    """MimiQ inter-head attention similarity loss L_IH = mean_l mean_{b,n,i,j} (1 − SSIM²) (spec §2.1).

    1 − SSIM² (not 1 − SSIM) as in the code: it penalises any |SSIM| < 1 regardless of sign (spec §7.2). The
    diagonal i = j is included, as in the code, and contributes 0. Layers weigh equally (the Swin code's
    per-layer mean, then mean over layers); for ViT, whose layers all have one size, this equals the code's
    mean over the stacked layers.

    Args:
        logits_per_layer: L tensors (B, H, N, N), pre-softmax Q·Kᵀ of every attention layer.
        grids: L key grids (gh, gw), one per layer.
        drop_cls: drop the CLS token as query and as key (ViT True, Swin False).

    Returns:
        Scalar loss in [0, 1].
    """
    if not logits_per_layer:
        raise ValueError("interhead_loss needs at least one attention layer")
    per_layer = [
        (1 - interhead_ssim(logits, grid, drop_cls).square()).mean()
        for logits, grid in zip(logits_per_layer, grids, strict=True)
    ]
    return torch.stack(per_layer).mean()


@torch.no_grad()
def mean_interhead_similarity(
    logits_per_layer: Sequence[Tensor], grids: Sequence[tuple[int, int]], drop_cls: bool
) -> float:
    """Mean inter-head attention SSIM, the diagnostic of the paper's Fig. 1 (higher = heads more aligned).

    Plain SSIM (not squared, not 1 −), averaged over the head pairs i ≠ j (the diagonal, identically 1, is
    excluded), query patches and images of each layer, then over layers with equal weight.

    Args:
        logits_per_layer: L tensors (B, H, N, N) as in :func:`interhead_loss`, H ≥ 2.
        grids: L key grids (gh, gw).
        drop_cls: drop the CLS token as query and as key.

    Returns:
        The mean SSIM, in [−1, 1].
    """
    if not logits_per_layer:
        raise ValueError("mean_interhead_similarity needs at least one attention layer")
    per_layer = []
    for logits, grid in zip(logits_per_layer, grids, strict=True):
        ssim = interhead_ssim(logits, grid, drop_cls)  # (B, Nq, H, H)
        heads = ssim.shape[-1]
        if heads < 2:
            raise ValueError(f"inter-head similarity needs 2 heads or more, got logits {tuple(logits.shape)}")
        off_diagonal = ~torch.eye(heads, dtype=torch.bool, device=ssim.device)
        per_layer.append(ssim[..., off_diagonal].mean())
    return torch.stack(per_layer).mean().item()


def _directional_diffs(x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Horizontal, vertical, anti-diagonal and diagonal neighbour differences of (B, C, H, W) images."""
    return (
        x[:, :, :, :-1] - x[:, :, :, 1:],
        x[:, :, :-1, :] - x[:, :, 1:, :],
        x[:, :, 1:, :-1] - x[:, :, :-1, 1:],
        x[:, :, :-1, :-1] - x[:, :, 1:, 1:],
    )


def tv_prior_mimiq(x: Tensor) -> Tensor:
    """MimiQ total variation (spec §2.1): Frobenius norms of the 4 directional differences over the batch.

    The diagonal terms are divided by √2 (their step is √2 pixels long).

    Args:
        x: (B, 3, H, W) un-augmented images in normalised space.

    Returns:
        Scalar.
    """
    horizontal, vertical, anti_diagonal, diagonal = _directional_diffs(x)
    return horizontal.norm() + vertical.norm() + (anti_diagonal.norm() + diagonal.norm()) / math.sqrt(2)


def tv_prior_psaq(x: Tensor) -> Tensor:
    """PSAQ-ViT total variation TV(x) (spec §6.1): sum of the L2 norms of the 4 directional differences.

    No √2 on the diagonals. PSAQ's loss is ‖TV(x̃) − v‖₂ with v ~ U(2500, 3000) on the jittered images; the
    caller applies that target.

    Args:
        x: (B, 3, H, W) images in normalised space.

    Returns:
        Scalar.
    """
    return torch.stack([d.norm() for d in _directional_diffs(x)]).sum()


def patch_similarity_entropy(
    feats: Tensor,
    bandwidth: float = 0.01,
    n_points: int = 10,
    drop_cls: bool = True,
    batch_size: int | None = None,
) -> Tensor:
    """PSAQ-ViT differential entropy of one layer's patch similarities (spec §6.1, PSAQ `generate_data.py`).

    Patch features are the head-averaged A·V; their pairwise cosine similarities (self-pairs included, as in
    PSAQ) are the samples of a per-image Gaussian KDE evaluated on `n_points` points spanning the batch's
    [min, max]; H = −∫ p log p by the trapezoid rule with p + 1e-4. The evaluation points are constants, as
    PSAQ takes the range with `.item()`; gradients flow through the similarities. PSAQ's loss is
    −Σ_layers H (entropy maximised); callers sum the layers.

    Args:
        feats: (R, H, N, d) per-head attention output A·V of one layer. ViT: R = B images, CLS first.
            Swin: R = B·windows (windows of an image contiguous, as timm's `window_partition`).
        bandwidth: KDE Gaussian kernel standard deviation.
        n_points: number of evaluation points of the density.
        drop_cls: drop token 0. PSAQ's code also drops token 0 of every Swin window, which has no CLS.
        batch_size: B, the number of images; the R rows are grouped into B images whose similarities form one
            KDE each (PSAQ's `sims.view(batch_size, -1)`). None means R.

    Returns:
        Scalar: the entropy averaged over the B images.
    """
    with torch.autocast(feats.device.type, enabled=False):
        patches = _at_least_fp32(feats).mean(dim=1)  # (R, N, d): head-mean
        if drop_cls:
            patches = patches[:, 1:]
        unit = torch.nn.functional.normalize(patches, dim=-1, eps=1e-8)
        sims = unit @ unit.transpose(-1, -2)  # (R, M, M) cosine similarities Γ_ij
        samples = sims.reshape(batch_size or sims.shape[0], -1)  # (B, S): each image's similarity values
        lo, hi = samples.detach().min(), samples.detach().max()
        points = torch.linspace(0, 1, n_points, device=samples.device, dtype=samples.dtype) * (hi - lo) + lo
        # Gaussian KDE: p(t) = mean_s N(t; s, bandwidth²), evaluated at every point for every image.
        z = (points.view(1, -1, 1) - samples.unsqueeze(1)) / bandwidth  # (B, n_points, S)
        kernel = torch.exp(-0.5 * z.square()) / (bandwidth * math.sqrt(2 * math.pi))
        density = kernel.mean(-1) + KDE_FLOOR  # (B, n_points)
        return torch.trapezoid(-density * density.log(), points, dim=-1).mean()
