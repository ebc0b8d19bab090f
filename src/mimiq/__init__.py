"""MimiQ: data-free quantization of vision transformers (Choi et al., AAAI 2025), reproduced with tests."""

__version__ = "0.1.0"

NATIVE_BF16_PROBES = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's (private, torch >= 2.1)


def native_precision(device: str = "auto") -> str:
    """The `${native_precision:${device}}` resolver: "bf16" where `device` (auto | cpu | cuda[:N]) computes bf16
    matmuls natively (CUDA with bf16 support; a CPU with AVX512-BF16 or AMX tiles), else "fp32" (emulated bf16 runs
    many times slower than fp32). A device that is not there gets fp32 (the run's device check then says why)."""
    import torch  # only when a config asks

    kind = torch.device(device).type if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cuda":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    native = kind == "cpu" and any(getattr(torch.cpu, p, lambda: False)() for p in NATIVE_BF16_PROBES)
    return "bf16" if native else "fp32"


def _register_resolvers() -> None:
    """OmegaConf resolvers the configs use, registered on import (before any config is resolved)."""
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("native_precision", native_precision, replace=True)


_register_resolvers()
