"""The quantized student: a deep copy of the FP teacher, fake-quantized, quantizers initialised on a batch."""

from __future__ import annotations

import copy
from pathlib import Path

from torch import Tensor, nn

from mimiq.quant import Manifest, QuantSpec, build_manifest, calibrate, quantize_model


def build_student(
    teacher: nn.Module, spec: QuantSpec, calib_images: Tensor, out_dir: Path | None = None
) -> tuple[nn.Module, Manifest]:
    """Returns (student, manifest); writes `out_dir/manifest.txt` if given.

    Args:
        calib_images: (B, 3, H, W) normalised synthetic images; their forward initialises the activation
            quantizers (the paper code initialises LSQ from the first training batch).
    """
    student = copy.deepcopy(teacher)
    for p in student.parameters():
        p.requires_grad_(True)
    quantize_model(student, spec)
    calibrate(student, calib_images)
    manifest = build_manifest(student)
    if out_dir is not None:
        (out_dir / "manifest.txt").write_text(str(manifest) + "\n")
    return student, manifest
