# Cascade Mask R-CNN with Swin-S (Swin-Transformer-Object-Detection's
# cascade_mask_rcnn_swin_small_patch4_window7_mstrain_480-800_giou_4conv1f_adamw_3x_coco.py: 51.9 box / 45.0 mask AP).
_base_ = ["./cascade-mask-rcnn_swin-t-p4-w7_fpn_4conv1f-giou_ms-3x_coco.py"]
model = dict(backbone=dict(depths=[2, 2, 18, 2], drop_path_rate=0.3))
