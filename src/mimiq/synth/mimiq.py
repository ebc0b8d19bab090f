"""The MimiQ generator (docs/method.md, Stage 1): pixels optimised from Gaussian noise so that the heads of every
block attend alike: inter-head attention SSIM + CE to a random label + TV prior, roll jitter, annealed noise, colour
jitter.

Through a dense model's backbone (no classifier) the CE term does not exist: L = w_ih·L_IH + w_tv·TV(x).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mimiq.models.attention import capture
from mimiq.synth.augment import mimiq_transform
from mimiq.synth.core import Batch, Context, Curves, init_pixels, random_labels, step
from mimiq.synth.losses import interhead_loss, tv_prior_mimiq


def mimiq_batch(ctx: Context, images: slice, gen: torch.Generator, curves: Curves) -> Batch:
    """MimiQ (the paper's code): L = w_ih·L_IH(all blocks) + w_ce·CE(f(x̃), y) + w_tv·TV(x), AdamW + cosine, clamp."""
    g, n = ctx.gen_cfg, images.stop - images.start
    x, y = init_pixels(ctx, n, gen), random_labels(ctx, n, gen)
    opt = torch.optim.AdamW([x], lr=g.lr, betas=tuple(g.betas), eps=g.eps, weight_decay=g.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=g.iterations, eta_min=g.lr_min)
    with capture(ctx.teacher, "matmul_qk") as qk:
        for it in range(g.iterations):
            x_aug = mimiq_transform(x, it, g, gen)  # as the paper's code: the model sees x̃; TV sees x
            qk.clear()
            logits = ctx.forward(ctx.teacher, x_aug)
            # mean(1 − SSIM²) over blocks, heads, queries; w_interhead = 0 is the CE + TV-only generator
            ih = interhead_loss(qk, ctx.grids, ctx.drop_cls) if g.w_interhead else x.new_zeros(())
            ce = F.cross_entropy(logits, y) if ctx.uses_ce else None
            tv = tv_prior_mimiq(x)
            if ce is None:  # a backbone: no classifier, no CE term
                loss = g.w_interhead * ih + g.w_tv * tv
                terms = dict(loss=loss, ih=ih, tv=tv)
            else:
                loss = g.w_interhead * ih + g.w_ce * ce + g.w_tv * tv
                terms = dict(loss=loss, ih=ih, ce=ce, tv=tv)
            step(opt, loss)
            sched.step()
            ctx.clamp_(x)
            curves.add(**terms)
    return Batch(x.detach(), y, curves.stack())
