"""Dense tasks (docs/dense.md): COCO detection / instance segmentation (mmdet 3.3) and ADE20K semantic segmentation
(mmseg 1.2.2) with data-free quantized ViT backbones, on the classification path's quantizers, attention modules,
generator losses and HSAD.

    attention.py   our attention modules inside mm Swin / ViT backbones (module swap, no patching)
    checkpoint.py  strict checkpoint loading + the official Swin detection / segmentation key converter
    model.py       upstream mm config + overrides -> model; data / evaluator settings from `task`
    synth.py       synthetic images from the backbone (inter-head + TV, on the generator core) or a classifier
    losses.py      task-level output distillation (FPN + RPN objectness; per-pixel KD)
    evaluate.py    mmdet / mmseg's own test pipeline and metrics (CocoMetric, IoUMetric)

The run is `mimiq.pipeline.run` with the dense task adapter `mimiq.task.dense` and the one QAT loop.

mmengine / mmcv / mmdet / mmseg are the optional `mm` extra (`make install-mm`): nothing here imports them at
module import time except attention.py's lazy lookups, so `import mimiq` never needs them.
"""
