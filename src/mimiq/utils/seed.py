from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def derived_seed(seed: int, k: int) -> int:
    """The seed of the k-th epoch of QAT (or shard of a backbone-made dense set) of a run seeded `seed`."""
    return seed * 1_000_003 + k


def resolve_device(device: str) -> torch.device:
    """`auto` picks CUDA when present, else CPU; anything else is passed to torch.device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={device!r} but CUDA is not available on this machine; use device=cpu or auto")
    return dev


def autocast(precision: str, device: torch.device):
    """bf16 autocast for forward passes when `precision == "bf16"`, else a no-op context."""
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be fp32 or bf16, got {precision!r}")
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
