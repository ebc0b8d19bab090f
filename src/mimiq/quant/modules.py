"""Layers with fake-quantized weight and input. They reuse the FP layer's parameters by reference (same
state_dict keys as the FP layer, plus the quantizers'); a quantizer slot is nn.Identity while it stays FP."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class QuantLinear(nn.Module):
    """nn.Linear on quantized input and weight: x (..., in_features) -> (..., out_features)."""

    slots = {"weight": "weight_quant", "input": "input_quant"}  # manifest role -> quantizer attribute

    def __init__(self, linear: nn.Linear, weight_quant: nn.Module, input_quant: nn.Module):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight
        self.register_parameter("bias", linear.bias)
        self.weight_quant, self.input_quant = weight_quant, input_quant

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(self.input_quant(x), self.weight_quant(self.weight), self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


class QuantConv2d(nn.Module):
    """nn.Conv2d (zero padding) on quantized input and weight: x (B, C_in, H, W) -> (B, C_out, H', W')."""

    slots = {"weight": "weight_quant", "input": "input_quant"}

    def __init__(self, conv: nn.Conv2d, weight_quant: nn.Module, input_quant: nn.Module):
        super().__init__()
        if conv.padding_mode != "zeros":
            raise ValueError(f"QuantConv2d: padding_mode={conv.padding_mode!r} unsupported (only 'zeros')")
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size = conv.kernel_size
        self.conv_kwargs = {k: getattr(conv, k) for k in ("stride", "padding", "dilation", "groups")}
        self.weight = conv.weight
        self.register_parameter("bias", conv.bias)
        self.weight_quant, self.input_quant = weight_quant, input_quant

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(self.input_quant(x), self.weight_quant(self.weight), self.bias, **self.conv_kwargs)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, {self.conv_kwargs}"
