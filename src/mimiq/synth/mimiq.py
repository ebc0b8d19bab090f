"""The MimiQ generator (docs/method.md, Stage 1): pixels optimised from Gaussian noise so that the heads of every
block attend alike: inter-head attention SSIM + CE to a random label + TV prior, roll jitter, annealed noise, colour
jitter.

Through a dense model's backbone (no classifier) the CE term does not exist: L = w_ih·L_IH + w_tv·TV(x).
`mimiq_batch` is a loop over `mimiq_step`, one iteration each (the function `mimiq.perf` times).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from mimiq.models.attention import capture
from mimiq.synth.augment import mimiq_transform
from mimiq.synth.core import Batch, Context, Curves, init_pixels, random_labels, step
from mimiq.synth.losses import interhead_loss, tv_prior_mimiq


@dataclass
class MimiqState:
    """One batch being optimised."""

    x: Tensor  # (b, 3, H, W) pixels in normalised space, the leaf optimised
    y: Tensor  # (b,) random labels (zeros for a backbone)
    opt: torch.optim.Optimizer  # AdamW on x
    sched: torch.optim.lr_scheduler.LRScheduler  # cosine over the iterations


def mimiq_init(ctx: Context, n: int, gen: torch.Generator) -> MimiqState:
    """A batch of n images at iteration 0: Gaussian pixels, random labels, AdamW + cosine (the paper's code)."""
    g = ctx.gen_cfg
    x, y = init_pixels(ctx, n, gen), random_labels(ctx, n, gen)
    opt = torch.optim.AdamW([x], lr=g.lr, betas=tuple(g.betas), eps=g.eps, weight_decay=g.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=g.iterations, eta_min=g.lr_min)
    return MimiqState(x, y, opt, sched)


def mimiq_step(ctx: Context, state: MimiqState, it: int, gen: torch.Generator) -> dict[str, Tensor]:
    """Iteration `it` of MimiQ (the paper's code): x̃ = transform(x), teacher forward on x̃ capturing every block's
    pre-scale Q·Kᵀ, L = w_ih·L_IH(all blocks) + w_ce·CE(f(x̃), y) + w_tv·TV(x), backward to x, AdamW and cosine
    steps, clamp to the valid pixel range.

    Returns:
        The scalar terms: loss, ih, ce (classifiers only), tv; attached to the graph (curves detach them).
    """
    g, x = ctx.gen_cfg, state.x
    x_aug = mimiq_transform(x, it, g, gen)  # as the paper's code: the model sees x̃; TV sees x
    with capture(ctx.teacher, "matmul_qk") as qk:
        logits = ctx.forward(ctx.teacher_fn, x_aug)
    # mean(1 − SSIM²) over blocks, heads, queries; w_interhead = 0 is the CE + TV-only generator
    ih = interhead_loss(qk, ctx.grids, ctx.drop_cls) if g.w_interhead else x.new_zeros(())
    ce = F.cross_entropy(logits, state.y) if ctx.uses_ce else None
    tv = tv_prior_mimiq(x)
    if ce is None:  # a backbone: no classifier, no CE term
        loss = g.w_interhead * ih + g.w_tv * tv
        terms = dict(loss=loss, ih=ih, tv=tv)
    else:
        loss = g.w_interhead * ih + g.w_ce * ce + g.w_tv * tv
        terms = dict(loss=loss, ih=ih, ce=ce, tv=tv)
    step(state.opt, loss)
    state.sched.step()
    ctx.clamp_(x)
    return terms


def mimiq_batch(ctx: Context, images: slice, gen: torch.Generator, curves: Curves) -> Batch:
    """MimiQ (the paper's code): `generator.iterations` of `mimiq_step` on a batch from `mimiq_init`."""
    state = mimiq_init(ctx, images.stop - images.start, gen)
    for it in range(ctx.gen_cfg.iterations):
        curves.add(**mimiq_step(ctx, state, it, gen))
    return Batch(state.x.detach(), state.y, curves.stack())
