"""ImageNet-style folders (<root>/<split>/<class>/<image>) with the model's eval transform."""

from __future__ import annotations

from pathlib import Path

from torchvision import datasets, transforms


def eval_transform(data_config: dict, kind: str):
    """`timm`: the model's own timm eval transform; `mimiq`: Resize(256) -> CenterCrop(224) -> Normalize.

    The MimiQ/PSAQ code evaluates with torchvision's Resize(256, bilinear) + CenterCrop(224), not timm's crop_pct
    and interpolation (docs/reproduce.md); the FP numbers of the paper's tables are measured that way.
    """
    if kind == "timm":
        from timm.data import create_transform

        return create_transform(**data_config, is_training=False)
    if kind == "mimiq":
        size = data_config["input_size"][-1]
        return transforms.Compose(
            [
                transforms.Resize(int(round(size * 256 / 224))),
                transforms.CenterCrop(size),
                transforms.ToTensor(),
                transforms.Normalize(data_config["mean"], data_config["std"]),
            ]
        )
    raise ValueError(f"data.eval_transform must be timm or mimiq, got {kind!r}")


def imagenet_folder(root: Path, data_config: dict, kind: str) -> datasets.ImageFolder:
    return datasets.ImageFolder(str(root), transform=eval_transform(data_config, kind))
