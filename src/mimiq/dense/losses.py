"""Task-level output distillation of the dense QAT, as pure functions on tensors (no models, no hooks).

The classification QAT distils logits (KD) and per-head attention outputs (HSAD). A detector / segmentor has no
image-level logits, so the output term is replaced by one on what the task head consumes or produces:

    detection     normalised MSE between the teacher's and the student's FPN feature maps, plus BCE of the
                  student's RPN objectness to the teacher's probabilities (class-agnostic, needs no proposal);
    segmentation  T^2 * KL(teacher || student) of the decode head's per-pixel class distributions.

HSAD itself is `mimiq.distill.losses.hsad_loss`, applied to the backbone's attention unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def feature_distill_loss(s_feats: Sequence[Tensor], t_feats: Sequence[Tensor], eps: float = 1e-8) -> Tensor:
    """mean_l ||F_s^l - F_t^l||^2 / ||F_t^l||^2 over the levels (scale-free across levels and models).

    Args:
        s_feats: L student maps (B, C, H_l, W_l).
        t_feats: L teacher maps of the same shapes (detached here).

    Returns:
        Scalar; 0 when the maps are equal.
    """
    if len(s_feats) != len(t_feats) or not t_feats:
        raise ValueError(f"feature_distill_loss: {len(s_feats)} student vs {len(t_feats)} teacher levels")
    per_level = []
    for s, t in zip(s_feats, t_feats, strict=True):
        t = t.detach().float()
        per_level.append((s.float() - t).square().mean() / (t.square().mean() + eps))
    return torch.stack(per_level).mean()


def objectness_distill_loss(s_logits: Sequence[Tensor], t_logits: Sequence[Tensor]) -> Tensor:
    """mean_l BCE(sigmoid(s), sigmoid(t)) of RPN objectness logits, minus its value at s = t (so 0 when equal).

    Args:
        s_logits: L student maps (B, A, H_l, W_l) of objectness logits (A anchors per position).
        t_logits: L teacher maps of the same shapes (detached here).
    """
    per_level = []
    for s, t in zip(s_logits, t_logits, strict=True):
        p_t = torch.sigmoid(t.detach().float())
        bce = F.binary_cross_entropy_with_logits(s.float(), p_t)
        floor = F.binary_cross_entropy_with_logits(t.detach().float(), p_t)  # teacher's own entropy
        per_level.append(bce - floor)
    return torch.stack(per_level).mean()


def pixel_kd_loss(s_logits: Tensor, t_logits: Tensor, temperature: float) -> Tensor:
    """T^2 * mean over pixels of KL(softmax(t / T) || softmax(s / T)) across classes.

    Args:
        s_logits: (B, K, H, W) student class logits.
        t_logits: (B, K, H, W) teacher class logits (detached here).
        temperature: T.
    """
    log_p_s = F.log_softmax(s_logits.float() / temperature, dim=1)
    log_p_t = F.log_softmax(t_logits.detach().float() / temperature, dim=1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(1)  # (B, H, W)
    return temperature**2 * kl.mean()
