"""Every registered model config builds with random init and gives the right output shape; loaders fail fast."""

from pathlib import Path

import pytest
import torch
from conftest import CONF_DIR, compose_cfg

from mimiq.models import check_model_cfg, create_model, model_data_config

MODELS = sorted(p.stem for p in (Path(CONF_DIR) / "model").glob("*.yaml"))
BIG = {"vit_base_patch16_224", "deit_base_patch16_224", "swin_base_patch4_window7_224"}


@pytest.mark.parametrize("name", MODELS)
def test_model_builds_random_init(name):
    cfg = compose_cfg([f"model={name}", "model.pretrained=false"])
    num_classes = cfg.data.num_classes if cfg.model.train_teacher else None
    model = create_model(cfg.model, num_classes=num_classes)
    dc = model_data_config(model)
    x = torch.randn(1, *dc["input_size"])
    with torch.no_grad():
        out = model(x)
    assert out.shape == (1, num_classes or 1000)
    assert torch.isfinite(out).all()
    if name in ("vit_mini", "swin_mini"):
        assert dc["input_size"] == (3, 32, 32)


def test_unknown_model_name_fails_fast():
    cfg = compose_cfg(["model.timm_name=deit_smal_patch16_224"])
    with pytest.raises(ValueError, match=r"model.timm_name.*Did you mean.*deit_small_patch16_224"):
        check_model_cfg(cfg.model)


def test_local_checkpoint_loads_strictly(tmp_path):
    cfg = compose_cfg(["model=vit_test"])
    src = create_model(cfg.model, num_classes=10)
    torch.save({"model": src.state_dict()}, tmp_path / "w.pth")
    cfg = compose_cfg(["model=vit_test", f"model.checkpoint={tmp_path / 'w.pth'}", "+model.arch.num_classes=10"])
    dst = create_model(cfg.model)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(src.eval()(x), dst(x))
    wrong = compose_cfg(
        ["model=vit_test", f"model.checkpoint={tmp_path / 'w.pth'}", "model.arch.depth=3", "+model.arch.num_classes=10"]
    )
    with pytest.raises(RuntimeError, match="does not fit"):
        create_model(wrong.model)


def test_bad_checkpoint_files_fail_with_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.checkpoint"):
        check_model_cfg(compose_cfg([f"model.checkpoint={tmp_path / 'missing.pth'}"]).model)
    bad = tmp_path / "corrupt.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match=r"unreadable or corrupt: .*corrupt.pth"):
        create_model(compose_cfg(["model=vit_test", f"model.checkpoint={bad}"]).model)
