"""One dataset interface for the mini task and ImageNet-style folders: items are (normalized image, label)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class TensorImageDataset(Dataset):
    """uint8 images in memory, normalized on access, optionally augmented first (teacher training).

    Args:
        images: (N, 3, H, W) uint8.
        labels: (N,) int64.
        mean, std: per-channel normalization in [0, 1] pixel units.
        augment: a transform of the (3, H, W) image in [0, 1], applied before normalization.
    """

    def __init__(self, images, labels, mean, std, augment: Callable | None = None):
        self.images, self.labels, self.augment = images, labels, augment
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        x = self.images[i].float().div_(255.0)
        if self.augment is not None:
            x = self.augment(x)
        return (x - self.mean) / self.std, self.labels[i]


def check_data_cfg(data_cfg) -> None:
    """Fails fast, before any compute, on a data config that cannot work."""
    if data_cfg.name == "imagenet":
        root = data_cfg.get("root")
        if root in (None, "", "???"):
            raise ValueError("data=imagenet needs data.root=<folder with class sub-folders of images>")
        split_dir = Path(root) / data_cfg.split if data_cfg.split else Path(root)
        if not split_dir.is_dir():
            raise FileNotFoundError(f"data.root: folder {split_dir} does not exist")
        classes = [d for d in os.scandir(split_dir) if d.is_dir()]
        if not classes or not any(f.name.lower().endswith(IMG_EXTENSIONS) for c in classes for f in os.scandir(c.path)):
            raise ValueError(f"data.root: {split_dir} is empty (expected <class>/<image> sub-folders)")


def build_dataset(
    data_cfg, split: str, data_config: dict, cache_dir: str | Path, augment: Callable | None = None
) -> Dataset:
    """Returns the `split` ("train" | "test") dataset of `data_cfg`, normalized for the model.

    Args:
        data_cfg: the `data` config node.
        data_config: the model's timm data config (input_size, mean, std, interpolation, crop_pct).
    """
    if data_cfg.name == "mini":
        from mimiq.data.mini import load_or_build_mini

        d = load_or_build_mini(dict(data_cfg), cache_dir)
        return TensorImageDataset(d[f"{split}_x"], d[f"{split}_y"], data_config["mean"], data_config["std"], augment)
    if data_cfg.name == "imagenet":
        from mimiq.data.imagenet import imagenet_folder

        check_data_cfg(data_cfg)
        folder = data_cfg.train_split if split == "train" else data_cfg.split
        return imagenet_folder(Path(data_cfg.root) / (folder or ""), data_config, data_cfg.eval_transform)
    raise ValueError(f"unknown data.name {data_cfg.name!r} (expected mini or imagenet)")


def build_loader(dataset: Dataset, batch_size: int, shuffle: bool, num_workers: int = 0, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers, generator=g)
