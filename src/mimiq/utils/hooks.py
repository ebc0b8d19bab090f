"""Capture the outputs of every attention matmul of a model (for generation losses and HSAD)."""

from __future__ import annotations

from contextlib import contextmanager

from torch import Tensor, nn

from mimiq.models.attention import attention_modules

SINKS = {"matmul_qk": "qk_sink", "matmul_av": "av_sink"}  # which product -> the attention modules' sink attribute


@contextmanager
def capture(model: nn.Module, which: str):
    """Within the block, each forward of `model` appends the output of `<attention>.<which>` (which =
    "matmul_qk" | "matmul_av") of every block, in block order, to the yielded list. Clear it between steps.

    The attention modules append it themselves (their `qk_sink` / `av_sink`), so this also captures inside a
    `torch.compile`d model without a graph break. A model captures one list per kind at a time.

    Yields:
        list of Tensors: matmul_qk (B, H, N, N) pre-scale Q K^T; matmul_av (B, H, N, d_h) per-head A V.
    """
    if which not in SINKS:
        raise ValueError(f"capture: which must be one of {', '.join(SINKS)}, got {which!r}")
    attr = SINKS[which]
    mods = [m for _, m in attention_modules(model)]
    if not mods:
        raise ValueError(f"{type(model).__name__} has no swapped attention modules: call swap_attention first")
    if any(getattr(m, attr) is not None for m in mods):
        raise RuntimeError(f"capture({type(model).__name__}, {which!r}) is already active on this model")
    outs: list[Tensor] = []
    for m in mods:
        setattr(m, attr, outs)
    try:
        yield outs
    finally:
        for m in mods:
            delattr(m, attr)  # back to the class default None (a deep copy made later carries no sink)
