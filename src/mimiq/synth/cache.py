"""On-disk layout of a synthetic set: `<cache_dir>/synth/<generator>-<key>/`.

    shard_00000.pt   one per generated batch: images (b, 3, H, W) float32 normalised, labels (b,) int64,
                     time_s, curves {term: (iterations,) float32}, attempt (NaN retries); written atomically
    meta.json        written last, once every shard exists: config, timings, loss curves, inter-head SSIM
    grid.png         de-normalised grid of the first images

The key hashes what determines the images (teacher, generator config, count, seed) and nothing else, so a
`bits=` sweep reuses one set. Files are never deleted here: a bad shard stops the run with the fix to apply.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from torch import Tensor
from torchvision.utils import save_image

from mimiq.models.teacher import teacher_identity
from mimiq.utils.io import atomic_write, config_hash, load_checkpoint

SHARD_KEYS = ("images", "labels", "time_s", "curves", "attempt")
GRID_IMAGES = 64  # images in grid.png (8 x 8)


def generator_identity(gen_cfg: DictConfig) -> dict:
    """The resolved generator config without its `facts` (what the reports read about it; no image depends on them)."""
    gen = OmegaConf.to_container(gen_cfg, resolve=True)
    gen.pop("facts", None)
    return gen


def set_key(cfg: DictConfig) -> str:
    """Hash of (teacher identity, resolved generator config, number of images, `synth_seed`); `real` adds `cfg.data`.

    Quantization (`quant`, `bits`), QAT and device are deliberately left out, and so are the generator's `facts`.
    The precision of an optimised set's forward passes joins the key when it is not fp32 (a bf16 set is another
    set; fp32 keys are those of sets made before precision was part of it); sets drawn once (`facts.optimises_pixels`
    false: noise, real) do not depend on it.
    """
    gen = generator_identity(cfg.generator)
    data = OmegaConf.to_container(cfg.data, resolve=True) if cfg.generator.name == "real" else None
    parts = ["synth-v1", teacher_identity(cfg), gen, cfg.generator.num_images, synth_seed(cfg), data]
    optimised = OmegaConf.select(cfg.generator, "facts.optimises_pixels", default=True)  # noise, real: drawn once
    if optimised and cfg.precision != "fp32":
        parts.append(cfg.precision)
    return config_hash(*parts)


def synth_seed(cfg: DictConfig) -> int:
    """Seed of the synthetic set: `cfg.synth_seed` (defaults to the run's `seed`); fixing it shares one set
    between runs that differ only in their QAT seed."""
    return int(cfg.get("synth_seed", cfg.seed))


def set_dir(cfg: DictConfig) -> Path:
    return Path(cfg.paths.cache_dir) / "synth" / f"{cfg.generator.name}-{set_key(cfg)}"


def shard_path(folder: Path, index: int) -> Path:
    return folder / f"shard_{index:05d}.pt"


def load_shard(path: Path, expected: tuple[int, ...]) -> dict:
    """A finished shard, checked against its expected image shape (b, 3, H, W).

    Raises:
        FileNotFoundError / RuntimeError naming the file and how to regenerate the set.
    """
    how = f"Delete the folder {path.parent} and rerun to regenerate the synthetic set."
    shard = load_checkpoint(path, "synthetic-set shard", how)
    ok = isinstance(shard, dict) and all(k in shard for k in SHARD_KEYS)
    if not ok or tuple(shard["images"].shape) != expected or tuple(shard["labels"].shape) != expected[:1]:
        got = f"images {tuple(shard['images'].shape)}" if ok else "no images/labels/curves"
        raise RuntimeError(f"synthetic-set shard {path} holds {got}, expected images {expected}. {how}")
    return shard


def save_grid(images: Tensor, mean: Tensor, std: Tensor, path: Path) -> None:
    """De-normalised PNG grid of the first `GRID_IMAGES` images, written atomically.

    Args:
        images: (N, 3, H, W) normalised images.
        mean: (1, 3, 1, 1) normalisation mean.
        std: (1, 3, 1, 1) normalisation std.
        path: the PNG file.
    """
    pixels = (images[:GRID_IMAGES].float() * std + mean).clamp(0, 1)
    atomic_write(path, lambda f: save_image(pixels, f, nrow=8, format="png"))
