"""Synthetic images for the dense tasks: no COCO / ADE20K image is ever used for calibration or training.

`task.synth.source` picks the network the images come from:

    backbone    (default) pixels optimised through the dense model's own backbone, which has no classifier head:
                MimiQ's inter-head attention similarity term on every attention layer plus its TV prior; the
                CE-to-a-random-label term of the classification generator does not exist here (`generator.w_ce`
                is ignored). Images have `task.synth.image_size` and the detector's / segmentor's normalisation.
                This is PSAQ-ViT V2's "task- and model-independent prior" reading (DENSE_AND_PSAQ_V2.md §2.3) with
                MimiQ's prior in place of the patch-similarity entropy.
    classifier  the classification pipeline's own set (`mimiq.synth.generate.synthesize_or_load`) from the
                `model` ImageNet classifier (e.g. Swin-T with the ImageNet weights the backbone was initialised
                from), re-normalised for the dense model.

Which of the two the paper used is not known: its dense tables and their set-up were not in any reachable copy
(MIMIQ_SPEC.md §5.2, DENSE_AND_PSAQ_V2.md §3). `generator=noise` gives Gaussian-noise images (a baseline) with
either source. Backbone-made sets are cached in `<cache_dir>/synth_dense/<generator>-<key>/` (one shard per batch,
resumable), keyed by the dense model, its weights, the generator config, the image size and the seed.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from tqdm import tqdm

from mimiq.dense.attention import MHAttention, MMWindowAttention
from mimiq.models.attention import attention_modules
from mimiq.synth.augment import annealed_noise, color_jitter, random_flip, roll_jitter, scale_px
from mimiq.synth.cache import load_shard, save_grid, shard_path, synth_seed
from mimiq.synth.losses import interhead_loss, mean_interhead_similarity, tv_prior_mimiq
from mimiq.utils.hooks import capture
from mimiq.utils.io import atomic_save_json, atomic_torch_save, config_hash
from mimiq.utils.seed import autocast

BACKBONE_GENERATORS = ("mimiq", "noise")


@dataclass
class DenseSynthSet:
    """images: (N, 3, H, W) float32, RGB, normalised as the dense model's data preprocessor does; meta: source,
    generator, path, reused, time_s, interhead_ssim (backbone source), ..."""

    images: Tensor
    meta: dict

    def __len__(self) -> int:
        return len(self.images)


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


def pixel_bounds(mean: Tensor, std: Tensor) -> tuple[Tensor, Tensor]:
    """Normalised values of pixel 0 and 255 per channel; mean, std: (1, 3, 1, 1) in 0-255 units."""
    return (0 - mean) / std, (255 - mean) / std


def _backbone_batch(
    backbone: nn.Module,
    info: BackboneInfo,
    gen_cfg: DictConfig,
    n: int,
    hw: tuple[int, int],
    mean: Tensor,
    std: Tensor,
    gen: torch.Generator,
    precision: str,
    bar: tqdm,
) -> tuple[Tensor, dict]:
    """One batch (n, 3, H, W) of MimiQ images made through `backbone` (no CE): L = w_ih·L_IH + w_tv·TV(x),
    AdamW + cosine, the generator's roll jitter / flip / annealed noise / colour jitter, pixels kept valid."""
    g, device = gen_cfg, mean.device
    lo, hi = pixel_bounds(mean, std)
    x = torch.randn((n, 3, *hw), generator=gen).to(device).requires_grad_()
    if g.name == "noise":
        with torch.no_grad():
            x.clamp_(lo, hi)
        bar.update()
        return x.detach(), {}
    opt = torch.optim.AdamW([x], lr=g.lr, betas=tuple(g.betas), eps=g.eps, weight_decay=g.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=g.iterations, eta_min=g.lr_min)
    limits = [scale_px(j, hw[1], g.ref_size) for j in g.jitter]
    grids = info.grids(backbone, hw)
    curves: dict[str, list[float]] = {"loss": [], "ih": [], "tv": []}
    with capture(backbone, "matmul_qk") as qk:
        for it in range(g.iterations):
            x_aug = roll_jitter(x, limits[0] if it < g.iterations / 2 else limits[1], gen)
            x_aug = random_flip(x_aug, g.flip, gen)
            x_aug = annealed_noise(x_aug, it, g.iterations, g.noise_std, gen)
            x_aug = color_jitter(x_aug, g.jitter_mean, g.jitter_log_std, gen)
            qk.clear()
            with autocast(precision, device):
                backbone(x_aug)
            ih = interhead_loss(qk, grids, info.drop_cls)  # mean (1 - SSIM^2) over layers, heads, queries
            tv = tv_prior_mimiq(x)
            loss = g.w_interhead * ih + g.w_tv * tv
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                x.clamp_(lo, hi)
            for k, v in (("loss", loss), ("ih", ih), ("tv", tv)):
                curves[k].append(v.item())
            bar.update()
    return x.detach(), {k: torch.tensor(v) for k, v in curves.items()}


@torch.no_grad()
def backbone_interhead_ssim(backbone: nn.Module, images: Tensor, batch_size: int, precision: str) -> float:
    """Mean inter-head attention SSIM (pairs i != j, queries, layers) of `backbone` over images (N, 3, H, W)."""
    info = BackboneInfo.of(backbone)
    device = next(backbone.parameters()).device
    total = 0.0
    with capture(backbone, "matmul_qk") as qk:
        for chunk in images.split(batch_size):
            qk.clear()
            with autocast(precision, device):
                backbone(chunk.to(device))
            grids = info.grids(backbone, tuple(chunk.shape[-2:]))
            total += mean_interhead_similarity(qk, grids, info.drop_cls) * len(chunk)
    return total / len(images)


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


def synthesize_from_backbone(backbone: nn.Module, cfg: DictConfig, mean: Tensor, std: Tensor) -> DenseSynthSet:
    """The backbone-made set of `cfg.generator` (mimiq without CE, or noise): loaded, resumed or generated.

    Args:
        backbone: FP, frozen, eval, with our attention modules (`swap_mm_attention`), on its device.
        cfg: the run config (task, generator, paths, seed, precision).
        mean: (1, 3, 1, 1) the dense model's normalisation mean (0-255 units), on the backbone's device.
        std: (1, 3, 1, 1) its std.
    """
    g = cfg.generator
    if g.name not in BACKBONE_GENERATORS:
        raise ValueError(
            f"task.synth.source=backbone supports generator={'|'.join(BACKBONE_GENERATORS)}, not "
            f"{g.name!r} (its losses need a classifier: use task.synth.source=classifier)"
        )
    info = BackboneInfo.of(backbone)
    hw = tuple(int(s) for s in cfg.task.synth.image_size)
    folder = backbone_set_dir(cfg)
    slices = [slice(i, min(i + g.batch_size, g.num_images)) for i in range(0, g.num_images, g.batch_size)]
    meta_path = folder / "meta.json"
    reused = meta_path.is_file()
    t0 = time.time()
    if not reused:
        folder.mkdir(parents=True, exist_ok=True)
        todo = [i for i in range(len(slices)) if not shard_path(folder, i).is_file()]
        steps = g.iterations if g.name == "mimiq" else 1
        with tqdm(total=len(todo) * steps, desc=f"synth {g.name} (backbone)", unit="step", mininterval=2) as bar:
            for i in todo:
                s, ts = slices[i], time.time()
                gen = torch.Generator().manual_seed(int(synth_seed(cfg)) * 1_000_003 + i)
                with torch.enable_grad():
                    x, curves = _backbone_batch(
                        backbone, info, g, s.stop - s.start, hw, mean, std, gen, cfg.precision, bar
                    )
                shard = {
                    "images": x.float().cpu(),
                    "labels": torch.zeros(len(x), dtype=torch.long),
                    "time_s": time.time() - ts,
                    "curves": curves,
                    "attempt": 0,
                }
                atomic_torch_save(shard, shard_path(folder, i))
    shards = [load_shard(shard_path(folder, i), (s.stop - s.start, 3, *hw)) for i, s in enumerate(slices)]
    images = torch.cat([sh["images"] for sh in shards])
    if reused:
        meta = json.loads(meta_path.read_text())
    else:
        ssim = backbone_interhead_ssim(backbone, images, g.batch_size, cfg.precision)
        meta = {
            "source": "backbone",
            "generator": g.name,
            "path": str(folder),
            "num_images": len(images),
            "image_size": list(hw),
            "seed": synth_seed(cfg),
            "interhead_ssim": ssim,
            "time_s": sum(sh["time_s"] for sh in shards),
            "config": OmegaConf.to_container(g, resolve=True),
        }
        save_grid(images, (mean / 255).cpu(), (std / 255).cpu(), folder / "grid.png")
        atomic_save_json(meta, meta_path)
    return DenseSynthSet(images, {**meta, "reused": reused, "time_generate_s": time.time() - t0})


def synthesize_from_classifier(
    cfg: DictConfig, device: torch.device, mean: Tensor, std: Tensor, out_dir: Path | None = None
) -> DenseSynthSet:
    """The classification set of `cfg.generator` from the `cfg.model` ImageNet classifier (cached as in
    Tab. 2), converted from the classifier's normalisation (0-1 units) to the dense model's (0-255 units)."""
    from mimiq.models.attention import swap_attention
    from mimiq.models.registry import model_data_config
    from mimiq.models.teacher import load_or_train_teacher
    from mimiq.synth.generate import synthesize_or_load

    classifier, _ = load_or_train_teacher(cfg, device)
    swap_attention(classifier)
    data_config = model_data_config(classifier)
    t0 = time.time()
    synth = synthesize_or_load(classifier, cfg, device, out_dir)
    c_mean, c_std = (torch.tensor(data_config[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    pixels = (synth.images * c_std + c_mean) * 255  # (N, 3, H, W) RGB in 0-255
    images = (pixels - mean.cpu()) / std.cpu()
    meta = {k: v for k, v in synth.meta.items() if k not in ("loss_curves", "shard_time_s")}
    meta.update(source="classifier", classifier=cfg.model.name, time_generate_s=time.time() - t0)
    return DenseSynthSet(images, meta)
