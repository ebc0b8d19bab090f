"""Capture the outputs of every attention matmul of a model (for generation losses and HSAD)."""

from __future__ import annotations

from contextlib import contextmanager

from torch import Tensor, nn

from mimiq.models.attention import attention_modules


@contextmanager
def capture(model: nn.Module, which: str):
    """Within the block, each forward of `model` appends the output of `<attention>.<which>` (which =
    "matmul_qk" | "matmul_av") of every block, in block order, to the yielded list. Clear it between steps.

    Yields:
        list of Tensors: matmul_qk (B, H, N, N) pre-scale Q K^T; matmul_av (B, H, N, d_h) per-head A V.
    """
    outs: list[Tensor] = []
    mods = attention_modules(model)
    if not mods:
        raise ValueError(f"{type(model).__name__} has no swapped attention modules: call swap_attention first")
    handles = [getattr(m, which).register_forward_hook(lambda _m, _i, out: outs.append(out)) for _, m in mods]
    try:
        yield outs
    finally:
        for h in handles:
            h.remove()
