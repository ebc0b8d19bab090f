"""Build timm models from the `model` config: hub weights, a local checkpoint, or random init.

The `model` node (conf/model/*.yaml):
    name: our name for the run (metrics.json `model`); timm_name: the timm registry entry it is built from;
    arch: keyword overrides passed to timm (img_size, patch_size, embed_dim, depth, num_heads, ...);
    pretrained: timm hub weights; checkpoint: a local weight file (strict load, wins over pretrained);
    train_teacher: the project trains and caches the teacher on `data` (the mini task).
"""

from __future__ import annotations

import difflib
import importlib
from pathlib import Path

import timm
import torch.nn as nn
from omegaconf import OmegaConf

from mimiq.utils.io import load_checkpoint


def check_model_cfg(model_cfg) -> None:
    """Fails fast on an unknown timm name or an unreadable checkpoint, before any compute."""
    name = model_cfg.timm_name
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ValueError(f"model.timm_name: unknown timm model {name!r}.{hint}")
    ckpt = model_cfg.get("checkpoint")
    if ckpt:
        p = Path(ckpt)
        if not p.is_file():
            raise FileNotFoundError(f"model.checkpoint: file {p} does not exist")
        try:
            with open(p, "rb") as f:
                f.read(1)
        except OSError as e:
            raise PermissionError(f"model.checkpoint: cannot read {p}: {e}") from e


def _arch_kwargs(model_cfg) -> dict:
    arch = model_cfg.get("arch") or {}
    kw = OmegaConf.to_container(arch, resolve=True) if OmegaConf.is_config(arch) else dict(arch)
    return {k: tuple(v) if isinstance(v, list) else v for k, v in kw.items()}


def _state_dict_from(obj) -> dict:
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "state_dict_ema"):
            if key in obj and isinstance(obj[key], dict):
                return obj[key]
    return obj


def load_strict(model: nn.Module, path: str | Path, timm_name: str) -> None:
    """Strict load of a local weight file; tries timm's own converter for original-format checkpoints."""
    how = "Point model.checkpoint at a timm/original state dict for this architecture."
    state = _state_dict_from(load_checkpoint(path, "model.checkpoint", how))
    try:
        model.load_state_dict(state, strict=True)
        return
    except RuntimeError as first:
        module = importlib.import_module(type(model).__module__)
        filt = getattr(module, "checkpoint_filter_fn", None)
        if filt is None:
            raise RuntimeError(f"model.checkpoint {path} does not fit {timm_name}: {first}") from first
        try:
            model.load_state_dict(filt(state, model), strict=True)
        except Exception as second:
            raise RuntimeError(f"model.checkpoint {path} does not fit {timm_name}: {first}") from second


def create_model(model_cfg, num_classes: int | None = None) -> nn.Module:
    """A timm model in eval mode, with weights from the checkpoint, the hub, or random init."""
    check_model_cfg(model_cfg)
    kwargs = _arch_kwargs(model_cfg)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    ckpt = model_cfg.get("checkpoint")
    pretrained = bool(model_cfg.pretrained) and not ckpt
    try:
        model = timm.create_model(model_cfg.timm_name, pretrained=pretrained, **kwargs)
    except OSError as e:  # huggingface_hub's LocalEntryNotFoundError, a failed download (URLError), ...
        if not pretrained:
            raise
        raise RuntimeError(hub_weights_message(model_cfg, e)) from e
    if ckpt:
        load_strict(model, ckpt, model_cfg.timm_name)
    return model.eval()


def hub_weights_message(model_cfg, error: Exception) -> str:
    """What to do when timm cannot get the pretrained weights of `model_cfg` (offline, no cache, no network)."""
    import os

    from huggingface_hub import constants

    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    where = f"the Hugging Face cache {constants.HF_HUB_CACHE} (HF_HOME / HF_HUB_CACHE)"
    fetch = (
        "HF_HUB_OFFLINE=1 forbids the download: run once with HF_HUB_OFFLINE=0 and network access to fetch them"
        if offline
        else "the download failed: check the network access, or fetch them on a machine that has it"
    )
    reason = (str(error).strip().splitlines() or [""])[0][:200]
    return (
        f"model={model_cfg.name}: no pretrained weights for timm model {model_cfg.timm_name!r} in {where}; {fetch}, "
        f"or point model.checkpoint=<file> at a local weight file ({type(error).__name__}: {reason})"
    )


def model_data_config(model: nn.Module) -> dict:
    """timm's data config (mean, std, interpolation, crop_pct) with the model's real input size."""
    from timm.data import resolve_data_config

    cfg = resolve_data_config(model=model)
    img_size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if img_size is not None:
        cfg["input_size"] = (3, *img_size)
    return cfg
