"""QAT augmentation: which runs augment (`augments`), the bench's view of it (`outcome`), and the teacher's reading
of augmented views (`augment_consistency`) against a hand computation."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from mimiq.config import compose
from mimiq.distill.augment import SyntheticAugment, augment_consistency, augments
from mimiq.report import bench
from mimiq.task import make_task


def _cfg(gen: str, enabled: bool, synthetic: bool | None):
    aug = {"enabled": enabled} | ({} if synthetic is None else {"synthetic": synthetic})
    return OmegaConf.create({"generator": {"name": gen}, "qat": {"augment": aug}})


@pytest.mark.parametrize(
    ("gen", "enabled", "synthetic", "expected"),
    [
        ("real", True, False, True),  # real images are augmented whatever `synthetic` says
        ("real", False, True, False),  # off is off
        ("mimiq", True, False, False),
        ("noise", True, True, True),
        ("psaq", True, None, True),  # a saved config from before the switch: the paper code's behaviour
    ],
)
def test_augments(gen, enabled, synthetic, expected):
    assert augments(_cfg(gen, enabled, synthetic)) is expected


def test_the_mini_budget_augments_real_images_only_and_the_task_follows():
    real, mimiq = compose(["generator=real"]), compose(["generator=mimiq"])
    assert augments(real) and not augments(mimiq)
    assert not augments(compose(["generator=real", "experiment=mini_swin"]))  # Swin mini: off for every set
    assert augments(compose(["generator=mimiq", "budget=paper"]))  # the paper's budget augments its synthetic set
    x = torch.randn(2, 3, 32, 32)
    assert make_task(mimiq).augment(nn.Identity(), 32)(x) is x
    torch.manual_seed(0)
    assert not torch.equal(make_task(real).augment(_tiny_teacher(), 32)(x), x)


def test_outcome_sees_the_augmentation_a_run_applies_not_its_unused_settings():
    real, mimiq = compose(["generator=real"]), compose(["generator=mimiq"])
    saved = OmegaConf.to_container(real, resolve=True)  # a real-data run saved before the switch existed
    del saved["qat"]["augment"]["synthetic"]
    before_real = OmegaConf.create(saved)
    assert bench.outcome(before_real) == bench.outcome(real)
    swin_old = compose(["generator=mimiq", "experiment=mini_swin"])  # augmentation off: its settings cannot matter
    swin_new = swin_old.copy()
    swin_new.qat.augment.crop_scale = [0.5, 1.0]
    assert bench.outcome(swin_old) == bench.outcome(swin_new)
    augmented = mimiq.copy()  # a synthetic run that augmented (before the mini budget's switch) is another config
    augmented.qat.augment.synthetic = True
    assert bench.outcome(augmented) != bench.outcome(mimiq)


def _tiny_teacher() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 4)).eval()


def test_augment_consistency_against_a_hand_computation():
    teacher, images = _tiny_teacher(), torch.randn(6, 3, 32, 32)
    labels = teacher(images).argmax(-1)
    same = augment_consistency(teacher, images, labels, lambda x: x, draws=2)
    assert same["keeps_class"] == 100 and same["matches_label"] == 100 and same["clean_agreement"] == 100
    assert same["kl"] == pytest.approx(0, abs=1e-6)
    views = [torch.randn_like(images) for _ in range(3)]
    it = iter(views)
    got = augment_consistency(teacher, images, labels, lambda x: next(it), draws=3)
    with torch.no_grad():
        p0 = teacher(images).double().softmax(-1).tolist()
        ps = [teacher(v).double().softmax(-1).tolist() for v in views]
    keep = kl = 0.0
    for p in ps:  # Python floats, image by image
        for i in range(len(images)):
            keep += float(max(range(4), key=p[i].__getitem__) == max(range(4), key=p0[i].__getitem__)) / 18
            kl += sum(p0[i][c] * math.log(p0[i][c] / p[i][c]) for c in range(4)) / 18  # 3 views x 6 images
    assert got["keeps_class"] == pytest.approx(100 * keep) and got["matches_label"] == pytest.approx(100 * keep)
    assert got["kl"] == pytest.approx(kl, rel=1e-4)


def test_synthetic_augment_changes_views_and_keeps_the_shape():
    cfg = compose([]).qat.augment
    aug = SyntheticAugment(cfg, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 32)
    x = torch.randn(4, 3, 32, 32)
    torch.manual_seed(0)
    y = aug(x)
    assert y.shape == x.shape and not torch.equal(y, x)
