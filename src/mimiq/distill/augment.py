"""Train-time augmentation of synthetic images in QAT (the paper code's trainer.py): SimCLR-style, in [0, 1] pixels."""

from __future__ import annotations

import torch
from omegaconf import DictConfig
from torch import Tensor, nn
from torchvision.transforms import v2


def augments(cfg: DictConfig) -> bool:
    """Whether QAT augments this run's training set: `qat.augment.enabled`, and for a set other than real images
    (generator=real) also `qat.augment.synthetic` (true when absent: the paper code augments its synthetic set)."""
    a = cfg.qat.augment
    return bool(a.enabled) and (cfg.generator.name == "real" or bool(a.get("synthetic", True)))


@torch.no_grad()
def augment_consistency(
    teacher: nn.Module, images: Tensor, labels: Tensor, augment, draws: int = 8
) -> dict[str, float]:
    """How the teacher reads augmented views of a set against the clean images, averaged over `draws` draws.

    Args:
        teacher: the FP teacher (eval mode).
        images: (N, 3, H, W) in the teacher's normalisation; labels: (N,) the set's target labels.
        augment: (N, 3, H, W) -> (N, 3, H, W), e.g. a `SyntheticAugment` drawing per image.
    Returns:
        keeps_class (% of views the teacher gives its class on the clean image), matches_label (% of views read as
        the set's label), kl (mean KL(p_clean || p_view), nats), clean_agreement (% of clean images read as their
        label).
    """
    p0 = teacher(images).softmax(-1)
    y0, keep, match, kl = p0.argmax(-1), 0.0, 0.0, 0.0
    for _ in range(draws):
        p = teacher(augment(images)).softmax(-1)
        keep += (p.argmax(-1) == y0).float().mean().item()
        match += (p.argmax(-1) == labels).float().mean().item()
        kl += (p0 * (p0.clamp_min(1e-12).log() - p.clamp_min(1e-12).log())).sum(-1).mean().item()
    return {
        "keeps_class": 100 * keep / draws,
        "matches_label": 100 * match / draws,
        "kl": kl / draws,
        "clean_agreement": 100 * (y0 == labels).float().mean().item(),
    }


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
