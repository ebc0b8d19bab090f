"""Top-1 / top-5 classification accuracy."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from mimiq.utils import dist
from mimiq.utils.seed import autocast


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, precision: str = "fp32") -> dict:
    """Returns {"top1", "top5", "n"}: accuracies in percent over the whole loader.

    A loader over a `dist.RankShard` (each rank a disjoint part of the eval set, `dist.shard_dataset`) is
    evaluated by every rank and the correct / total counts are summed over ranks, so every rank returns the
    accuracy over the whole set. Any other loader is evaluated by this process alone.
    """
    was_training = model.training
    model.eval()
    correct1 = correct5 = n = 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        with autocast(precision, device):
            logits = model(x)
        top = logits.float().topk(min(5, logits.shape[1]), dim=1).indices  # (B, k)
        correct1 += (top[:, 0] == y).sum().item()
        correct5 += (top == y[:, None]).any(dim=1).sum().item()
        n += y.numel()
    model.train(was_training)
    if isinstance(loader.dataset, dist.RankShard):
        correct1, correct5, n = (int(v) for v in dist.all_reduce_sum([correct1, correct5, n]))
    if n == 0:
        raise ValueError("evaluation set is empty")
    return {"top1": 100.0 * correct1 / n, "top5": 100.0 * correct5 / n, "n": n}
