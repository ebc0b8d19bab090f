"""COCO / ADE20K evaluation with mmdet's / mmseg's own dataset, pipeline and metric (CocoMetric, IoUMetric).

The loop is mmengine's TestLoop written out (dataloader -> `model.test_step` -> `Evaluator.process` ->
`Evaluator.evaluate`), so that the FP model and the quantized student, which are plain modules here and not
owned by a Runner, go through exactly the same test pipeline and metric code.
"""

from __future__ import annotations

import copy
import logging
import time

import torch
from torch import nn
from tqdm import tqdm

from mimiq.dense.model import use_scope
from mimiq.utils.seed import autocast

log = logging.getLogger(__name__)

# mm metric key -> our metrics.json key (percent)
METRIC_KEYS = {
    "detection": {
        "coco/bbox_mAP": "box_ap",
        "coco/segm_mAP": "mask_ap",
        "coco/bbox_mAP_50": "box_ap50",
        "coco/segm_mAP_50": "mask_ap50",
    },
    "segmentation": {"mIoU": "miou", "mAcc": "macc", "aAcc": "aacc"},
}


@torch.no_grad()
def evaluate_dense(model: nn.Module, mm_cfg, task: str, device: torch.device, precision: str = "fp32") -> dict:
    """The task's metrics of `model` on the config's test split, in percent.

    Returns:
        detection {"box_ap", "mask_ap", "box_ap50", "mask_ap50", "n", "time_s"}; segmentation {"miou", "macc",
        "aacc", "n", "time_s"} (keys present as the evaluator reports them).
    """
    use_scope(task)
    from mmengine.evaluator import Evaluator
    from mmengine.runner import Runner

    t0 = time.time()
    loader = Runner.build_dataloader(copy.deepcopy(mm_cfg.test_dataloader), seed=0)
    evaluator = Evaluator(copy.deepcopy(mm_cfg.test_evaluator))
    evaluator.dataset_meta = loader.dataset.metainfo
    was_training = model.training
    model.to(device).eval()
    try:
        for data_batch in tqdm(loader, desc=f"eval {task}", leave=False, mininterval=2):
            with autocast(precision, device):
                outputs = model.test_step(data_batch)
            evaluator.process(data_samples=outputs, data_batch=data_batch)
    finally:
        model.train(was_training)
    raw = evaluator.evaluate(len(loader.dataset))
    scale = 100.0 if task == "detection" else 1.0  # CocoMetric reports fractions, IoUMetric percent
    out = {ours: float(raw[key]) * scale for key, ours in METRIC_KEYS[task].items() if key in raw}
    if task == "detection" and not raw:  # CocoMetric returns nothing when no image has a detection: AP is 0
        log.info("eval detection: no detections on any image; box / mask AP = 0")
        out = {ours: 0.0 for ours in METRIC_KEYS[task].values()}
    return {**out, "n": len(loader.dataset), "time_s": time.time() - t0}
