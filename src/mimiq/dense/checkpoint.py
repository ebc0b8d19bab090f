"""Strict loading of dense-model checkpoints, with the key converter for the official Swin repositories.

The numbers the literature compares against (RepQ-ViT, PSAQ-ViT V2, QwT) use the checkpoints of
SwinTransformer/Swin-Transformer-Object-Detection (mmdet 2.x) and Swin-Transformer-Semantic-Segmentation
(mmseg 0.x). Their necks and heads have the mmdet 3.x / mmseg 1.x keys already, but their backbone is the original
Swin implementation, whose keys and patch-merging channel order differ from the mm `SwinTransformer`:

    original (backbone.*)                        mm 3.x / 1.x (backbone.*)
    layers.i.blocks.j.attn.*                     stages.i.blocks.j.attn.w_msa.*
    layers.i.blocks.j.mlp.fc1.*                  stages.i.blocks.j.ffn.layers.0.0.*
    layers.i.blocks.j.mlp.fc2.*                  stages.i.blocks.j.ffn.layers.1.*
    layers.i.{blocks.j.norm*, downsample.*}      stages.i.{blocks.j.norm*, downsample.*}
    patch_embed.proj.*                           patch_embed.projection.*

Patch merging: the original concatenates the 2x2 neighbours as [x(0,0), x(1,0), x(0,1), x(1,1)] blocks of C
channels; mm's `nn.Unfold` interleaves them per channel, c * 4 + k with k in row-major (0,0), (0,1), (1,0), (1,1)
order. `downsample.reduction.weight` (2C, 4C) and `downsample.norm.{weight,bias}` (4C,) are permuted accordingly.
Checkpoints already in mm layout (mmdet 3.x / mmseg 1.x model zoo) load unchanged.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from torch import Tensor, nn

MERGE_ORDER = (0, 2, 1, 3)  # unfold position k (row-major 2x2) -> block of the original concatenation


def is_official_swin(state: dict[str, Tensor]) -> bool:
    """True if the backbone keys are the original Swin layout (`backbone.layers.*`)."""
    return any(k.startswith("backbone.layers.") for k in state)


def _merge_permute(t: Tensor) -> Tensor:
    """(..., 4C) in the original [x0 | x1 | x2 | x3] block order -> (..., 4C) in unfold order c * 4 + k."""
    c = t.shape[-1] // 4
    blocks = t.reshape(*t.shape[:-1], 4, c)[..., list(MERGE_ORDER), :]  # (..., 4, C), unfold positions
    return blocks.transpose(-1, -2).reshape(t.shape)  # (..., C, 4) -> (..., 4C)


def convert_official_swin(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Official Swin detection / segmentation checkpoint -> mm `SwinTransformer` keys (see the module doc).

    Args:
        state: the checkpoint's state dict, keys `backbone.*`, `neck.*`, `*head*`.

    Returns:
        a new state dict; non-backbone entries are passed through, the classification head (if any) dropped.
    """
    out = {}
    for key, value in state.items():
        if not key.startswith("backbone."):
            out[key] = value
            continue
        k = key[len("backbone.") :]
        if k.startswith("head"):
            continue
        if k.startswith("layers."):
            k = "stages." + k[len("layers.") :]
            k = re.sub(r"\.attn\.", ".attn.w_msa.", k)
            k = k.replace(".mlp.fc1.", ".ffn.layers.0.0.").replace(".mlp.fc2.", ".ffn.layers.1.")
            if ".downsample.reduction.weight" in k or ".downsample.norm." in k:
                value = _merge_permute(value)
        elif k.startswith("patch_embed.proj."):
            k = "patch_embed.projection." + k[len("patch_embed.proj.") :]
        out["backbone." + k] = value
    return out


def _state_dict(obj) -> dict[str, Tensor]:
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        return obj["state_dict"]
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        return obj["model"]
    return obj


def load_dense_checkpoint(model: nn.Module, path: str | Path) -> str:
    """Loads `path` into the FP dense model, strictly (every key, every shape); converts official Swin keys.

    OpenMMLab checkpoints carry numpy objects in their `meta`, which torch's weights-only unpickler refuses; they
    are trusted files named by the user, so they are unpickled in full (torch.load(weights_only=False)).

    Returns:
        "mm" (loaded as is) or "official-swin" (converted).
    Raises:
        FileNotFoundError, or RuntimeError naming the file and the missing / unexpected keys.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"task.checkpoint: file {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=os.environ.get("MIMIQ_WEIGHTS_ONLY") == "1")
    except Exception as e:
        raise RuntimeError(f"task.checkpoint {path} is unreadable: {type(e).__name__}: {e}") from e
    state = _state_dict(obj)
    layout = "mm"
    if is_official_swin(state):
        state, layout = convert_official_swin(state), "official-swin"
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise RuntimeError(f"task.checkpoint {path} ({layout} layout) does not fit the model: {e}") from e
    return layout
