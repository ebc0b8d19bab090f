"""The embedded mini task: 10-way "which photo is this crop from" on photos bundled with scikit-image/learn.

Each class is one bundled colour photo. A sample is a random square crop (48-160 px) resized to 32x32 with
brightness/contrast jitter. Train crops come from the left part of each photo, test crops from the right part
(`split_frac` of the width), so the splits share no pixel. Everything is drawn from one seeded numpy generator,
so the dataset is bit-identical across machines and runs; it is cached as uint8 tensors.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mimiq.utils.io import atomic_torch_save, config_hash, load_checkpoint

log = logging.getLogger(__name__)

# (source, name): every entry ships inside an installed package, no download.
PHOTOS: tuple[tuple[str, str], ...] = (
    ("skimage", "astronaut"),
    ("skimage", "coffee"),
    ("skimage", "chelsea"),
    ("skimage", "rocket"),
    ("skimage", "immunohistochemistry"),
    ("skimage", "hubble_deep_field"),
    ("skimage", "retina"),
    ("skimage", "gravel"),  # grayscale texture; colorwheel was unlearnable (its halves have different hues)
    ("sklearn", "china.jpg"),
    ("sklearn", "flower.jpg"),
)

# Keys of the data config that change the images (batch size, workers, root do not).
_CONTENT_KEYS = (
    "num_classes",
    "img_size",
    "train_per_class",
    "test_per_class",
    "crop_min",
    "crop_max",
    "split_frac",
    "brightness",
    "contrast",
    "seed",
)


def load_photo(source: str, name: str) -> np.ndarray:
    """Returns an RGB uint8 array (H, W, 3)."""
    if source == "skimage":
        import skimage.data

        img = getattr(skimage.data, name)()
    elif source == "sklearn":
        from sklearn.datasets import load_sample_image

        img = load_sample_image(name)
    else:
        raise ValueError(f"unknown photo source {source!r}")
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    return np.ascontiguousarray(img[..., :3]).astype(np.uint8)


def _crops(
    photo: torch.Tensor, n: int, x_lo: int, x_hi: int, cfg: dict, rng: np.random.Generator
) -> tuple[torch.Tensor, np.ndarray]:
    """`n` jittered crops with left edge >= x_lo and right edge <= x_hi.

    Args:
        photo: (3, H, W) float in [0, 255].
    Returns:
        images (n, 3, S, S) uint8 and boxes (n, 4) as (x0, y0, x1, y1), exclusive ends.
    """
    _, h, w = photo.shape
    s_max = min(cfg["crop_max"], x_hi - x_lo, h)
    s_min = min(cfg["crop_min"], s_max)
    out = torch.empty(n, 3, cfg["img_size"], cfg["img_size"], dtype=torch.uint8)
    boxes = np.empty((n, 4), dtype=np.int64)
    for i in range(n):
        s = int(rng.integers(s_min, s_max + 1))
        x0 = int(rng.integers(x_lo, x_hi - s + 1))
        y0 = int(rng.integers(0, h - s + 1))
        crop = photo[:, y0 : y0 + s, x0 : x0 + s].unsqueeze(0)  # (1, 3, s, s)
        crop = F.interpolate(crop, size=cfg["img_size"], mode="bilinear", antialias=True, align_corners=False)
        c = rng.uniform(1 - cfg["contrast"], 1 + cfg["contrast"])
        b = rng.uniform(-cfg["brightness"], cfg["brightness"]) * 255.0
        mean = crop.mean()
        crop = (crop - mean) * c + mean + b
        out[i] = crop.clamp(0, 255).round().to(torch.uint8)[0]
        boxes[i] = (x0, y0, x0 + s, y0 + s)
    return out, boxes


def build_mini(cfg: dict) -> dict:
    """Builds the dataset dict (no caching). See module docstring."""
    if cfg["num_classes"] > len(PHOTOS):
        raise ValueError(f"data.num_classes={cfg['num_classes']} but only {len(PHOTOS)} bundled photos exist")
    rng = np.random.default_rng(cfg["seed"])
    parts: dict[str, list] = {k: [] for k in ("train_x", "train_y", "train_boxes", "test_x", "test_y", "test_boxes")}
    split_cols = []
    for label, (source, name) in enumerate(PHOTOS[: cfg["num_classes"]]):
        photo = torch.from_numpy(load_photo(source, name)).permute(2, 0, 1).float()  # (3, H, W)
        split = int(round(photo.shape[2] * cfg["split_frac"]))
        split_cols.append(split)
        for split_name, n, lo, hi in (
            ("train", cfg["train_per_class"], 0, split),
            ("test", cfg["test_per_class"], split, photo.shape[2]),
        ):
            x, boxes = _crops(photo, n, lo, hi, cfg, rng)
            parts[f"{split_name}_x"].append(x)
            parts[f"{split_name}_y"].append(torch.full((n,), label, dtype=torch.long))
            parts[f"{split_name}_boxes"].append(torch.from_numpy(boxes))
    data = {k: torch.cat(v) for k, v in parts.items()}
    data["split_cols"] = torch.tensor(split_cols)
    data["classes"] = [name.split(".")[0] for _, name in PHOTOS[: cfg["num_classes"]]]
    return data


def content_cfg(cfg: dict) -> dict:
    return {k: cfg[k] for k in _CONTENT_KEYS}


def mini_key(cfg: dict) -> str:
    """Hash of everything that defines the images: the photo list and the image-defining config keys."""
    return config_hash("mini-data", PHOTOS, content_cfg(cfg))


def load_or_build_mini(cfg: dict, cache_dir: str | Path) -> dict:
    """Cached `build_mini`, keyed by `mini_key`."""
    key = mini_key(cfg)
    path = Path(cache_dir) / "data" / f"mini-{key}.pt"
    if path.is_file():
        return load_checkpoint(path, "mini dataset cache", f"Delete {path} to rebuild it.")
    log.info("building the mini dataset -> %s", path)
    data = build_mini(cfg)
    atomic_torch_save(data, path)
    return data
