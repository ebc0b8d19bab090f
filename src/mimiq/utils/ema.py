"""Exponential moving average of a model's weights (the shipped mini teachers: `teacher.ema_decay`)."""

from __future__ import annotations

import torch


def ema_update(ema: dict[str, torch.Tensor], state: dict[str, torch.Tensor], decay: float) -> None:
    """In place: ema <- decay * ema + (1 - decay) * state for floating tensors, a copy for the others (counters).
    Both dicts map a state_dict's names to tensors of the same shapes."""
    for k, v in state.items():
        if v.is_floating_point():
            ema[k].mul_(decay).add_(v.detach(), alpha=1 - decay)
        else:
            ema[k].copy_(v)
