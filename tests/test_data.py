"""The mini dataset is deterministic, its splits share no pixel; the ImageFolder path evaluates."""

import numpy as np
import pytest
import torch
from conftest import compose_cfg
from PIL import Image

from mimiq.data import build_dataset, check_data_cfg
from mimiq.data.mini import PHOTOS, build_mini, load_or_build_mini, load_photo

SMALL = dict(
    num_classes=10,
    img_size=32,
    train_per_class=12,
    test_per_class=6,
    crop_min=48,
    crop_max=160,
    split_frac=0.58,
    brightness=0.1,
    contrast=0.3,
    seed=7,
)
NORM = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}


def test_all_bundled_photos_load_offline():
    for source, name in PHOTOS:
        img = load_photo(source, name)
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3 and min(img.shape[:2]) >= 160


def test_mini_is_deterministic_and_seeded():
    a, b = build_mini(SMALL), build_mini(SMALL)
    for k in ("train_x", "train_y", "test_x", "test_y", "train_boxes", "test_boxes"):
        assert torch.equal(a[k], b[k]), k
    c = build_mini({**SMALL, "seed": 8})
    assert not torch.equal(a["train_x"], c["train_x"])


def test_mini_splits_share_no_pixels():
    d = build_mini(SMALL)
    for label, split in enumerate(d["split_cols"].tolist()):
        tr = d["train_boxes"][d["train_y"] == label]
        te = d["test_boxes"][d["test_y"] == label]
        assert len(tr) == SMALL["train_per_class"] and len(te) == SMALL["test_per_class"]
        assert (tr[:, 2] <= split).all(), "a train crop reaches into the test region"
        assert (te[:, 0] >= split).all(), "a test crop reaches into the train region"
        assert (tr[:, 2] - tr[:, 0] >= SMALL["crop_min"]).all()


def test_mini_cache_roundtrip(tmp_path):
    d1 = load_or_build_mini(SMALL, tmp_path)
    files = list((tmp_path / "data").glob("mini-*.pt"))
    assert len(files) == 1
    d2 = load_or_build_mini({**SMALL, "batch_size": 3}, tmp_path)  # not a content key: same cache file
    assert torch.equal(d1["test_x"], d2["test_x"]) and len(list((tmp_path / "data").glob("*.pt"))) == 1


def test_mini_dataset_items_are_normalized(tmp_path):
    cfg = compose_cfg(["data.train_per_class=4", "data.test_per_class=2"])
    ds = build_dataset(cfg.data, "test", NORM, tmp_path)
    x, y = ds[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and 0 <= int(y) < 10
    assert len(ds) == 20 and x.min() < 0 < x.max()


def _write_folder(root, classes=("a", "b"), per_class=2, size=40):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / "val" / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / "val" / c / f"{i}.png")


@pytest.mark.parametrize("kind", ["timm", "mimiq"])
def test_imagefolder_dataset(tmp_path, kind):
    _write_folder(tmp_path)
    cfg = compose_cfg(["data=imagenet", f"data.root={tmp_path}", f"data.eval_transform={kind}"])
    ds = build_dataset(
        cfg.data,
        "test",
        {**NORM, "input_size": (3, 32, 32), "interpolation": "bicubic", "crop_pct": 0.875, "crop_mode": "center"},
        tmp_path,
    )
    x, y = ds[3]
    assert len(ds) == 4 and x.shape == (3, 32, 32) and y == 1


def test_imagefolder_bad_roots_fail_fast(tmp_path):
    with pytest.raises(ValueError, match="data.root"):
        check_data_cfg(compose_cfg(["data=imagenet"]).data)
    with pytest.raises(FileNotFoundError, match="data.root"):
        check_data_cfg(compose_cfg(["data=imagenet", f"data.root={tmp_path / 'nope'}"]).data)
    (tmp_path / "val" / "cls").mkdir(parents=True)
    with pytest.raises(ValueError, match="empty"):
        check_data_cfg(compose_cfg(["data=imagenet", f"data.root={tmp_path}"]).data)
