"""Our attention modules inside OpenMMLab backbones, swapped in by `isinstance` (module swap, no patching).

Two kinds of attention occur in the dense models:

    mmdet / mmseg Swin (`WindowMSA`, the inner module of `ShiftWindowMSA`, which keeps the shift, padding and
        window partition): replaced by `MMWindowAttention`, a `SwinWindowAttention` built from the mm module.
        The math is the same as timm's window attention: q is pre-scaled, then the relative-position bias and
        the shift mask are added to Q K^T.
    mmseg ViT / DeiT (torch `nn.MultiheadAttention` inside mmcv's `MultiheadAttention` wrapper, which keeps the
        residual, the projection dropout and the batch-first transposes): replaced by `MHAttention`, a
        `ViTAttention` built from the torch module (self-attention only).

Both are subclasses of the classification modules, so everything that works on those works here unchanged:
`attention_modules`, `capture` (generation and HSAD), `quantize_model` (quantizers on Q, K, probs, V).
They reuse the source module's parameters by reference. `MMWindowAttention` keeps the mm state_dict keys
(`relative_position_index` stays a persistent buffer, as in mm); `MHAttention` stores torch's packed
`in_proj_weight` / `in_proj_bias` as the `qkv` Linear (keys `qkv.weight` / `qkv.bias`), so that the input
projection is a Linear that `quantize_model` quantizes like every other. Checkpoints are loaded into the FP
model before the swap (`mimiq.dense.checkpoint`).
"""

from __future__ import annotations

from torch import Tensor, nn

from mimiq.models.attention import MatMul, SwinWindowAttention, ViTAttention


def _window_msa_classes() -> tuple[type, ...]:
    """mmdet's and mmseg's `WindowMSA` classes, whichever of the two packages is installed."""
    classes = []
    for module in ("mmdet.models.backbones.swin", "mmseg.models.backbones.swin"):
        try:
            classes.append(__import__(module, fromlist=["WindowMSA"]).WindowMSA)
        except ImportError:
            continue
    return tuple(classes)


class MMWindowAttention(SwinWindowAttention):
    """mm `WindowMSA` (Swin W-MSA / SW-MSA windows) with capturable, quantizable matmuls.

    forward(x: (B*nW, Ws^2, C), mask: (nW, Ws^2, Ws^2) of 0 / -100 or None) -> (B*nW, Ws^2, C), as the mm module.
    """

    def __init__(self, src: nn.Module):
        nn.Module.__init__(self)
        self.dim, self.window_size = src.embed_dims, tuple(src.window_size)
        self.window_area = self.window_size[0] * self.window_size[1]
        self.num_heads, self.scale = src.num_heads, src.scale
        self.relative_position_bias_table = src.relative_position_bias_table
        self.register_buffer("relative_position_index", src.relative_position_index)  # persistent, as in mm
        self.qkv, self.attn_drop, self.proj, self.proj_drop = src.qkv, src.attn_drop, src.proj, src.proj_drop
        self.matmul_qk, self.matmul_av = MatMul(("q", "k")), MatMul(("probs", "v"))
        self.softmax = nn.Softmax(dim=-1)  # stays FP


class MHAttention(ViTAttention):
    """torch `nn.MultiheadAttention` used as self-attention (mmseg ViT / DeiT) with capturable, quantizable
    matmuls. Same call and return as torch's module: forward(query, key, value, ...) -> (out, None), with
    (N, B, C) sequences unless the source was built batch_first."""

    def __init__(self, src: nn.MultiheadAttention):
        nn.Module.__init__(self)
        if not src._qkv_same_embed_dim or src.bias_k is not None or src.add_zero_attn:
            raise ValueError("MHAttention: only plain self-attention nn.MultiheadAttention modules are supported")
        dim = src.embed_dim
        self.batch_first = src.batch_first
        self.num_heads, self.head_dim, self.attn_dim = src.num_heads, src.head_dim, dim
        self.scale = self.head_dim**-0.5  # torch scales q by 1/sqrt(d_h) inside scaled_dot_product_attention
        self.qkv = nn.Linear(dim, 3 * dim, bias=src.in_proj_bias is not None, device="meta")  # params set below
        self.qkv.weight = src.in_proj_weight  # torch packs [W_q; W_k; W_v]: the qkv layout of ViTAttention
        if src.in_proj_bias is not None:
            self.qkv.bias = src.in_proj_bias
        self.q_norm = self.k_norm = self.norm = nn.Identity()
        self.gate = None
        self.attn_drop = nn.Dropout(src.dropout)
        self.proj, self.proj_drop = src.out_proj, nn.Identity()  # mmcv's wrapper applies its own proj_drop
        self.matmul_qk, self.matmul_av = MatMul(("q", "k")), MatMul(("probs", "v"))
        self.softmax = nn.Softmax(dim=-1)  # stays FP

    def forward(
        self,
        query: Tensor,
        key: Tensor | None = None,
        value: Tensor | None = None,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = False,
        attn_mask: Tensor | None = None,
        **_,
    ) -> tuple[Tensor, None]:
        """query: (N, B, C) (or (B, N, C) if batch_first) -> ((N, B, C), None). key / value must be views of
        query's storage (self-attention, as mmcv's wrapper passes them); masks are not supported."""
        for other in (key, value):
            if other is not None and (other.data_ptr() != query.data_ptr() or other.shape != query.shape):
                raise ValueError("MHAttention supports self-attention only (key and value must be the query)")
        if key_padding_mask is not None or attn_mask is not None:
            raise ValueError("MHAttention: attention masks are not supported")
        x = query if self.batch_first else query.transpose(0, 1)  # (B, N, C)
        out = ViTAttention.forward(self, x)
        return (out if self.batch_first else out.transpose(0, 1)), None


def swap_mm_attention(model: nn.Module) -> int:
    """Replaces, in place, every mm `WindowMSA` and every torch `nn.MultiheadAttention` of `model` by ours.

    Returns:
        the number of swapped modules.
    """
    window_msa = _window_msa_classes()
    swaps = []
    for name, m in model.named_modules():
        if name and window_msa and isinstance(m, window_msa):
            swaps.append((name, MMWindowAttention(m), m.training))
        elif name and isinstance(m, nn.MultiheadAttention):
            swaps.append((name, MHAttention(m), m.training))
    for name, new, training in swaps:
        model.set_submodule(name, new.train(training))
    return len(swaps)
