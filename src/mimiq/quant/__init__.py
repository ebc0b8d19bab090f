"""Quantization core: fake-quant math, quantizer modules, quantized layers, model conversion, manifest."""

from mimiq.quant.convert import (
    Manifest,
    ManifestRow,
    build_manifest,
    calibrate,
    quantize_model,
    quantizers,
    set_quantizers_enabled,
)
from mimiq.quant.quantizers import (
    EMAMinMaxActQuantizer,
    LSQActQuantizer,
    LSQPlusActQuantizer,
    LSQWeightQuantizer,
    MinMaxWeightQuantizer,
    Quantizer,
    QuantizerNotInitializedError,
)
from mimiq.quant.spec import FP, QuantSpec

__all__ = [
    "FP",
    "EMAMinMaxActQuantizer",
    "LSQActQuantizer",
    "LSQPlusActQuantizer",
    "LSQWeightQuantizer",
    "Manifest",
    "ManifestRow",
    "MinMaxWeightQuantizer",
    "QuantSpec",
    "Quantizer",
    "QuantizerNotInitializedError",
    "build_manifest",
    "calibrate",
    "quantize_model",
    "quantizers",
    "set_quantizers_enabled",
]
