"""FP model -> fake-quantized student, and the manifest that says exactly what got quantized.

`quantize_model` (in place; as the paper code's `quant_utils`, docs/method.md, Stage 2):
  * swaps timm attention for ours (`swap_attention`) and puts activation quantizers on both inputs of both
    attention matmuls: Q, K^T (`matmul_qk`) and softmax probabilities, V (`matmul_av`);
  * swaps every nn.Linear (qkv, proj, fc1, fc2, head, Swin patch merging) and nn.Conv2d (patch embedding) for
    QuantLinear / QuantConv2d with a weight and an input quantizer;
  * leaves LayerNorm, softmax, GELU, residual additions, biases and position embeddings FP.
First / last layer = the first / last Linear-or-Conv2d in module order (patch embedding / classifier head):
  * `paper` (the paper code's `set_first_last_layer(fl8bit=False)`): patch-embedding input FP, its weight and
    the head (weight and input) at the target bits;
  * `8bit` (most QAT papers): patch embedding and head at W8A8 (FP stays FP).

`build_student` is the one student builder (the pipeline's, for every task, and PSAQ-ViT V2's generator): a deep
copy, quantized over a part of it, calibrated, with its manifest.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from mimiq.models.attention import MatMul, attention_modules, swap_attention
from mimiq.quant.modules import QuantConv2d, QuantLinear
from mimiq.quant.quantizers import (
    ACT_QUANTIZERS,
    PAPER_SIGNED_THRESHOLD,
    WEIGHT_QUANTIZERS,
    LSQWeightQuantizer,
    Quantizer,
)
from mimiq.quant.spec import FP, QuantSpec


def weight_quantizer(spec: QuantSpec, bits: int, weight: Tensor) -> nn.Module:
    """The weight quantizer for `weight` (out, ...) at `bits`, initialised from it; nn.Identity if FP."""
    if bits == FP:
        return nn.Identity()
    channels, axis = (weight.shape[0], 0) if spec.w_granularity == "channel" else (1, None)
    cls = WEIGHT_QUANTIZERS[spec.weight_quantizer]
    if cls is LSQWeightQuantizer:
        q = cls(bits, channels, axis, spec.quirk_lsq_weight_qmin, spec.quirk_lsq_scalar_step_init)
        q.to(weight.device).initialize(weight)
        return q
    return cls(bits, channels, axis).to(weight.device)


def act_quantizer(spec: QuantSpec, bits: int, device: torch.device, heads: int = 1, g_factor: float = 1.0) -> nn.Module:
    """An uninitialised activation quantizer at `bits` (nn.Identity if FP); one step per head along axis 1 of
    (B, H, ...) operands if `heads` > 1."""
    if bits == FP:
        return nn.Identity()
    threshold = PAPER_SIGNED_THRESHOLD if spec.quirk_signed_min_1e5 else 0.0
    kwargs = {"signed_threshold": threshold, "g_factor": g_factor}
    if spec.act_quantizer == "ema_minmax":
        kwargs["beta"] = spec.ema_beta
    if spec.act_quantizer == "lsq":
        kwargs["zero_point_on_grid"] = not spec.quirk_zero_point_off_grid
        kwargs["zero_point_from_min"] = spec.quirk_zero_point_min_init
    return ACT_QUANTIZERS[spec.act_quantizer](bits, heads, 1 if heads > 1 else None, **kwargs).to(device)


def quantize_model(model: nn.Module, spec: QuantSpec) -> Manifest:
    """Turns `model` (a timm ViT/DeiT/Swin, FP) into the fake-quantized student, in place.

    Activation quantizers start uninitialised: run `calibrate(model, batch)` before training.
    Returns:
        the manifest (signedness of activations reads `auto(...)` until calibration; rebuild it with
        `build_manifest(model)` afterwards).
    """
    if any(isinstance(m, QuantLinear | QuantConv2d) for m in model.modules()):
        raise ValueError("quantize_model: the model is already quantized")
    swap_attention(model)
    attention = attention_modules(model)
    if not attention:
        raise ValueError(f"quantize_model: no timm Attention / WindowAttention in {type(model).__name__}")
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    first, last = layers[0][0], layers[-1][0]
    for name, m in layers:
        w_bits, a_bits = spec.w_bits, spec.a_bits
        if spec.first_last == "8bit" and name in (first, last):
            w_bits, a_bits = (8 if w_bits != FP else FP), (8 if a_bits != FP else FP)
        if spec.first_last == "paper" and name == first:
            a_bits = FP  # the image input stays FP
        g = 1.0 if spec.quirk_g_scale_top_level and "." in name else spec.lsq_g_scale
        cls = QuantLinear if isinstance(m, nn.Linear) else QuantConv2d
        wq = weight_quantizer(spec, w_bits, m.weight)
        new = cls(m, wq, act_quantizer(spec, a_bits, m.weight.device, g_factor=g))
        model.set_submodule(name, new.train(m.training))  # new quantizers follow the module's mode
    for _, att in attention:
        heads = att.num_heads if spec.a_granularity == "head" else 1
        g = 1.0 if spec.quirk_g_scale_top_level else spec.lsq_g_scale  # matmuls are never top-level children
        device = att.qkv.weight.device
        for mm in (att.matmul_qk, att.matmul_av):
            mm.quant_a, mm.quant_b = (
                act_quantizer(spec, spec.a_bits, device, heads, g).train(mm.training) for _ in range(2)
            )
    return build_manifest(model)


def quantizers(model: nn.Module) -> list[Quantizer]:
    return [m for m in model.modules() if isinstance(m, Quantizer)]


def set_quantizers_enabled(model: nn.Module, enabled: bool) -> int:
    """Switches every quantizer of `model` on (True) or to identity (False); returns how many."""
    qs = quantizers(model)
    for q in qs:
        q.enabled = enabled
    return len(qs)


@torch.no_grad()
def calibrate(model: nn.Module, batch: Tensor) -> int:
    """One no-grad eval-mode forward of `batch` (B, 3, H, W), which initialises every enabled activation
    quantizer from the tensors it sees (layer by layer, each after the quantized layers before it).
    Returns the number of initialised quantizers."""
    was_training = model.training
    model.eval()
    try:
        model(batch)
    finally:
        model.train(was_training)
    return sum(q._ready for q in quantizers(model))


@dataclass(frozen=True)
class ManifestRow:
    module: str  # qualified name in the model
    role: str  # weight | input | q | k | probs | v
    bits: int  # 32 = FP (the slot is not quantized)
    granularity: str  # tensor | channel(C) | head(H)
    signed: str  # signed | unsigned | auto(min<t) (before calibration)
    quantizer: str  # minmax | lsq | lsq_plus | ema_minmax | fp


@dataclass(frozen=True)
class Manifest:
    """One row per quantizer slot (2 per Linear / Conv2d, 4 per attention) of a quantized model."""

    rows: tuple[ManifestRow, ...]

    def __len__(self) -> int:
        return len(self.rows)

    def counts(self) -> dict[str, int]:
        """Quantized (non-FP) tensors per role."""
        return dict(Counter(r.role for r in self.rows if r.bits != FP))

    def summary(self) -> str:
        counts = ", ".join(f"{role} {n}" for role, n in self.counts().items())
        fp = [f"{r.module}.{r.role}" for r in self.rows if r.bits == FP]
        return f"{len(self) - len(fp)} quantized tensors ({counts}); {len(fp)} FP: {', '.join(fp) or '-'}"

    def table(self) -> str:
        head = ("module", "role", "bits", "granularity", "signed", "quantizer")
        cells = [head] + [
            (r.module, r.role, "fp" if r.bits == FP else str(r.bits), r.granularity, r.signed, r.quantizer)
            for r in self.rows
        ]
        widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
        lines = ("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells)
        return "\n".join(lines)

    def to_records(self) -> list[dict]:
        return [asdict(r) for r in self.rows]

    def __str__(self) -> str:
        return f"{self.table()}\n{self.summary()}"


def build_manifest(model: nn.Module) -> Manifest:
    """The manifest of a quantized model, read from its modules (rebuild after `calibrate` for signedness)."""
    rows = []
    for name, m in model.named_modules():
        if not isinstance(m, QuantLinear | QuantConv2d | MatMul):
            continue
        for role, attr in m.slots.items():
            q = getattr(m, attr)
            if isinstance(q, Quantizer):
                rows.append(ManifestRow(name, role, q.bits, q.granularity, q.signedness, q.kind))
            else:
                rows.append(ManifestRow(name, role, FP, "-", "-", "fp"))
    return Manifest(tuple(rows))


def build_student(
    teacher: nn.Module,
    spec: QuantSpec,
    calib_images: Tensor,
    out_dir: Path | None = None,
    part: Callable[[nn.Module], nn.Module] = lambda m: m,
    calibrate_fn: Callable[[nn.Module, Tensor], object] = calibrate,
) -> tuple[nn.Module, Manifest]:
    """(student, manifest): a deep copy of the FP `teacher`, fake-quantized over `part(student)` (the whole model
    by default; a dense model's backbone), its activation quantizers initialised by `calibrate_fn(part, calib)`.
    Only the quantized part trains. Writes `out_dir/manifest.txt` if given.

    Args:
        calib_images: (B, 3, H, W) normalised synthetic images; their forward initialises the activation
            quantizers (the paper code initialises LSQ from the first training batch).
        calibrate_fn: `calibrate` (a forward of the part), or a task's own (a dense model's full inference).
    """
    student = copy.deepcopy(teacher)
    target = part(student)
    for p in student.parameters():
        p.requires_grad_(False)
    for p in target.parameters():
        p.requires_grad_(True)
    quantize_model(target, spec)
    calibrate_fn(target, calib_images)
    manifest = build_manifest(target)
    if out_dir is not None:
        (Path(out_dir) / "manifest.txt").write_text(str(manifest) + "\n")
    return student, manifest
