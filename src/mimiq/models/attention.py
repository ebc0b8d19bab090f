"""Attention modules we own, swapped in for timm's by `isinstance` (a module swap; timm is never patched).

They compute attention explicitly (never fused SDPA) through two small `MatMul` sub-modules, so that `capture`
sees the tensors MimiQ aligns and distils, and quantizers can sit on all four matmul operands:

    ViT/DeiT (`ViTAttention`, replaces timm.models.vision_transformer.Attention):
        matmul_qk(q, k^T) -> (B, H, N, N)      Q K^T before x scale, mask, softmax (synthesis loss, docs/method.md)
        softmax                                FP, probabilities (B, H, N, N)
        matmul_av(probs, v) -> (B, H, N, d_h)  per-head A V before the heads are merged (HSAD, docs/method.md)
    Swin (`SwinWindowAttention`, replaces timm.models.swin_transformer.WindowAttention):
        matmul_qk(q * scale, k^T) -> (B*nW, H, Ws^2, Ws^2)  q is pre-scaled, as in timm and the paper code;
                                               before the relative-position bias, the shift mask and softmax
        matmul_av(probs, v) -> (B*nW, H, Ws^2, d_h)

The swapped modules reuse the timm module's parameters and sub-modules by reference and keep its state_dict
keys, so FP checkpoints load strictly into a swapped model.

Capture (`capture`, for the generation losses and HSAD): `qk_sink` / `av_sink` (None unless a `capture` block
sets them to a list) receive the matmul_qk / matmul_av product of every forward, appended by the module's own
forward. No forward hook is involved, so a model under `torch.compile` captures inside its graph (the appends
are replayed after it, without a graph break).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from timm.layers.attention import maybe_add_mask, resolve_self_attn_mask
from timm.models.swin_transformer import WindowAttention
from timm.models.vision_transformer import Attention
from torch import Tensor, nn


class MatMul(nn.Module):
    """a @ b with one quantizer slot per operand (nn.Identity while FP); the attention module captures the product.

    Args:
        roles: names of the two operands in the manifest, e.g. ("q", "k").
    """

    def __init__(self, roles: tuple[str, str]):
        super().__init__()
        self.slots = {roles[0]: "quant_a", roles[1]: "quant_b"}  # manifest role -> quantizer attribute
        self.quant_a, self.quant_b = nn.Identity(), nn.Identity()

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return self.quant_a(a) @ self.quant_b(b)

    def extra_repr(self) -> str:
        return " @ ".join(self.slots)


class ViTAttention(nn.Module):
    """timm `Attention` (ViT / DeiT) with capturable, quantizable matmuls; same options (qkv bias, qk_norm,
    scale_norm, gate, masks, dropouts) and state_dict keys. Built from a timm module by `swap_attention`."""

    qk_sink: list[Tensor] | None = None  # set by `capture`: receives matmul_qk's (B, H, N, N) product
    av_sink: list[Tensor] | None = None  # set by `capture`: receives matmul_av's (B, H, N, d_h) product

    def __init__(self, src: Attention):
        super().__init__()
        self.num_heads, self.head_dim, self.attn_dim = src.num_heads, src.head_dim, src.attn_dim
        self.scale = src.scale
        self.qkv, self.q_norm, self.k_norm, self.attn_drop = src.qkv, src.q_norm, src.k_norm, src.attn_drop
        self.norm, self.gate, self.proj, self.proj_drop = src.norm, src.gate, src.proj, src.proj_drop
        self.matmul_qk, self.matmul_av = MatMul(("q", "k")), MatMul(("probs", "v"))
        self.softmax = nn.Softmax(dim=-1)  # stays FP

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
        """x: (B, N, C) -> (B, N, C_out)."""
        B, N, _ = x.shape
        gate = self.gate(x).sigmoid() if self.gate is not None else None
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, H, N, d_h) each
        q, k = self.q_norm(q), self.k_norm(k)
        attn = self.matmul_qk(q, k.transpose(-2, -1))  # (B, H, N, N)
        if self.qk_sink is not None:
            self.qk_sink.append(attn)
        attn = attn * self.scale
        attn = maybe_add_mask(attn, resolve_self_attn_mask(N, attn, attn_mask, is_causal))
        attn = self.attn_drop(self.softmax(attn))
        x = self.matmul_av(attn, v)  # (B, H, N, d_h)
        if self.av_sink is not None:
            self.av_sink.append(x)
        x = x.transpose(1, 2).reshape(B, N, self.attn_dim)
        x = self.norm(x)
        if gate is not None:
            x = x * gate
        return self.proj_drop(self.proj(x))


class SwinWindowAttention(nn.Module):
    """timm `WindowAttention` (Swin W-MSA / SW-MSA) with capturable, quantizable matmuls; same relative-position
    bias, shift mask, dropouts and state_dict keys. Built from a timm module by `swap_attention`. (timm's
    `set_window_size` is not carried over: change the input size before swapping.)"""

    qk_sink: list[Tensor] | None = None  # set by `capture`: receives matmul_qk's (B*nW, H, Ws^2, Ws^2) product
    av_sink: list[Tensor] | None = None  # set by `capture`: receives matmul_av's (B*nW, H, Ws^2, d_h) product

    def __init__(self, src: WindowAttention):
        super().__init__()
        self.dim, self.window_size, self.window_area = src.dim, src.window_size, src.window_area
        self.num_heads, self.scale = src.num_heads, src.scale
        self.relative_position_bias_table = src.relative_position_bias_table
        self.register_buffer("relative_position_index", src.relative_position_index, persistent=False)
        self.qkv, self.attn_drop, self.proj, self.proj_drop = src.qkv, src.attn_drop, src.proj, src.proj_drop
        self.matmul_qk, self.matmul_av = MatMul(("q", "k")), MatMul(("probs", "v"))
        self.softmax = nn.Softmax(dim=-1)  # stays FP

    def rel_pos_bias(self) -> Tensor:
        """(1, H, Ws^2, Ws^2) relative-position bias."""
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(self.window_area, self.window_area, -1).permute(2, 0, 1).unsqueeze(0)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x: (B*nW, Ws^2, C) windows; mask: (nW, Ws^2, Ws^2) of 0 / -inf (shifted windows) or None."""
        B_, N, _ = x.shape
        q, k, v = self.qkv(x).reshape(B_, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        attn = self.matmul_qk(q * self.scale, k.transpose(-2, -1))  # (B*nW, H, N, N)
        if self.qk_sink is not None:
            self.qk_sink.append(attn)
        attn = attn + self.rel_pos_bias()
        if mask is not None:
            num_win = mask.shape[0]
            attn = attn.view(-1, num_win, self.num_heads, N, N) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.num_heads, N, N)
        attn = self.attn_drop(self.softmax(attn))
        x = self.matmul_av(attn, v)  # (B*nW, H, N, d_h)
        if self.av_sink is not None:
            self.av_sink.append(x)
        x = x.transpose(1, 2).reshape(B_, N, -1)  # (B*nW, N, C)
        return self.proj_drop(self.proj(x))


OWN_ATTENTION = (ViTAttention, SwinWindowAttention)


def swap_attention(model: nn.Module) -> int:
    """Replaces, in place, timm `Attention` / `WindowAttention` of `model` by ours; returns the count."""
    timm_attention = (Attention, WindowAttention)
    swaps = [(name, m) for name, m in model.named_modules() if name and isinstance(m, timm_attention)]
    for name, m in swaps:
        new = ViTAttention(m) if isinstance(m, Attention) else SwinWindowAttention(m)
        model.set_submodule(name, new.train(m.training))
    return len(swaps)


def attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of our attention modules in forward order (what `capture` and the quantizers use)."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, OWN_ATTENTION)]


SINKS = {"matmul_qk": "qk_sink", "matmul_av": "av_sink"}  # which product -> the modules' sink attribute


@contextmanager
def capture(model: nn.Module, which: str) -> Iterator[list[Tensor]]:
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
