"""Train-time augmentation of synthetic images in QAT (the paper code's trainer.py): SimCLR-style, in [0, 1] pixels."""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.transforms import v2


class SyntheticAugment:
    """RandomResizedCrop -> HFlip -> RandomApply(ColorJitter) -> RandomGrayscale -> GaussianBlur, applied to
    de-normalised images and normalised back.

    Args:
        cfg: `qat.augment` node (enabled, per_sample, crop_scale, jitter, jitter_p, grayscale_p, blur_frac,
            blur_sigma).
        mean, std: the model's normalisation, per channel.
        size: image side in px.
    The paper code transforms the whole batch tensor at once, so torchvision draws ONE set of random parameters
    per batch (`per_sample: false`); `per_sample: true` draws them per image.
    """

    def __init__(self, cfg, mean, std, size: int):
        self.enabled, self.per_sample = bool(cfg.enabled), bool(cfg.per_sample)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        kernel = int(cfg.blur_frac * size)
        kernel += 1 - kernel % 2  # odd, as the paper code forces it (22 -> 23 at 224 px)
        b, c, s, h = cfg.jitter
        steps = [
            v2.RandomResizedCrop(size, scale=tuple(cfg.crop_scale), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomApply([v2.ColorJitter(b, c, s, h)], p=cfg.jitter_p),
            v2.RandomGrayscale(p=cfg.grayscale_p),
        ]
        if kernel >= 3:
            steps.append(v2.GaussianBlur(kernel, sigma=tuple(cfg.blur_sigma)))
        self.transform = v2.Compose(steps)

    def __call__(self, x: Tensor) -> Tensor:
        """x: (B, 3, H, W) normalised -> (B, 3, H, W) normalised."""
        if not self.enabled:
            return x
        mean, std = self.mean.to(x.device), self.std.to(x.device)
        px = (x * std + mean).clamp(0, 1)
        px = torch.stack([self.transform(im) for im in px]) if self.per_sample else self.transform(px)
        return (px - mean) / std
