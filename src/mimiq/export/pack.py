"""Packed checkpoint: every quantized weight as integer codes packed to their bit width, with its steps, and the
loader that rebuilds the student bit for bit.

Codes are stored offset to unsigned, u = q - qmin in [0, 2^w), w = ceil(log2(qmax - qmin + 1)) bits each, in one
little-endian bit stream: code i occupies bits i*w .. i*w + w - 1, bit 0 of a byte first (two 4-bit codes per byte,
the first in the low nibble; four 2-bit codes per byte). The paper code's LSQ weight grid [-(2^b - 1), 2^(b-1) - 1]
has 3 * 2^(b-1) - 1 levels and takes b + 1 bits (-15..7 at 4 bit: 23 levels, 5 bits). Weight zero points are 0
(every weight quantizer is symmetric). Everything else (biases, LayerNorm, position embeddings, the relative-position
tables, the activation quantizers' steps and zero points) is kept as the student holds it (float32).

`load_packed` rebuilds the architecture from the stored model config (no weights downloaded), fake-quantizes it
with the stored scheme, and freezes every weight quantizer to its codes (`FrozenWeightQuantizer`): its forward is
the original student's, bit for bit.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from mimiq.export.qparams import FrozenWeightQuantizer, WeightQ, check_student, quant_layers, weight_params
from mimiq.quant import QuantSpec
from mimiq.quant.modules import QuantConv2d, QuantLinear
from mimiq.utils.io import atomic_write, load_checkpoint

FORMAT = "mimiq-packed-v1"


def code_width(qmin: int, qmax: int) -> int:
    """Bits per stored code of the grid [qmin, qmax]."""
    return max(1, math.ceil(math.log2(qmax - qmin + 1)))


def pack_codes(codes: Tensor, qmin: int, width: int) -> Tensor:
    """Integer codes (any shape) -> uint8 (ceil(n * width / 8),), the bit stream described in the module doc."""
    u = (codes.reshape(-1).long() - qmin).numpy()
    if u.size and (u.min() < 0 or u.max() >= 2**width):
        raise ValueError(f"codes outside [{qmin}, {qmin + 2**width - 1}]")
    bits = ((u[:, None] >> np.arange(width)) & 1).astype(np.uint8)  # (n, width), least significant first
    return torch.from_numpy(np.packbits(bits.reshape(-1), bitorder="little"))


def unpack_codes(packed: Tensor, qmin: int, width: int, n: int) -> Tensor:
    """The inverse of `pack_codes`: (n,) int32 codes."""
    bits = np.unpackbits(packed.numpy(), count=n * width, bitorder="little").reshape(n, width).astype(np.int64)
    return torch.from_numpy((bits << np.arange(width)).sum(1) + qmin).to(torch.int32)


def _weight_entry(w: WeightQ) -> dict:
    width = code_width(w.qmin, w.qmax)
    return {
        "packed": pack_codes(w.codes, w.qmin, width),
        "width": width,
        "bits": w.bits,
        "grid": (w.qmin, w.qmax),
        "shape": tuple(w.codes.shape),
        "scale": w.scale.float().clone(),
        "axis": w.axis,
        "op": w.op,
        "kind": w.kind,
    }


def packed_state(student: nn.Module, model_cfg: dict, num_classes: int | None, quant_cfg: dict) -> dict:
    """The packed checkpoint of a checked student: {"format", "model", "num_classes", "quant", "weights":
    {layer: packed codes + steps}, "state": every other state-dict entry}."""
    check_student(student)
    weights, skip = {}, set()
    for name, layer in quant_layers(student):
        if not isinstance(layer, QuantLinear | QuantConv2d):
            continue
        w = weight_params(layer.weight_quant, layer.weight)
        if w is None:
            continue
        weights[name] = _weight_entry(w)
        skip |= {f"{name}.weight"} | {f"{name}.weight_quant.{k}" for k in layer.weight_quant.state_dict()}
    state = {k: v.clone() for k, v in student.state_dict().items() if k not in skip}
    return {
        "format": FORMAT,
        "model": model_cfg,
        "num_classes": num_classes,
        "quant": quant_cfg,
        "weights": weights,
        "state": state,
    }


def save_packed(packed: dict, path: str | Path) -> int:
    """Writes a `packed_state` atomically; returns its size in bytes."""
    data = to_bytes(packed)
    atomic_write(path, lambda f: f.write(data))
    return len(data)


def to_bytes(obj) -> bytes:
    """torch.save of `obj` into memory (the size it takes on disk)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def freeze_weights(model: nn.Module, weights: dict) -> None:
    """Puts a FrozenWeightQuantizer with the unpacked codes on every layer of `weights` and sets the layer's weight
    to the dequantized values (in place)."""
    for name, e in weights.items():
        layer = model.get_submodule(name)
        n = math.prod(e["shape"])
        codes = unpack_codes(e["packed"], e["grid"][0], e["width"], n).view(e["shape"])
        q = FrozenWeightQuantizer(e["bits"], codes, e["scale"], e["axis"], e["grid"], e["op"])
        layer.weight_quant = q
        with torch.no_grad():
            layer.weight.copy_(q(layer.weight))


def load_packed(path: str | Path) -> nn.Module:
    """The student of a packed checkpoint: fake-quantized, weights frozen to their codes, eval mode, CPU."""
    from mimiq.export.run import build_architecture

    how = "Export the run again (python scripts/export.py <run dir>)."
    packed = load_checkpoint(path, "packed checkpoint", how)
    if not isinstance(packed, dict) or packed.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} checkpoint. {how}")
    model = build_architecture(packed["model"], packed["num_classes"], QuantSpec.from_cfg(packed["quant"]))
    freeze_weights(model, packed["weights"])
    full = model.state_dict()
    unknown = sorted(set(packed["state"]) - set(full))
    if unknown:
        raise ValueError(f"{path}: entries the rebuilt model does not have: {unknown[:5]}. {how}")
    full.update(packed["state"])
    model.load_state_dict(full, strict=True)
    check_student(model)
    return model.eval()
