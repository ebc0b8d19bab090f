"""Print the quantization manifest of a Hydra-composed model: one row per quantizer slot, then a summary.

Random init, never a download (model.pretrained=false is forced). By default the model is built on the meta
device (no memory, instant; activation signedness reads `auto(...)`); --calibrate builds it for real and runs
one random batch through it, so that the signedness column shows what the rule decided.

    python scripts/print_manifest.py model=deit_small_patch16_224
    python scripts/print_manifest.py model=swin_tiny_patch4_window7_224 quant=qat8bit bits=w4a8
    python scripts/print_manifest.py --calibrate model=vit_mini
"""

from __future__ import annotations

import sys

import torch

from mimiq.config import compose
from mimiq.models import create_model, model_data_config
from mimiq.quant import QuantSpec, build_manifest, calibrate, quantize_model


def main(argv: list[str]) -> None:
    real = "--calibrate" in argv
    overrides = [a for a in argv if a != "--calibrate"]
    cfg = compose([*overrides, "model.pretrained=false", "model.checkpoint=null"])
    spec = QuantSpec.from_cfg(cfg.quant)  # a bad quant config fails here, before any compute
    with torch.device("cpu" if real else "meta"):
        model = create_model(cfg.model, num_classes=cfg.data.num_classes if cfg.model.train_teacher else None)
    manifest = quantize_model(model, spec)
    if real:
        calibrate(model, torch.randn(2, *model_data_config(model)["input_size"]))
        manifest = build_manifest(model)
    print(
        f"# {cfg.model.name} ({cfg.model.timm_name}, random init): quant={spec.name} {spec.tag}, "
        f"{spec.weight_quantizer} weights, {spec.act_quantizer} acts, first_last={spec.first_last}"
    )
    print(manifest)


if __name__ == "__main__":
    main(sys.argv[1:])
