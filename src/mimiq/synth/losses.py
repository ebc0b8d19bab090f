"""Loss math of the synthetic-data generators, as pure functions on captured tensors (no models, no hooks).

MimiQ (the paper's code; docs/method.md, Stage 1): the inter-head attention similarity loss on pre-softmax Q·Kᵀ
rows and its TV prior; PSAQ-ViT's TV prior (arXiv 2203.02250); PSAQ-ViT V2's teacher-student discrepancy (arXiv
2209.05687, a reconstruction from its abstract). PSAQ's patch-similarity entropy is next to its
generator (`mimiq.synth.psaq`).

Every loss runs in at least fp32 with autocast disabled, so a bf16 forward pass upstream does not turn the
SSIM covariances into bf16 matmuls.

Speed: the inter-head loss (`_InterheadLoss`) is an autograd Function with its backward written out; the same
values and gradients as the composite code it replaced, to rounding (tests/test_synth_speed_equivalence.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

C1 = 0.01**2  # SSIM luminance constant (the paper code's `ssim_loss_att_map`)
C2 = 0.03**2  # SSIM contrast/structure constant (the paper code's `ssim_loss_att_map`)
MINMAX_EPS = 1e-8  # min-max normalisation of each attention row, as in the code's `ssim_loss_att_map`


def at_least_fp32(x: Tensor) -> Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _check_logits(logits: Tensor, grid: tuple[int, int], drop_cls: bool) -> None:
    if logits.ndim != 4 or logits.shape[-1] != logits.shape[-2]:
        raise ValueError(f"expected attention logits (B, H, N, N), got {tuple(logits.shape)}")
    keys = logits.shape[-1] - drop_cls
    if keys != grid[0] * grid[1]:
        raise ValueError(
            f"{keys} keys (drop_cls={drop_cls}) do not fill the grid {tuple(grid)} "
            f"of the attention logits {tuple(logits.shape)}"
        )


def _attention_rows(logits: Tensor, drop_cls: bool) -> Tensor:
    """The raw attention rows, one per (image, query patch, head): (B, H, N, N) -> (B, Nq, H, K), a view.

    As in the paper's code: one row per spatial query patch and head. The row statistics reduce over the keys,
    contiguous in memory, so they read the view as it is; :func:`_ssim_terms` writes the centred rows contiguously,
    once.
    """
    x = logits[:, :, 1:, 1:] if drop_cls else logits
    return x.transpose(1, 2)


def _ssim_terms(rows: Tensor, c1: float, c2: float) -> dict[str, Tensor]:
    """Inter-head SSIM of the min-max normalised rows, from the statistics of the raw rows.

    Each row r is normalised as x = (r − min r) / s with s = max r − min r + ε (the code's `ssim_loss_att_map`:
    there s = max(r − min r) + ε, the same number, floating-point subtraction being monotone). SSIM needs only
    the means and covariances of x, and those follow from r's without forming x:

        μ_x = (mean r − min r) / s,    cov_x(i, j) = cov_r(i, j) / (s_i s_j),

    cov_r from the centred raw rows U = r − mean r, one batched H×H matmul per (image, query). The same quantities
    as normalising first, in another order of operations (fp32 results differ by rounding, ~1e-7).

    Args:
        rows: (B, Nq, H, K) raw rows from :func:`_attention_rows`, in at least fp32.
        c1: luminance constant.
        c2: contrast/structure constant.

    Returns:
        ssim (B, Nq, H, H) and the intermediates the backward of :class:`_InterheadLoss` reuses.
    """
    lo, hi = rows.amin(-1), rows.amax(-1)  # (B, Nq, H); torch.aminmax is slower on CPU
    mean = rows.mean(-1)
    if torch.is_grad_enabled() and rows.requires_grad:  # U, contiguous for the batched matmul
        centred = (rows - mean.unsqueeze(-1)).contiguous()
    else:  # (the Function's forward) straight into a contiguous tensor, without a copy
        centred = torch.sub(rows, mean.unsqueeze(-1), out=rows.new_empty(rows.shape))
    inv = 1 / (hi - lo + MINMAX_EPS)  # 1 / s
    mu = (mean - lo) * inv
    scale = inv.unsqueeze(-1) * inv.unsqueeze(-2) / rows.shape[-1]  # 1 / (K s_i s_j)
    cov = (centred @ centred.transpose(-1, -2)) * scale  # (B, Nq, H, H) population σ_ij; σ_i² on the diagonal
    var = cov.diagonal(dim1=-2, dim2=-1)
    mu_i, mu_j = mu.unsqueeze(-1), mu.unsqueeze(-2)
    lum_den = mu_i.square() + mu_j.square() + c1
    luminance = (2 * mu_i * mu_j + c1) / lum_den
    str_den = var.unsqueeze(-1) + var.unsqueeze(-2) + c2
    structure = (2 * cov + c2) / str_den
    return dict(
        ssim=luminance * structure,
        lo=lo,
        hi=hi,
        centred=centred,
        inv=inv,
        mu=mu,
        scale=scale,
        cov=cov,
        luminance=luminance,
        lum_den=lum_den,
        structure=structure,
        str_den=str_den,
    )


_SAVED = ("ssim", "lo", "hi", "centred", "inv", "mu", "scale", "cov", "luminance", "lum_den", "structure", "str_den")


def _add_extremum_grad(g_rows: Tensor, rows: Tensor, ext: Tensor, grad: Tensor, buf: Tensor) -> None:
    """g_rows += what amin/amax send back: `grad` split evenly over the positions equal to the extremum.

    The mask is written as 0/1 into the float tensor `buf` (free memory of the caller's): a bool mask would be
    converted at every use.
    """
    torch.eq(rows, ext.unsqueeze(-1), out=buf)
    g_rows.addcmul_(buf, (grad / buf.sum(-1)).unsqueeze(-1))


class _InterheadLoss(torch.autograd.Function):
    """mean(1 − SSIM²) of one layer's logits (B, H, N, N), in at least fp32, with the backward written out.

    Autograd through the composite ops replayed every elementwise op on the (B, Nq, H, K) rows, on a transposed
    view, and built the amin/amax masks as bool tensors converted at each use. Written out, the backward is
    (B, Nq, H, H) algebra, one batched matmul dL/dU = 2 G U with G = dL/dcov_r (symmetric), and the two extremum
    scatters, amin/amax's tie rule (an even split) kept; the gradient is written straight into the logits' layout.
    Left out: the term −Σ_k dL/dU_k of dL/d(mean r), = 2 G Σ_k U_k, which is 0. Not twice differentiable.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, drop_cls: bool, c1: float, c2: float) -> Tensor:
        t = _ssim_terms(_attention_rows(logits, drop_cls), c1, c2)
        ctx.drop_cls = drop_cls
        ctx.save_for_backward(logits, *(t[k] for k in _SAVED))
        return (1 - t["ssim"].square()).mean()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        with torch.autocast(grad.device.type, enabled=False):  # a backward called inside an autocast region
            return _InterheadLoss._backward(ctx, grad)

    @staticmethod
    def _backward(ctx, grad: Tensor):
        logits, ssim, lo, hi, centred, inv, mu, scale, cov, lum, lum_den, st, str_den = ctx.saved_tensors
        # Every (B, Nq, H, H) term is symmetric in (i, j) (up to rounding), so a head's two roles (row i, column j)
        # give one row sum, taken twice.
        g_ssim = ssim * (-2 * grad / ssim.numel())
        # luminance (2 μ_i μ_j + c1) / (μ_i² + μ_j² + c1): ∂/∂μ_i = 2 (μ_j − lum μ_i) / den
        g_lum = g_ssim * st / lum_den
        g_mu = 4 * (g_lum * (mu.unsqueeze(-2) - lum * mu.unsqueeze(-1))).sum(-1)
        # structure (2 σ_ij + c2) / (σ_i² + σ_j² + c2), the variances being the diagonal of cov
        g_str = g_ssim * lum / str_den
        g_cov = 2 * g_str
        g_cov.diagonal(dim1=-2, dim2=-1).sub_(2 * (g_str * st).sum(-1))
        # cov = U Uᵀ / (K s_i s_j), μ = (mean − lo) / s, s = hi − lo + ε
        g_s = -(2 * (g_cov * cov).sum(-1) + g_mu * mu) * inv
        g_rows = (2 * g_cov * scale) @ centred  # dL/dU, (B, Nq, H, K)
        # The gradient goes straight into the logits' layout; its (B, Nq, H, K) part serves as the mask buffer first
        # (every fresh large tensor costs its page faults: two here, one in the forward).
        g_logits = logits.new_empty(logits.shape)
        if ctx.drop_cls:  # CLS query row and key column: 0
            g_logits[:, :, 0].zero_()
            g_logits[:, :, 1:, 0].zero_()
        g_part = _attention_rows(g_logits, ctx.drop_cls)
        rows = _attention_rows(logits, ctx.drop_cls)
        _add_extremum_grad(g_rows, rows, lo, -g_mu * inv - g_s, g_part)
        _add_extremum_grad(g_rows, rows, hi, g_s, g_part)
        torch.add(g_rows, (g_mu * inv / rows.shape[-1]).unsqueeze(-1), out=g_part)  # + the term through mean r
        return g_logits, None, None, None


def interhead_ssim(logits: Tensor, grid: tuple[int, int], drop_cls: bool, c1: float = C1, c2: float = C2) -> Tensor:
    """Global SSIM between the attention maps of every pair of heads, per image and query patch (the paper's code).

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
        (B, Nq, H, H) SSIM matrix, symmetric, with ones on the diagonal (differentiable, by autograd).
    """
    _check_logits(logits, grid, drop_cls)
    with torch.autocast(logits.device.type, enabled=False):
        return _ssim_terms(_attention_rows(at_least_fp32(logits), drop_cls), c1, c2)["ssim"]


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
    """MimiQ inter-head attention similarity loss L_IH = mean_l mean_{b,n,i,j} (1 − SSIM²) (the paper's code).

    1 − SSIM² (not 1 − SSIM) as in the code: it penalises any |SSIM| < 1 regardless of sign (an unofficial
    third-party summary of the paper calls its distance an absolute SSIM). The
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
    per_layer = []
    for logits, grid in zip(logits_per_layer, grids, strict=True):
        _check_logits(logits, grid, drop_cls)
        with torch.autocast(logits.device.type, enabled=False):
            per_layer.append(_InterheadLoss.apply(at_least_fp32(logits), drop_cls, C1, C2))
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
    """MimiQ total variation (the paper's code): Frobenius norms of the 4 directional differences over the batch.

    The diagonal terms are divided by √2 (their step is √2 pixels long).

    Args:
        x: (B, 3, H, W) un-augmented images in normalised space.

    Returns:
        Scalar.
    """
    horizontal, vertical, anti_diagonal, diagonal = _directional_diffs(x)
    return horizontal.norm() + vertical.norm() + (anti_diagonal.norm() + diagonal.norm()) / math.sqrt(2)


def tv_prior_psaq(x: Tensor) -> Tensor:
    """PSAQ-ViT total variation TV(x) (its code): sum of the L2 norms of the 4 directional differences.

    No √2 on the diagonals. PSAQ's loss is ‖TV(x̃) − v‖₂ with v ~ U(2500, 3000) on the jittered images; the
    caller applies that target.

    Args:
        x: (B, 3, H, W) images in normalised space.

    Returns:
        Scalar.
    """
    return torch.stack([d.norm() for d in _directional_diffs(x)]).sum()


def psaq_v2_discrepancy(s_logits: Tensor, t_logits: Tensor) -> Tensor:
    """PSAQ-ViT V2 discrepancy KL(P_teacher ‖ Q_student), batch mean (reconstructed from arXiv 2209.05687).

    The sample step maximises it through both networks, so the teacher is **not** detached; the student step
    minimises it on fixed samples.

    Args:
        s_logits: (B, C) student logits.
        t_logits: (B, C) teacher logits.

    Returns:
        Scalar KL, summed over classes and averaged over the batch.
    """
    log_q_s = F.log_softmax(s_logits.float(), dim=-1)
    log_p_t = F.log_softmax(t_logits.float(), dim=-1)
    return F.kl_div(log_q_s, log_p_t, reduction="batchmean", log_target=True)
