"""The PSAQ-ViT generator (arXiv 2203.02250) and its prior, the patch-similarity entropy of the head-mean A·V:
L = −Σ_blocks H(patch similarity) + w_ce·CE(f(x̃), y) + w_tv·|TV(x̃) − v|, Adam in rounds of warm-up + cosine.

The entropy's Gaussian KDE (`_GaussianKde`) is an autograd Function with its backward written out; the same values
and gradients as the composite code it replaced, to rounding (tests/test_synth_speed_equivalence.py). It runs in at
least fp32 with autocast disabled. `psaq_batch` is a loop over `psaq_step`; its state, schedule and losses
(`psaq_init`, `psaq_augment`, `teacher_av`, `pse`, `tv_target`) serve PSAQ-ViT V2 (`mimiq.synth.psaq_v2`) too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from mimiq.models.attention import capture
from mimiq.synth.augment import psaq_transform, scale_px
from mimiq.synth.core import Batch, Context, Curves, init_pixels, random_labels, step
from mimiq.synth.losses import at_least_fp32, tv_prior_psaq

KDE_FLOOR = 1e-4  # PSAQ `differential_entropy`: p + 1e-4 before p·log p


class _GaussianKde(torch.autograd.Function):
    """Gaussian KDE p(t) = mean_s N(t; s, h²) of each image's samples at the points t, with the backward written
    out: dp(t)/ds = N(t; s, h²) (t − s) / (h² S), so dL/ds = (Σ_t g_t t N_ts − s Σ_t g_t N_ts) / (h² S), one
    batched matmul over the saved kernel values instead of autograd's elementwise replay of (B, T, S) tensors.
    The points are constants (no gradient), as in PSAQ.
    """

    @staticmethod
    def forward(ctx, samples: Tensor, points: Tensor, bandwidth: float) -> Tensor:
        # (B, T, S): N(t; s, h²) = exp(−(t − s)² / (2 h²)) / (h √(2π)), built in place
        kernel = (points.view(1, -1, 1) - samples.unsqueeze(1)).square_()
        kernel.mul_(-0.5 / bandwidth**2).exp_().mul_(1 / (bandwidth * math.sqrt(2 * math.pi)))
        ctx.bandwidth = bandwidth
        ctx.save_for_backward(samples, points, kernel)
        return kernel.mean(-1)  # (B, T)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        samples, points, kernel = ctx.saved_tensors
        g = grad / (ctx.bandwidth**2 * samples.shape[-1])  # (B, T)
        weights = torch.stack([g * points, g], dim=1)  # (B, 2, T)
        with torch.autocast(grad.device.type, enabled=False):  # a backward called inside an autocast region
            sums = weights @ kernel  # (B, 2, S): Σ_t g_t t N_ts and Σ_t g_t N_ts
        return sums[:, 0] - samples * sums[:, 1], None, None


def patch_similarity_entropy(
    feats: Tensor,
    bandwidth: float = 0.01,
    n_points: int = 10,
    drop_cls: bool = True,
    batch_size: int | None = None,
) -> Tensor:
    """PSAQ-ViT differential entropy of one layer's patch similarities (PSAQ-ViT's `generate_data.py`).

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
        patches = at_least_fp32(feats).mean(dim=1)  # (R, N, d): head-mean
        if drop_cls:
            patches = patches[:, 1:]
        unit = torch.nn.functional.normalize(patches, dim=-1, eps=1e-8)
        sims = unit @ unit.transpose(-1, -2)  # (R, M, M) cosine similarities Γ_ij
        samples = sims.reshape(batch_size or sims.shape[0], -1)  # (B, S): each image's similarity values
        lo, hi = samples.detach().min(), samples.detach().max()
        points = torch.linspace(0, 1, n_points, device=samples.device, dtype=samples.dtype) * (hi - lo) + lo
        density = _GaussianKde.apply(samples, points, bandwidth) + KDE_FLOOR  # (B, n_points)
        return torch.trapezoid(-density * density.log(), points, dim=-1).mean()


def _warmup_cosine(base_lr: float, step: int, steps: int, warmup: int) -> float:
    """PSAQ `lr_cosine_policy`: linear warm-up over `warmup` steps, then cosine to 0 at `steps`."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / (steps - warmup))) * base_lr


@dataclass
class PsaqState:
    """One batch being optimised by PSAQ's schedule (its `generate_data.py`): Adam, `rounds` rounds of warm-up +
    cosine lr, each with its roll limit (the same offset on both axes) and a random flip; clamp after each step."""

    x: Tensor  # (b, 3, H, W) pixels in normalised space, the leaf optimised
    y: Tensor | None  # (b,) random labels (psaq); None where the labels come later (psaq_v2)
    v: float  # TV target |TV(x̃) − v| (`tv_target`)
    opt: torch.optim.Optimizer  # Adam on x, one state across rounds
    lr: float  # base learning rate (ViT or Swin)
    steps: int  # iterations per round
    warmup: int  # warm-up iterations of each round
    limits: list[int]  # roll limit of each round, px at this image size


def psaq_init(ctx: Context, n: int, gen: torch.Generator, labels: bool = True) -> PsaqState:
    """A batch of n images at iteration 0: Gaussian pixels, random labels (if `labels`), the TV target, Adam."""
    g = ctx.gen_cfg
    x = init_pixels(ctx, n, gen)
    y = random_labels(ctx, n, gen) if labels else None
    v = tv_target(ctx, n, gen)
    lr = g.lr_swin if ctx.family == "swin" else g.lr
    opt = torch.optim.Adam([x], lr=lr, betas=tuple(g.betas), eps=g.eps)
    steps = g.iterations // g.rounds
    limits = [scale_px(j, ctx.shape[-1], g.ref_size) for j in g.jitter]
    return PsaqState(x, y, v, opt, lr, steps, max(1, round(g.warmup_frac * steps)), limits)


def psaq_augment(ctx: Context, state: PsaqState, it: int, gen: torch.Generator) -> Tensor:
    """Sets the lr of iteration `it` (0 … iterations − 1) and returns its x̃ = flip(roll(x)) (B, 3, H, W)."""
    rnd, i = divmod(it, state.steps)
    for group in state.opt.param_groups:
        group["lr"] = _warmup_cosine(state.lr, i, state.steps, state.warmup)
    return psaq_transform(state.x, state.limits[rnd], ctx.gen_cfg, gen)


def teacher_av(ctx: Context, x_aug: Tensor) -> tuple[Tensor | None, list[Tensor]]:
    """The teacher's logits on x̃ and the per-head A·V (R, H, N, d_h) of every block, captured in its forward."""
    with capture(ctx.teacher, "matmul_av") as av:
        logits = ctx.forward(ctx.teacher_fn, x_aug)
    return logits, av


def pse(ctx: Context, av: list[Tensor], n: int) -> Tensor:
    """L_PSE = −Σ_blocks H (PSAQ-ViT, arXiv 2203.02250). PSAQ's code drops token 0 of every Swin window as well."""
    g = ctx.gen_cfg
    return -sum(patch_similarity_entropy(a, g.kde_bandwidth, g.kde_points, True, n) for a in av)


def tv_target(ctx: Context, n: int, gen: torch.Generator) -> float:
    """PSAQ's TV target v ~ U(a, b), given for `tv_target_batch` images at `ref_size` px (PSAQ-ViT's code).

    TV is a sum of Frobenius norms over the batch, which grow as √(number of pixel differences), so v is
    scaled by √(n / tv_target_batch · H·W / ref_size²): the same per-pixel smoothness at any batch and size.
    """
    g = ctx.gen_cfg
    lo, hi = g.tv_target
    v = lo + (hi - lo) * torch.rand((), generator=gen).item()
    return v * math.sqrt(n / g.tv_target_batch * ctx.shape[1] * ctx.shape[2] / g.ref_size**2)


def psaq_step(ctx: Context, state: PsaqState, it: int, gen: torch.Generator) -> dict[str, Tensor]:
    """Iteration `it` of PSAQ-ViT: the round's lr and x̃ (`psaq_augment`), teacher forward capturing A·V,
    L = −Σ H(patch similarity) + w_ce·CE(f(x̃), y) + w_tv·|TV(x̃) − v| (TV on x̃, as PSAQ's code), Adam step,
    clamp. Returns the scalar terms loss, pse, ce, tv."""
    g = ctx.gen_cfg
    x_aug = psaq_augment(ctx, state, it, gen)
    logits, av = teacher_av(ctx, x_aug)
    ce = F.cross_entropy(logits, state.y)
    l_pse, tv = pse(ctx, av, len(state.x)), (tv_prior_psaq(x_aug) - state.v).abs()
    loss = g.w_pse * l_pse + g.w_ce * ce + g.w_tv * tv
    step(state.opt, loss)
    ctx.clamp_(state.x)
    return dict(loss=loss, pse=l_pse, ce=ce, tv=tv)


def psaq_batch(ctx: Context, images: slice, gen: torch.Generator, curves: Curves) -> Batch:
    """PSAQ-ViT (arXiv 2203.02250): `generator.iterations` of `psaq_step` on a batch from `psaq_init`."""
    state = psaq_init(ctx, images.stop - images.start, gen)
    for it in range(ctx.gen_cfg.iterations):
        curves.add(**psaq_step(ctx, state, it, gen))
    return Batch(state.x.detach(), state.y, curves.stack())
