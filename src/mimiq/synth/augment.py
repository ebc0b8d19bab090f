"""Input transforms of the pixel-optimising generators, as pure functions of a seeded `torch.Generator`.

Every random draw comes from the generator passed in (drawn on the CPU, then moved to the images' device):
a batch is a deterministic function of its seed on any device, and a resumed run repeats an interrupted one.
"""

from __future__ import annotations

import torch
from torch import Tensor


def scale_px(px: int, side: int, ref_size: int) -> int:
    """A pixel count given at `ref_size` (the paper's 224 px), scaled linearly to an image side `side`.

    Rounded; a non-zero value stays at least 1 px, so jitter never vanishes on small images.

    The scale rule of every generator's roll (docs/mini.md, 'Convergence of the synthetic sets'): the paper's
    limit as a fraction of the image side, MimiQ 8 / 16 px -> 1 / 2 px and PSAQ-ViT 15 / 30 px -> 2 / 4 px at
    32 px. The roll must keep its sub-patch offsets: a roll in whole patches only, or none, lets the pixels fit the
    patch grid (full agreement at the grid phase they were made at, a fifth of it one pixel away); the paper's
    limit counted in patches instead (2 / 4 px at 4 px patches) converges slower at the mini budget.
    """
    return 0 if px == 0 else max(1, round(px * side / ref_size))


def _uniform(shape: tuple[int, ...], low: float, high: float, gen: torch.Generator, like: Tensor) -> Tensor:
    return (torch.rand(shape, generator=gen) * (high - low) + low).to(like.device, like.dtype)


def roll_jitter(x: Tensor, limit: int, gen: torch.Generator, same_offset: bool = False) -> Tensor:
    """Circular shift of the whole batch by offsets drawn from U{−limit … limit} (DeepInversion jitter).

    Args:
        x: (B, C, H, W) images.
        limit: largest |offset| in pixels.
        gen: the batch's random generator.
        same_offset: one offset for both axes (PSAQ-ViT's code) instead of one per axis (MimiQ's code).

    Returns:
        (B, C, H, W) rolled images.
    """
    offsets = torch.randint(-limit, limit + 1, (1 if same_offset else 2,), generator=gen).tolist()
    dy, dx = offsets * 2 if same_offset else offsets
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


def random_flip(x: Tensor, p: float, gen: torch.Generator) -> Tensor:
    """Horizontal flip of the whole batch with probability p. x: (B, C, H, W)."""
    return x.flip(3) if torch.rand((), generator=gen).item() < p else x


def annealed_noise(x: Tensor, step: int, total: int, std: float, gen: torch.Generator) -> Tensor:
    """`GaussianNoise` of hamidkazemi22/vit-visualization as used by MimiQ's code: adds a per-image,
    per-channel constant randn · std · rem / total, where rem = total − 1 − step anneals linearly to 0.

    Args:
        x: (B, C, H, W) images.
        step: current iteration, 0-based.
        total: iterations of the batch (`max_iter`).
        std: offset std at step 0.
        gen: the batch's random generator.

    Returns:
        (B, C, H, W) shifted images.
    """
    offset = torch.randn(x.shape[:2] + (1, 1), generator=gen).to(x.device, x.dtype)  # (B, C, 1, 1)
    return x + offset * (std * (total - 1 - step) / total)


def color_jitter(x: Tensor, mean_range: float, log_std_range: float, gen: torch.Generator) -> Tensor:
    """`ColorJitter` of vit-visualization (as in MimiQ's code): (x − m) / s with m ~ U(−a, a) and s = exp(U(−b, b)),
    drawn per image and channel at every call.

    Args:
        x: (B, C, H, W) images.
        mean_range: a.
        log_std_range: b.
        gen: the batch's random generator.

    Returns:
        (B, C, H, W) images.
    """
    shape = x.shape[:2] + (1, 1)
    m = _uniform(shape, -mean_range, mean_range, gen, x)
    s = _uniform(shape, -log_std_range, log_std_range, gen, x).exp()
    return (x - m) / s


def mimiq_transform(x: Tensor, step: int, g, gen: torch.Generator) -> Tensor:
    """x̃ of MimiQ's step `step` (the paper's code): ColorJitter(GaussianNoise(flip(roll(x)))), the model's input.

    Args:
        x: (B, 3, H, W) normalised images.
        step: iteration, 0-based, of `g.iterations` (the roll limit doubles and the noise anneals over them).
        g: the `generator` config of MimiQ (jitter, ref_size, flip, noise_std, jitter_mean, jitter_log_std).
        gen: the batch's random generator.
    """
    limits = [scale_px(j, x.shape[-1], g.ref_size) for j in g.jitter]  # first half, second half
    x = roll_jitter(x, limits[0] if step < g.iterations / 2 else limits[1], gen)
    x = random_flip(x, g.flip, gen)
    x = annealed_noise(x, step, g.iterations, g.noise_std, gen)
    return color_jitter(x, g.jitter_mean, g.jitter_log_std, gen)


def psaq_transform(x: Tensor, limit: int, g, gen: torch.Generator) -> Tensor:
    """x̃ of a PSAQ-ViT (and V2) step (PSAQ-ViT's code): flip(roll(x)), one offset for both axes.

    Args:
        x: (B, 3, H, W) normalised images.
        limit: the round's roll limit in px at this image size (`scale_px(g.jitter[round], H, g.ref_size)`).
        g: the `generator` config (flip).
        gen: the batch's random generator.
    """
    return random_flip(roll_jitter(x, limit, gen, same_offset=True), g.flip, gen)


def _mimiq_at(x: Tensor, g, progress: float, gen: torch.Generator) -> Tensor:
    return mimiq_transform(x, min(int(progress * g.iterations), g.iterations - 1), g, gen)


def _psaq_at(x: Tensor, g, progress: float, gen: torch.Generator) -> Tensor:
    r = min(int(progress * g.rounds), g.rounds - 1)
    return psaq_transform(x, scale_px(g.jitter[r], x.shape[-1], g.ref_size), g, gen)


TRANSFORMS = {"mimiq": _mimiq_at, "psaq": _psaq_at}  # generator `facts.transform` -> its transform at a progress


def generator_transform(x: Tensor, g, progress: float, gen: torch.Generator) -> Tensor:
    """The input transform a pixel-optimising generator applies at `progress` ∈ [0, 1) of its steps.

    Used to check a teacher against what the generator will show it (the teacher-invariance gate). `g`: the
    `generator` config; its `facts.transform` names the transform (TRANSFORMS; null: none, x is returned).
    x: (B, 3, H, W) normalised images.
    """
    kind = g.facts.transform
    if kind is None:
        return x
    if kind not in TRANSFORMS:
        raise ValueError(f"generator={g.name}: facts.transform {kind!r} is not one of {sorted(TRANSFORMS)} or null")
    return TRANSFORMS[kind](x, g, progress, gen)
