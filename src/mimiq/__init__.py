"""MimiQ: data-free quantization of vision transformers (Choi et al., AAAI 2025), reproduced with tests."""

__version__ = "0.1.0"
