"""Quantization-aware fine-tuning by distillation: KD and head-wise structural attention distillation."""
