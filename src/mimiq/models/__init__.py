"""Models: timm backbones by registry name, the mini teachers, and (quant core) attention modules we own."""

from mimiq.models.registry import check_model_cfg, create_model, model_data_config

__all__ = ["check_model_cfg", "create_model", "model_data_config"]
