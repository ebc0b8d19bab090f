"""The integer reference forward: the student's quantized matmuls computed on integer codes, in plain PyTorch.

`integer_model(student)` returns a copy of the student whose quantized layers are swapped for integer ones:

    IntLinear   y = rescale(sum_k (q_x - z_x) q_w) + bias      x (..., in) -> (..., out)
    IntConv2d   the same on the im2col patches                   x (B, C, H, W) -> (B, out, H', W')
    IntMatMul   Q K^T and probs V on the codes of both operands  a (B, H, N, d), b (B, H, d, M) -> (B, H, N, M)

The codes q = clamp(round(x / s + z), qmin, qmax) come from each quantizer's own float arithmetic
(`mimiq.export.qparams`); the products are accumulated in int64 (every accumulator of the mini models fits in
int32: `accumulator_bits`), then rescaled once by s_x * s_w per output channel / head (float64, then the input dtype)
and the float bias added. LSQ+'s real offset b adds the exact correction terms b * (sum of the other operand's
centered codes), integer sums times a float factor (the offset of a weight is always 0). Softmax, LayerNorm, GELU,
residuals and the position embeddings stay float, as in the fake-quant student: "integer matmuls, float
element-wise". A layer whose input stays FP (the patch embedding under `first_last: paper`) multiplies the float
input with the integer weight codes and rescales by the weight step.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mimiq.export.qparams import ActQ, WeightQ, act_params, check_student, quant_layers, weight_params
from mimiq.models.attention import MatMul
from mimiq.quant.modules import QuantConv2d, QuantLinear


def integer_matmul(
    ca: Tensor, cb: Tensor, sa: Tensor, sb: Tensor, oa: Tensor | None = None, ob: Tensor | None = None
) -> Tensor:
    """sum_k (sa ca_k + oa)(sb cb_k + ob) with one integer matmul: ca (..., N, K) @ cb (..., K, M), int64.

    sa, sb, oa, ob: float64 tensors broadcastable to the (..., N, M) result (steps and offsets per tensor,
    per head or per output column). Returns float64 (..., N, M)."""
    y = torch.matmul(ca, cb).double() * (sa * sb)
    if ob is not None:
        y = y + (sa * ob) * ca.sum(-1, keepdim=True).double()
    if oa is not None:
        y = y + (oa * sb) * cb.sum(-2, keepdim=True).double()
    if oa is not None and ob is not None:
        y = y + ca.shape[-1] * oa * ob
    return y


def _head_view(p: Tensor, axis: int | None) -> Tensor:
    """A (C,) step / offset as float64 broadcasting over a (B, H, N, M) matmul result (per head along axis 1)."""
    p = p.double()
    return p.view(1, -1, 1, 1) if axis is not None else p.reshape(())


def _bits_needed(bound: int) -> int:
    """Bits of a signed integer holding every value in [-bound, bound]."""
    return math.ceil(math.log2(bound + 1)) + 1


class IntLinear(nn.Module):
    """QuantLinear on integer codes: x (..., in) -> (..., out), float32."""

    def __init__(self, layer: QuantLinear):
        super().__init__()
        self.act: ActQ | None = act_params(layer.input_quant)
        self.wq: WeightQ | None = weight_params(layer.weight_quant, layer.weight)
        self.weight = layer.weight.detach().clone()  # used only when the weight stays FP
        self.bias = None if layer.bias is None else layer.bias.detach().clone()
        if self.wq is not None:
            self.register_buffer("w_codes_t", self.wq.codes.t().long().contiguous(), persistent=False)  # (in, out)

    def forward(self, x: Tensor) -> Tensor:
        if self.wq is None:  # FP weight: a float layer on the dequantized input
            xh = x if self.act is None else self._dequant_input(x)
            return F.linear(xh, self.weight, self.bias)
        sw = self.wq.step()  # (out,) or (1,)
        if self.act is None:  # FP input, integer weight codes
            y = torch.matmul(x.double(), self.w_codes_t.double()) * sw
        else:
            a = self.act
            off = None if a.offset is None else a.offset.double()
            y = integer_matmul(a.centered(x), self.w_codes_t, a.scale.double(), sw, off, None)
        if self.bias is not None:
            y = y + self.bias.double()
        return y.to(x.dtype)

    def _dequant_input(self, x: Tensor) -> Tensor:
        a = self.act
        xh = (a.codes(x) - a.zero) * a.scale
        return xh if a.offset is None else xh + a.offset

    def accumulator_bits(self) -> int | None:
        """Signed bits of the worst-case accumulator sum_k |q_x - z_x| |q_w| (None unless both are integer)."""
        if self.act is None or self.wq is None:
            return None
        k = self.w_codes_t.shape[0]
        return _bits_needed(k * self.act.max_abs_centered() * max(abs(self.wq.qmin), abs(self.wq.qmax)))


class IntConv2d(nn.Module):
    """QuantConv2d on integer codes (im2col + int64 matmul): x (B, C, H, W) -> (B, out, H', W'), float32."""

    def __init__(self, layer: QuantConv2d):
        super().__init__()
        self.act: ActQ | None = act_params(layer.input_quant)
        self.wq: WeightQ | None = weight_params(layer.weight_quant, layer.weight)
        if self.wq is None:
            raise ValueError("IntConv2d: an FP conv weight is not an integer layer")
        self.kernel_size, self.kw = layer.kernel_size, layer.conv_kwargs
        if isinstance(self.kw["padding"], str):
            raise ValueError(f"IntConv2d: padding={self.kw['padding']!r} not covered (an explicit padding is)")
        self.bias = None if layer.bias is None else layer.bias.detach().clone()
        self.register_buffer("w_codes", self.wq.codes.long(), persistent=False)  # (out, in, kh, kw)

    def forward(self, x: Tensor) -> Tensor:
        sw = self.wq.step_along(4, 1)  # (1, out, 1, 1)
        if self.act is None:  # FP input, integer weight codes: float64 conv, one rescale
            y = F.conv2d(x.double(), self.w_codes.double(), None, **self.kw) * sw
        else:
            a = self.act
            B, _, H, W = x.shape
            kw = {k: self.kw[k] for k in ("stride", "padding", "dilation")}
            # centered codes are small integers: exact in float32 through im2col, then int64
            cols = F.unfold(a.centered(x).to(x.dtype), self.kernel_size, **kw).long()  # (B, C*kh*kw, L)
            out = self.w_codes.shape[0]
            y = integer_matmul(
                cols.transpose(1, 2),  # (B, L, K)
                self.w_codes.view(out, -1).t(),  # (K, out)
                a.scale.double(),
                self.wq.step(),
                None if a.offset is None else a.offset.double(),
            ).transpose(1, 2)  # (B, out, L)
            h, w = (
                _out_size(n, k, *(kw[key][i] for key in ("stride", "padding", "dilation")))
                for i, (n, k) in enumerate(zip((H, W), self.kernel_size, strict=True))
            )
            y = y.reshape(B, out, h, w)
        if self.bias is not None:
            y = y + self.bias.double().view(1, -1, 1, 1)
        return y.to(x.dtype)

    def accumulator_bits(self) -> int | None:
        if self.act is None:
            return None
        k = self.w_codes[0].numel()
        return _bits_needed(k * self.act.max_abs_centered() * max(abs(self.wq.qmin), abs(self.wq.qmax)))


def _out_size(n: int, k: int, stride: int, padding: int, dilation: int) -> int:
    return (n + 2 * padding - dilation * (k - 1) - 1) // stride + 1


class IntMatMul(nn.Module):
    """The attention MatMul on the codes of both operands: a (B, H, N, K) @ b (B, H, K, M) -> (B, H, N, M)."""

    def __init__(self, layer: MatMul):
        super().__init__()
        self.qa, self.qb = act_params(layer.quant_a), act_params(layer.quant_b)
        self.inner: int | None = None  # K of the last forward
        if (self.qa is None) != (self.qb is None):
            raise ValueError("IntMatMul: one operand quantized and the other FP")

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        if self.qa is None:
            return a @ b
        self.inner = a.shape[-1]
        qa, qb = self.qa, self.qb
        off = [None if q.offset is None else _head_view(q.offset, q.axis) for q in (qa, qb)]
        sa, sb = _head_view(qa.scale, qa.axis), _head_view(qb.scale, qb.axis)
        return integer_matmul(qa.centered(a), qb.centered(b), sa, sb, *off).to(a.dtype)

    def accumulator_bits(self) -> int | None:
        """Over the inner size of the last forward (head dim for Q K^T, tokens for probs V); None before one."""
        if self.qa is None or self.inner is None:
            return None
        return _bits_needed(self.inner * self.qa.max_abs_centered() * self.qb.max_abs_centered())


INT_LAYERS = {QuantLinear: IntLinear, QuantConv2d: IntConv2d, MatMul: IntMatMul}


@torch.no_grad()
def integer_model(student: nn.Module) -> nn.Module:
    """A copy of the (checked) fake-quantized student with every quantized layer on integer codes, eval mode."""
    check_student(student)
    model = copy.deepcopy(student).eval()
    for name, layer in quant_layers(model):
        model.set_submodule(name, INT_LAYERS[type(layer)](layer))
    return model


def accumulator_bits(int_model: nn.Module) -> dict[str, int]:
    """{layer: signed bits of its worst-case accumulator sum_k |q_a - z_a| |q_b - z_b|} over the integer layers
    of `integer_model(...)` (attention matmuls after one forward, which sets their inner size)."""
    out = {}
    for name, m in int_model.named_modules():
        if isinstance(m, IntLinear | IntConv2d | IntMatMul) and (bits := m.accumulator_bits()) is not None:
            out[name] = bits
    return out
