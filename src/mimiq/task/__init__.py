"""The task adapter: what the pipeline (`mimiq.pipeline.run`), the generators and the QAT loop need to know about
a task, so that one pipeline, one generator core and one QAT loop serve all three:

    classification  (`mimiq.task.classification`) a timm ViT / DeiT / Swin classifier: distils logits (KD, CE)
                    and the attention of the whole model; the generator's CE-to-a-random-label term applies;
                    top-1 on the data's eval split, every `qat.eval_every` epochs.
    detection       (`mimiq.task.dense`) an mmdet detector: distils the neck features and the RPN objectness;
    segmentation    an mmseg segmentor: distils the decode head's pixel logits. The dense tasks distil the
                    attention of the backbone, which is what the generator optimises through (no classifier, no
                    CE term) and what is quantized (`task.quantize=backbone`, or the whole model); COCO / ADE20K
                    metrics after training. The mm packages (the optional `mm` extra) are imported lazily.
"""

from __future__ import annotations

from omegaconf import DictConfig

from mimiq.task.base import Task, TeacherStage

TASKS = ("classification", "detection", "segmentation")

__all__ = ["TASKS", "Task", "TeacherStage", "make_task"]


def make_task(cfg: DictConfig) -> Task:
    """The adapter of `cfg.task.name`."""
    name = cfg.task.name
    if name == "classification":
        from mimiq.task.classification import Classification

        return Classification(cfg)
    if name in ("detection", "segmentation"):
        from mimiq.task.dense import Detection, Segmentation

        return (Detection if name == "detection" else Segmentation)(cfg)
    raise ValueError(f"unknown task {name!r}; expected one of {', '.join(TASKS)}")
