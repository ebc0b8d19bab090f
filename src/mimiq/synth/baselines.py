"""The generators without optimisation: Gaussian noise (a lower bound) and real train images (the upper bound)."""

from __future__ import annotations

import torch

from mimiq.synth.core import Batch, Context, Curves, init_pixels, random_labels


def noise_batch(ctx: Context, images: slice, gen: torch.Generator, curves: Curves) -> Batch:
    """Gaussian noise in normalised space, clamped to the valid range; random labels (none for a backbone)."""
    n = images.stop - images.start
    x, y = init_pixels(ctx, n, gen).detach(), random_labels(ctx, n, gen)
    ctx.clamp_(x)
    return Batch(x, y, {})


def real_batch(ctx: Context, images: slice, gen: torch.Generator, curves: Curves) -> Batch:
    """Real train images `real_index[images]` of `cfg.data` with their labels (no randomness of its own)."""
    items = [ctx.real[i] for i in ctx.real_index[images].tolist()]
    return Batch(torch.stack([x for x, _ in items]), torch.as_tensor([y for _, y in items]), {})
