"""Loss math of quantization-aware fine-tuning, as pure functions on tensors (no models, no hooks).

MimiQ (the paper code's trainer.py; docs/method.md, Stage 3): logit KD with temperature and head-wise structural
attention distillation (HSAD) on the per-head attention outputs A·V; `distill_loss`, the classification objective
(their weighted sum, `weighted_terms`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

C2 = 0.03**2  # SSIM contrast/structure constant (the paper code's `ssim_dist_loss`)
DISTANCES = ("ssim", "mse", "l1", "kl")  # `distill.distance`: the paper's distance ablation (its code's options)


def ssim_cs(u: Tensor, v: Tensor, dim: int, c2: float = C2) -> Tensor:
    """Contrast·structure part of SSIM, (2σ_uv + C2) / (σ_u² + σ_v² + C2), with no luminance term (as the paper's code).

    Population (biased) statistics along `dim`, computed on centred tensors.

    Args:
        u: tensor of any shape.
        v: tensor of the same shape as `u`.
        dim: axis the statistics run along.
        c2: stabilising constant.

    Returns:
        `u`'s shape without `dim`; values in [−1, 1].
    """
    uc = u - u.mean(dim, keepdim=True)
    vc = v - v.mean(dim, keepdim=True)
    cov = (uc * vc).mean(dim)
    return (2 * cov + c2) / (uc.square().mean(dim) + vc.square().mean(dim) + c2)


def _layer_distance(t: Tensor, s: Tensor, distance: str) -> Tensor:
    """Distance of one layer's per-head attention outputs; t, s: (B, H, N, d_h), tokens on dim 2."""
    if distance == "ssim":
        # Statistics along tokens for every (image, head, channel) (code: "L B H N d -> L B d H N").
        return 1 - ssim_cs(t, s, dim=2).mean()
    if distance == "mse":
        return F.mse_loss(s, t)
    if distance == "l1":
        return F.l1_loss(s, t)
    # kl: softmax over tokens per (image, head, channel); the code's F.kl_div default reduction 'mean'
    # averages over every element, i.e. the mean per-row KL(teacher‖student) divided by N.
    kl = F.kl_div(F.log_softmax(s, dim=2), F.log_softmax(t, dim=2), reduction="sum", log_target=True)
    return kl / t.numel()


def hsad_loss(t_outs: Sequence[Tensor], s_outs: Sequence[Tensor], drop_cls: bool, distance: str = "ssim") -> Tensor:
    """Head-wise structural attention distillation L_HSAD (the paper code's `ssim_dist_loss[_swin]`).

    ssim: L = 1 − mean_{l,b,c,h} SSIM_cs(u, v), with u, v the teacher and student outputs of head h,
    channel c over the tokens. Layers weigh equally (the Swin code's per-layer loss, then mean over layers);
    for ViT, whose layers all have one size, this equals the code's mean over the stacked layers. mse / l1 are
    elementwise on the same tokens; kl is KL(teacher‖student) of the softmax over tokens (elementwise-mean
    reduction, as coded). The teacher is detached here, whatever the caller did.

    Args:
        t_outs: L teacher tensors (B, H, N, d_h), per-head A·V before the heads are merged. Swin:
            B = batch·windows, N = window tokens.
        s_outs: L student tensors of the same shapes.
        drop_cls: drop token 0 (ViT CLS); False for Swin windows.
        distance: one of "ssim", "mse", "l1", "kl".

    Returns:
        Scalar loss; 0 when student and teacher outputs are identical.
    """
    if distance not in DISTANCES:
        raise ValueError(f"unknown distill.distance {distance!r}; expected one of {', '.join(DISTANCES)}")
    if not t_outs:
        raise ValueError("hsad_loss needs at least one attention layer")
    per_layer = []
    for t, s in zip(t_outs, s_outs, strict=True):
        if t.shape != s.shape or t.ndim != 4:
            raise ValueError(f"teacher {tuple(t.shape)} and student {tuple(s.shape)} must be one (B, H, N, d_h)")
        t = t.detach()
        if drop_cls:
            t, s = t[:, :, 1:], s[:, :, 1:]
        per_layer.append(_layer_distance(t.float(), s.float(), distance))
    return torch.stack(per_layer).mean()


def kd_loss(s_logits: Tensor, t_logits: Tensor, temperature: float) -> Tensor:
    """Logit distillation T² · KL_bm(softmax(z_t/T) ‖ softmax(z_s/T)) (the paper code's trainer.py).

    As the code's `nn.KLDivLoss(reduction="batchmean")(log_softmax(z_s/T), softmax(z_t/T))`; the T² keeps the
    gradient scale independent of T. The teacher is detached.

    Args:
        s_logits: (B, C) student logits.
        t_logits: (B, C) teacher logits.
        temperature: T.

    Returns:
        Scalar loss.
    """
    log_p_s = F.log_softmax(s_logits.float() / temperature, dim=-1)
    log_p_t = F.log_softmax(t_logits.detach().float() / temperature, dim=-1)
    return temperature**2 * F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)


def weighted_terms(parts: dict[str, tuple[float, Callable[[], Tensor]]], what: str) -> dict[str, Tensor]:
    """{name: weight * loss()} for every non-zero weight, in the order given, and their sum under "total".
    Zero-weight losses are not computed; all weights zero is an error naming `what`'s weights.

    Args:
        parts: name -> (weight, a function computing the scalar loss).
        what: the weights' config names for the error, e.g. "distill.kd_scale, distill.ce_scale".
    """
    terms = {name: weight * loss() for name, (weight, loss) in parts.items() if weight}
    if not terms:
        raise ValueError(f"every loss weight ({what}) is 0")
    terms["total"] = sum(terms.values())
    return terms


def distill_loss(
    s_logits: Tensor, t_logits: Tensor, labels: Tensor, s_av: list[Tensor], t_av: list[Tensor], dcfg, drop_cls: bool
) -> dict[str, Tensor]:
    """The classification QAT objective: kd_scale * KD + ce_scale * CE(student, labels) + hsad_scale * HSAD.

    Args:
        s_logits, t_logits: (B, C) student / teacher logits; labels: (B,) generation labels.
        s_av, t_av: per block (B, H, N, d_h) per-head A·V of the student / teacher.
        dcfg: the `distill` group (kd_scale, ce_scale, hsad_scale, temperature, distance).
        drop_cls: token 0 is a CLS token, left out of HSAD.

    Returns:
        the weighted terms ("kd", "ce", "hsad": those with a non-zero weight) and their sum under "total".
    """
    return weighted_terms(
        {
            "kd": (dcfg.kd_scale, lambda: kd_loss(s_logits.float(), t_logits.float(), dcfg.temperature)),
            "ce": (dcfg.ce_scale, lambda: F.cross_entropy(s_logits.float(), labels)),
            "hsad": (dcfg.hsad_scale, lambda: hsad_loss(t_av, s_av, drop_cls=drop_cls, distance=dcfg.distance)),
        },
        "distill.kd_scale, distill.ce_scale, distill.hsad_scale",
    )
