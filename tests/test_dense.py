"""Dense tasks (docs/dense.md): COCO detection / instance segmentation (mmdet) and ADE20K segmentation (mmseg).

Tests marked `dense` need the optional mm extra (`make install-mm`) and skip with the reason when it is missing;
CI sets MIMIQ_REQUIRE_MM=1, which turns that skip into a failure. They write a tiny COCO-format and a tiny
ADE20K-format fixture (64x64 images with polygons / label maps), use tiny random-init Swin / ViT backbones and
run on the CPU. The unmarked tests (bad input fails fast) need no extra.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os

import numpy as np
import pytest
import torch
from conftest import compose_cfg
from omegaconf import OmegaConf, open_dict
from PIL import Image

from mimiq import pipeline

CPU = torch.device("cpu")
dense = pytest.mark.dense
MM = ("mmengine", "mmcv", "mmdet", "mmseg")


@pytest.fixture(scope="module")
def mm():
    """Skips (or, with MIMIQ_REQUIRE_MM=1, fails) unless the mm extra imports, compiled ops included."""
    try:
        import mmcv.ops  # noqa: F401  the compiled ops: mmcv-lite is not enough
        import mmdet  # noqa: F401
        import mmseg  # noqa: F401
    except ImportError as e:
        if os.environ.get("MIMIQ_REQUIRE_MM") == "1":
            pytest.fail(f"MIMIQ_REQUIRE_MM=1 but the mm extra does not import: {e}")
        pytest.skip(f"needs the optional mm extra (mmcv with ops, mmdet, mmseg): {e}; run `make install-mm`")


# ------------------------------------------------------------------------------------------------ fixtures

SWIN_TINY = {  # 4 stages of 16/32/64/128 channels, window 4: a 64 px image has 16x16 -> 2x2 tokens
    "model.backbone.embed_dims": 16,
    "model.backbone.depths": [2, 2, 2, 2],
    "model.backbone.num_heads": [2, 2, 4, 4],
    "model.backbone.window_size": 4,
}
DET_TINY = {
    **SWIN_TINY,
    "model.neck.in_channels": [16, 32, 64, 128],
    "model.neck.out_channels": 32,
    "model.rpn_head.in_channels": 32,
    "model.rpn_head.feat_channels": 32,
    "model.roi_head.bbox_roi_extractor.out_channels": 32,
    "model.roi_head.bbox_head.in_channels": 32,
    "model.roi_head.bbox_head.fc_out_channels": 64,
    "model.roi_head.mask_roi_extractor.out_channels": 32,
    "model.roi_head.mask_head.in_channels": 32,
    "model.roi_head.mask_head.conv_out_channels": 32,
    "test_dataloader.dataset.pipeline.1.scale": [64, 64],
    "model.test_cfg.rcnn.score_thr": 0.0,  # a random detector's scores are ~1/81: keep its boxes, so AP is computed
    "model.test_cfg.rcnn.max_per_img": 20,
}
SEG_TINY = {
    **SWIN_TINY,
    "model.decode_head.in_channels": [16, 32, 64, 128],
    "model.decode_head.channels": 32,
    "model.auxiliary_head.in_channels": 64,
    "model.auxiliary_head.channels": 16,
    "test_dataloader.dataset.pipeline.1.scale": [64, 64],
}
BUDGET = [  # seconds on 2 cores: 4 synthetic 64 px images x 3 steps, one QAT epoch of 2 steps
    "device=cpu",
    "generator.num_images=4",
    "generator.batch_size=2",
    "generator.iterations=3",
    "qat.epochs=1",
    "qat.batch_size=2",
    "qat.calib_size=2",
    "qat.no_step_epochs=0",
    "task.random_init=true",
    "task.num_workers=0",
    "task.synth.image_size=[64,64]",
]


def _scene(rng: np.random.Generator) -> tuple[np.ndarray, list[tuple[int, list[int]]]]:
    """A 64x64 RGB image with a random background and two filled rectangles; returns it and the rectangles
    (category, [x0, y0, x1, y1])."""
    img = rng.integers(0, 80, (64, 64, 3), dtype=np.uint8)
    boxes = []
    for cat, color in ((1, (220, 40, 40)), (2, (40, 200, 60))):
        x0, y0 = (int(v) for v in rng.integers(2, 30, 2))
        x1, y1 = x0 + int(rng.integers(12, 30)), y0 + int(rng.integers(12, 30))
        img[y0:y1, x0:x1] = color
        boxes.append((cat, [x0, y0, x1, y1]))
    return img, boxes


@pytest.fixture(scope="module")
def coco_root(mm, tmp_path_factory):
    """<root>/val2017/*.jpg + <root>/annotations/instances_val2017.json: 3 images with objects of 2 categories;
    the file lists COCO's 80 categories (ids 1..80, COCO's names), so the 80-class detector and CocoMetric map
    every label without overrides."""
    from mmdet.datasets import CocoDataset

    root = tmp_path_factory.mktemp("coco")
    (root / "val2017").mkdir()
    (root / "annotations").mkdir()
    rng = np.random.default_rng(0)
    images, anns = [], []
    for i in range(3):
        img, boxes = _scene(rng)
        name = f"{i:012d}.jpg"
        Image.fromarray(img).save(root / "val2017" / name, quality=95)
        images.append({"id": i + 1, "file_name": name, "width": 64, "height": 64})
        for cat, (x0, y0, x1, y1) in boxes:
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i + 1,
                    "category_id": cat,
                    "iscrowd": 0,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]],
                }
            )
    names = CocoDataset.METAINFO["classes"]
    cats = [{"id": i + 1, "name": name, "supercategory": "thing"} for i, name in enumerate(names)]
    ann = {"images": images, "annotations": anns, "categories": cats}
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(ann))
    return root


@pytest.fixture(scope="module")
def ade_root(mm, tmp_path_factory):
    """<root>/images/validation/*.jpg + <root>/annotations/validation/*.png: 3 images; label 0 = ignore,
    1 = background wall, 2 and 3 = the rectangles (ADE20K's reduce_zero_label maps them to classes 0, 1, 2)."""
    root = tmp_path_factory.mktemp("ade")
    (root / "images" / "validation").mkdir(parents=True)
    (root / "annotations" / "validation").mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in range(3):
        img, boxes = _scene(rng)
        seg = np.ones((64, 64), dtype=np.uint8)
        seg[:2] = 0  # an ignored strip
        for cat, (x0, y0, x1, y1) in boxes:
            seg[y0:y1, x0:x1] = cat + 1
        Image.fromarray(img).save(root / "images" / "validation" / f"ADE_val_{i:08d}.jpg", quality=95)
        Image.fromarray(seg).save(root / "annotations" / "validation" / f"ADE_val_{i:08d}.png")
    return root


def _cfg(task: str, root, tmp_path, *overrides: str):
    cfg = compose_cfg(
        [f"task={task}", f"task.data_root={root}", f"paths.cache_dir={tmp_path / 'cache'}", *BUDGET, *overrides]
    )
    with open_dict(cfg):
        cfg.task.mm_overrides = DET_TINY if task == "detection" else SEG_TINY
    return cfg


def _model(cfg):
    from mimiq.dense.model import build_dense_model, build_mm_config

    torch.manual_seed(0)
    mm_cfg = build_mm_config(cfg.task)
    model, weights = build_dense_model(cfg.task, mm_cfg)
    return model, mm_cfg, weights


# ------------------------------------------------------------------------------------ end to end (CPU)


@dense
def test_detection_end_to_end(mm, coco_root, tmp_path):
    """task=detection through train.py's entry: FP and W4/A4 box + mask AP from mmdet's CocoMetric."""
    cfg = _cfg("detection", coco_root, tmp_path)
    metrics = pipeline.run(cfg, tmp_path / "run")
    for key in ("box_ap", "mask_ap", "fp_box_ap", "fp_mask_ap"):
        assert math.isfinite(metrics[key]) and 0.0 <= metrics[key] <= 100.0, key
    assert metrics["task"] == "detection" and metrics["data"] == "coco" and metrics["eval_images"] == 3
    assert (metrics["w_bits"], metrics["a_bits"], metrics["quantize"]) == (4, 4, "backbone")
    assert metrics["num_images"] == 4 and metrics["synth_source"] == "backbone"
    assert -1.0 <= metrics["interhead_ssim"] <= 1.0
    on_disk = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert on_disk["box_ap"] == metrics["box_ap"]
    manifest = (tmp_path / "run" / "manifest.txt").read_text()
    assert "stages.0.blocks.0.attn.w_msa.matmul_qk" in manifest and "neck" not in manifest
    history = json.loads((tmp_path / "run" / "qat_history.json").read_text())
    assert len(history) == 1 and math.isfinite(history[0]["loss_hsad"]) and math.isfinite(history[0]["loss_task"])


@dense
def test_segmentation_end_to_end(mm, ade_root, tmp_path):
    """task=segmentation: FP and W4/A8 mIoU from mmseg's IoUMetric; the whole segmentor quantized."""
    cfg = _cfg("segmentation", ade_root, tmp_path, "bits=w4a8", "task.quantize=model")
    metrics = pipeline.run(cfg, tmp_path / "run")
    for key in ("miou", "fp_miou"):
        assert math.isfinite(metrics[key]) and 0.0 <= metrics[key] <= 100.0, key
    assert (metrics["data"], metrics["w_bits"], metrics["a_bits"], metrics["quantize"]) == ("ade20k", 4, 8, "model")
    manifest = (tmp_path / "run" / "manifest.txt").read_text()
    assert "decode_head" in manifest and "backbone.stages.0.blocks.0.attn.w_msa.matmul_av" in manifest


# ------------------------------------------------------------------------------------- exactness of swaps


@dense
@pytest.mark.parametrize("task", ["detection", "segmentation"])
def test_disabled_quantizers_give_the_fp_backbone(mm, task, coco_root, ade_root, tmp_path):
    """Attention swapped and every Linear / Conv2d / matmul quantized, quantizers off: the backbone's outputs
    (and the whole model's task outputs) equal the untouched FP model's."""
    from mimiq.dense.attention import MMWindowAttention, swap_mm_attention
    from mimiq.quant import QuantSpec, set_quantizers_enabled
    from mimiq.task.dense import build_dense_student, task_outputs

    cfg = _cfg(task, coco_root if task == "detection" else ade_root, tmp_path)
    fp, _, _ = _model(cfg)
    ours = __import__("copy").deepcopy(fp)
    assert swap_mm_attention(ours) == 8  # 2 blocks x 4 stages
    x = torch.randn(2, 3, 64, 64)
    student, manifest = build_dense_student(ours, QuantSpec(w_bits=4, a_bits=4), x, task, "backbone")
    assert sum(isinstance(m, MMWindowAttention) for m in student.backbone.modules()) == 8
    assert manifest.counts()["q"] == 8 and manifest.counts()["weight"] > 0
    x = torch.randn(2, 3, 72, 56)  # not a multiple of the window: padding paths too
    with torch.no_grad():
        want = fp.backbone(x)
        assert not all(torch.equal(a, b) for a, b in zip(want, student.backbone(x), strict=True))  # quantized
        set_quantizers_enabled(student, False)
        for a, b in zip(want, student.backbone(x), strict=True):
            torch.testing.assert_close(b, a, rtol=0, atol=1e-5)
        t_out, s_out = task_outputs(fp, x, task), task_outputs(student, x, task)
    for key, value in t_out.items():
        for a, b in zip(
            value if isinstance(value, list) else [value],
            s_out[key] if isinstance(value, list) else [s_out[key]],
            strict=True,
        ):
            torch.testing.assert_close(b, a, rtol=0, atol=1e-4)


@dense
def test_vit_attention_swap_is_exact(mm):
    """mmseg ViT / DeiT: torch nn.MultiheadAttention -> MHAttention; FP-exact, quantizable, hookable."""
    from mmseg.models.backbones import VisionTransformer

    from mimiq.dense.attention import MHAttention, swap_mm_attention
    from mimiq.dense.synth import BackboneInfo
    from mimiq.models.attention import capture
    from mimiq.quant import QuantSpec, calibrate, quantize_model, set_quantizers_enabled

    torch.manual_seed(0)
    vit = VisionTransformer(
        img_size=(32, 32), patch_size=8, embed_dims=32, num_layers=2, num_heads=2, out_indices=(0, 1), final_norm=True
    )
    vit.eval()  # mmseg's train() returns None: no chaining
    ours = __import__("copy").deepcopy(vit)
    assert swap_mm_attention(ours) == 2 and BackboneInfo.of(ours).family == "vit"
    x = torch.randn(2, 3, 48, 40)  # another size than img_size: position embeddings are resized
    with torch.no_grad(), capture(ours, "matmul_qk") as qk:
        for a, b in zip(vit(x), ours(x), strict=True):
            torch.testing.assert_close(b, a, rtol=0, atol=1e-5)
    assert [tuple(t.shape) for t in qk] == [(2, 2, 31, 31)] * 2  # CLS + 6x5 patches
    assert BackboneInfo.of(ours).grids(ours, (48, 40)) == [(6, 5)] * 2
    quantize_model(ours, QuantSpec(w_bits=4, a_bits=4))
    calibrate(ours, x)
    assert sum(isinstance(m, MHAttention) for m in ours.modules()) == 2
    set_quantizers_enabled(ours, False)
    with torch.no_grad():
        for a, b in zip(vit(x), ours(x), strict=True):
            torch.testing.assert_close(b, a, rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------------------ checkpoints


@dense
def test_official_swin_checkpoint_converts_and_loads_strictly(mm, coco_root, tmp_path):
    """A checkpoint in the Swin-Transformer-Object-Detection layout (original backbone keys and patch-merging
    order, written here from the model by the original naming) loads strictly and gives the same outputs;
    a missing key fails with the file's name."""
    from mmcv.cnn.bricks.transformer import PatchMerging

    from mimiq.dense.checkpoint import MERGE_ORDER, load_dense_checkpoint

    cfg = _cfg("detection", coco_root, tmp_path)
    model, _, _ = _model(cfg)
    official = {}
    for k, v in model.state_dict().items():
        if k.startswith("backbone.stages."):
            k = k.replace("backbone.stages.", "backbone.layers.").replace(".attn.w_msa.", ".attn.")
            k = k.replace(".ffn.layers.0.0.", ".mlp.fc1.").replace(".ffn.layers.1.", ".mlp.fc2.")
            if ".downsample.reduction.weight" in k or ".downsample.norm." in k:
                c = v.shape[-1] // 4  # unfold order c * 4 + k -> original blocks [x0 | x1 | x2 | x3]
                per_pos = v.reshape(*v.shape[:-1], c, 4).transpose(-1, -2)  # (..., 4 positions, C)
                v = per_pos[..., [MERGE_ORDER.index(b) for b in range(4)], :].reshape(v.shape)
        k = k.replace("backbone.patch_embed.projection.", "backbone.patch_embed.proj.")
        official[k] = v.clone()
    path = tmp_path / "official.pth"
    torch.save({"state_dict": official, "meta": {"note": "original layout"}}, path)
    torch.manual_seed(1)
    other, _, _ = _model(cfg)
    assert load_dense_checkpoint(other, path) == "official-swin"
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(model.backbone(x), other.backbone(x), strict=True):
            torch.testing.assert_close(b, a, rtol=0, atol=0)

    # the patch-merging permutation against the original merging, written out: x0 x1 x2 x3 concatenated
    merge = PatchMerging(in_channels=4, out_channels=6).eval()
    tokens = torch.randn(1, 16, 4)  # (B, H*W, C) with H = W = 4
    w_orig, n_w, n_b = torch.randn(6, 16), torch.randn(16), torch.randn(16)
    from mimiq.dense.checkpoint import _merge_permute

    merge.reduction.weight.data, merge.norm.weight.data, merge.norm.bias.data = (
        _merge_permute(w_orig),
        _merge_permute(n_w),
        _merge_permute(n_b),
    )
    grid = tokens.view(1, 4, 4, 4)
    cat = torch.cat([grid[:, 0::2, 0::2], grid[:, 1::2, 0::2], grid[:, 0::2, 1::2], grid[:, 1::2, 1::2]], -1)
    want = torch.nn.functional.layer_norm(cat.view(1, 4, 16), (16,), n_w, n_b) @ w_orig.T
    got, _ = merge(tokens, (4, 4))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)

    del official["backbone.norm0.weight"]
    torch.save({"state_dict": official}, path)
    with pytest.raises(RuntimeError, match=r"(?s)official\.pth.*Missing.*backbone\.norm0\.weight"):
        load_dense_checkpoint(other, path)


@dense
def test_backbone_synthesis_lowers_the_interhead_loss(mm, coco_root, tmp_path):
    """Backbone-made images (no classifier): the inter-head term and TV go down, pixels stay valid, and the
    set is cached and reused."""
    from mimiq.dense.attention import swap_mm_attention
    from mimiq.dense.model import data_preprocessor_stats
    from mimiq.dense.synth import synthesize_from_backbone

    cfg = _cfg(
        "detection",
        coco_root,
        tmp_path,
        "generator.iterations=8",
        "generator.jitter=[0,0]",
        "generator.noise_std=0",
        "generator.jitter_mean=0",
        "generator.jitter_log_std=0",
        "generator.w_tv=1e-3",
    )
    model, _, _ = _model(cfg)
    swap_mm_attention(model)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in data_preprocessor_stats(model))
    s = synthesize_from_backbone(model.backbone, cfg, mean, std)
    assert s.images.shape == (4, 3, 64, 64) and not s.meta["reused"]
    assert ((s.images >= -mean / std - 1e-5) & (s.images <= (255 - mean) / std + 1e-5)).all()
    from mimiq.synth.cache import load_shard, shard_path

    curves = load_shard(shard_path(__import__("pathlib").Path(s.meta["path"]), 0), (2, 3, 64, 64))["curves"]
    assert curves["ih"][-1] < curves["ih"][0] and curves["tv"][-1] < curves["tv"][0]
    again = synthesize_from_backbone(model.backbone, cfg, mean, std)
    assert again.meta["reused"] and torch.equal(again.images, s.images)


# ----------------------------------------------------------------------- bad input fails fast (no extra)


def test_unknown_task_fails_fast(tmp_path):
    cfg = compose_cfg(["task=detection"])
    with open_dict(cfg):
        cfg.task.name = "depth"
    with pytest.raises(ValueError, match="unknown task 'depth'"):
        pipeline.run(cfg, tmp_path)


@pytest.mark.skipif(not all(importlib.util.find_spec(p) for p in MM), reason="needs the mm extra installed")
@pytest.mark.parametrize(
    "overrides,error,match",
    [
        ([], ValueError, "task.checkpoint is not set"),
        (["task.random_init=true"], ValueError, "task.data_root is not set"),
        (["task.random_init=true", "task.data_root=/nonexistent/coco"], FileNotFoundError, "does not exist"),
        (["task.checkpoint=/nonexistent/w.pth"], FileNotFoundError, "task.checkpoint: file /nonexistent/w.pth"),
        (["task.random_init=true", "task.quantize=neck"], ValueError, "task.quantize must be"),
    ],
)
def test_bad_dense_input_fails_fast(tmp_path, overrides, error, match):
    cfg = compose_cfg(["task=detection", *overrides])
    with pytest.raises(error, match=match):
        pipeline.run(cfg, tmp_path)


def test_missing_extra_says_how_to_install(tmp_path, monkeypatch):
    import mimiq.task.dense as dense_run

    monkeypatch.setattr(dense_run.importlib.util, "find_spec", lambda name: None)
    cfg = compose_cfg(["task=segmentation"])
    with pytest.raises(ImportError, match="make install-mm"):
        pipeline.run(cfg, tmp_path)


def test_dense_configs_compose():
    for task, metric in (("detection", "box_ap"), ("segmentation", "miou")):
        cfg = compose_cfg([f"task={task}"])
        OmegaConf.resolve(cfg)
        assert cfg.task.metric == metric and cfg.task.quantize == "backbone" and cfg.task.synth.source == "backbone"


def test_task_distill_losses_are_zero_only_at_the_teacher():
    from mimiq.dense.losses import feature_distill_loss, objectness_distill_loss, pixel_kd_loss

    torch.manual_seed(0)
    feats = [torch.randn(2, 8, 16, 16), torch.randn(2, 8, 8, 8)]
    other = [f + 0.1 * torch.randn_like(f) for f in feats]
    assert feature_distill_loss(feats, feats) == 0 and feature_distill_loss(other, feats) > 0
    scaled = [10 * f for f in feats]  # scale-free: the same relative error at any feature scale
    want = feature_distill_loss(other, feats)
    torch.testing.assert_close(feature_distill_loss([10 * o for o in other], scaled), want)
    obj = [torch.randn(2, 3, 16, 16)]
    assert abs(objectness_distill_loss(obj, obj).item()) < 1e-6 and objectness_distill_loss([-o for o in obj], obj) > 0
    logits = torch.randn(2, 5, 8, 8, requires_grad=True)
    assert pixel_kd_loss(logits, logits.detach(), 2.0).abs() < 1e-6
    loss = pixel_kd_loss(logits, torch.randn(2, 5, 8, 8), 2.0)
    loss.backward()
    assert loss > 0 and logits.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="levels"):
        feature_distill_loss(feats[:1], feats)
