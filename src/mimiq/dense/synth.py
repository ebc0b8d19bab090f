"""Synthetic images for the dense tasks: no COCO / ADE20K image is ever used for calibration or training.

`task.synth.source` picks the network the images come from:

    backbone    (default) pixels optimised through the dense model's own backbone, which has no classifier head:
                MimiQ's inter-head attention similarity term on every attention layer plus its TV prior; the
                CE-to-a-random-label term of the classification generator does not exist here (`generator.w_ce`
                is ignored). Images have `task.synth.image_size` and the detector's / segmentor's normalisation.
                This follows the "task- and model-independent prior" of PSAQ-ViT V2's abstract (arXiv 2209.05687)
                with MimiQ's prior in place of the patch-similarity entropy.
    classifier  the classification pipeline's own set from the `model` ImageNet classifier (e.g. Swin-T with the
                ImageNet weights the backbone was initialised from), re-normalised for the dense model
                (`mimiq.task.dense.synthesize_from_classifier`).

Which of the two the paper used is not known: its dense tables and their set-up were not in any reachable copy
of arXiv 2407.20021 (docs/dense.md, "What is known about the paper's protocol"). `generator=noise` gives
Gaussian-noise images (a baseline) with either source. Backbone-made sets go through the generator core
(`mimiq.synth.mimiq`, `mimiq.synth.baselines`: no classifier) and the set's shard machinery (`mimiq.synth.generate`:
resume, NaN retry), cached in `<cache_dir>/synth_dense/<generator>-<key>/` (key: the dense model, its weights, the
generator config, the image size and the seed).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from mimiq.dense.attention import MHAttention, MMWindowAttention
from mimiq.models.attention import attention_modules
from mimiq.synth.cache import save_grid, synth_seed
from mimiq.synth.core import Context, shard_seed
from mimiq.synth.generate import SyntheticSet, generate_shards, load_shards, set_interhead_ssim, shard_slices
from mimiq.utils.io import atomic_save_json, config_hash
from mimiq.utils.seed import derived_seed

BACKBONE_GENERATORS = ("mimiq", "noise")


@dataclass
class BackboneInfo:
    """What the generator needs to know about a backbone with our attention modules."""

    family: str  # swin | vit
    patch_size: int  # ViT patch side (px); 0 for Swin

    @classmethod
    def of(cls, backbone: nn.Module) -> BackboneInfo:
        mods = [m for _, m in attention_modules(backbone)]
        if mods and all(isinstance(m, MMWindowAttention) for m in mods):
            return cls("swin", 0)
        if mods and all(isinstance(m, MHAttention) for m in mods):
            patch = getattr(backbone, "patch_size", None)
            if not isinstance(patch, int):
                raise ValueError(f"{type(backbone).__name__}: ViT backbone without an integer patch_size")
            return cls("vit", patch)
        raise ValueError(f"{type(backbone).__name__}: no (or mixed) swapped attention; call swap_mm_attention first")

    @property
    def drop_cls(self) -> bool:
        return self.family == "vit"

    def grids(self, backbone: nn.Module, image_hw: tuple[int, int]) -> list[tuple[int, int]]:
        """Key grid of every attention layer for an image of (H, W) px: Swin window, or ViT patch grid."""
        mods = [m for _, m in attention_modules(backbone)]
        if self.family == "swin":
            return [tuple(m.window_size) for m in mods]
        grid = (-(-image_hw[0] // self.patch_size), -(-image_hw[1] // self.patch_size))  # padded to whole patches
        return [grid] * len(mods)


def _backbone_seed(seed: int, shard: int, attempt: int) -> int:
    """A backbone-made shard's seed: `derived_seed(seed, shard)` (as these sets always were), a retry's `shard_seed`."""
    return derived_seed(seed, shard) if attempt == 0 else shard_seed(seed, shard, attempt)


def backbone_context(backbone: nn.Module, cfg: DictConfig, mean: Tensor, std: Tensor) -> Context:
    """The generator context of a backbone: no classifier (no labels, no CE), images of `task.synth.image_size`
    in the dense model's normalisation (mean, std: (1, 3, 1, 1) in 0-255 units, on the backbone's device)."""
    info, hw = BackboneInfo.of(backbone), tuple(int(s) for s in cfg.task.synth.image_size)
    args = (cfg.generator, backbone, mean.device, cfg.precision, info.family, info.grids(backbone, hw), (3, *hw))
    return Context(*args, mean, std, num_classes=None, pixel_max=255, seed_of=_backbone_seed)


def backbone_set_dir(cfg: DictConfig) -> Path:
    """Cache folder of a backbone-made set: keyed by dense model, weights, generator, size, count and seed."""
    t = cfg.task
    ckpt = Path(t.checkpoint) if t.checkpoint else None
    weights = [str(ckpt.resolve()), ckpt.stat().st_size] if ckpt and ckpt.is_file() else "random"
    key = config_hash(
        "dense-synth-v1",
        t.mm_config,
        OmegaConf.to_container(t.mm_overrides, resolve=True),
        weights,
        OmegaConf.to_container(cfg.generator, resolve=True),
        list(t.synth.image_size),
        synth_seed(cfg),
    )
    return Path(cfg.paths.cache_dir) / "synth_dense" / f"{cfg.generator.name}-{key}"


def synthesize_from_backbone(backbone: nn.Module, cfg: DictConfig, mean: Tensor, std: Tensor) -> SyntheticSet:
    """The backbone-made set of `cfg.generator` (mimiq without CE, or noise): loaded, resumed or generated.

    Args:
        backbone: FP, frozen, eval, with our attention modules (`swap_mm_attention`), on its device.
        cfg: the run config (task, generator, paths, seed, precision).
        mean: (1, 3, 1, 1) the dense model's normalisation mean (0-255 units), on the backbone's device.
        std: (1, 3, 1, 1) its std.

    Returns:
        the set: images (N, 3, H, W) on the CPU, labels (N,) zeros (there is no classifier), meta.
    """
    g = cfg.generator
    if g.name not in BACKBONE_GENERATORS:
        raise ValueError(
            f"task.synth.source=backbone supports generator={'|'.join(BACKBONE_GENERATORS)}, not "
            f"{g.name!r} (its losses need a classifier: use task.synth.source=classifier)"
        )
    ctx = backbone_context(backbone, cfg, mean, std)
    folder = backbone_set_dir(cfg)
    slices = shard_slices(g.num_images, g.batch_size)
    meta_path = folder / "meta.json"
    reused, t0 = meta_path.is_file(), time.time()
    if not reused:  # (the shards' atomic writes create the folder)
        generate_shards(ctx, synth_seed(cfg), folder, slices, f"synth {g.name} (backbone)")
    images, labels, shards = load_shards(folder, slices, ctx.shape)
    if reused:
        meta = json.loads(meta_path.read_text())
    else:
        meta = {
            "source": "backbone",
            "generator": g.name,
            "path": str(folder),
            "num_images": len(images),
            "image_size": list(ctx.shape[1:]),
            "seed": synth_seed(cfg),
            **set_interhead_ssim(ctx, images, g.batch_size),
            "time_s": sum(sh["time_s"] for sh in shards),
            "nan_retries": sum(sh["attempt"] for sh in shards),
            "config": OmegaConf.to_container(g, resolve=True),
        }
        save_grid(images, (mean / 255).cpu(), (std / 255).cpu(), folder / "grid.png")
        atomic_save_json(meta, meta_path)
    return SyntheticSet(images, labels, {**meta, "reused": reused, "time_generate_s": time.time() - t0})
