"""The quantized dense student and its QAT on synthetic images, distilled from the frozen FP dense model.

Student (`build_dense_student`): a deep copy of the FP model (attention already ours), with `quantize_model`
applied to `task.quantize`:
    backbone  the backbone only (the data-free default: the ViT is what the generator and HSAD know about);
              neck and heads stay FP and frozen;
    model     every Linear / Conv2d and attention matmul of the whole detector / segmentor (the RepQ-ViT
              setting, for comparison); calibrated with one full inference on synthetic images.

Loss per step (`train_dense_qat`), on a batch of synthetic images only:
    hsad_scale * L_HSAD(backbone per-head A·V, teacher vs student)          (cfg.distill, as classification)
  + w_task * L_task(teacher vs student outputs)                           (cfg.task.distill, mimiq.dense.losses)
The loop checkpoints `ckpt_last.pt` after every epoch and resumes from it, re-seeding from (seed, epoch).
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import Tensor, nn
from tqdm import tqdm

from mimiq.dense.losses import feature_distill_loss, objectness_distill_loss, pixel_kd_loss
from mimiq.dense.synth import BackboneInfo
from mimiq.distill.losses import hsad_loss
from mimiq.distill.qat import build_optimizer, build_scheduler, resume_from_checkpoint
from mimiq.quant import Manifest, QuantSpec, build_manifest, calibrate, quantize_model, quantizers
from mimiq.tracking import Tracker
from mimiq.utils.hooks import capture
from mimiq.utils.io import atomic_torch_save
from mimiq.utils.seed import autocast

QUANTIZE_SCOPES = ("backbone", "model")


def task_outputs(model: nn.Module, x: Tensor, task: str) -> dict[str, list[Tensor] | Tensor]:
    """What the task-level distillation compares, for normalised images x (B, 3, H, W).

    Returns:
        detection: {"feats": L neck maps (B, C, H_l, W_l), "objectness": L RPN maps (B, A, H_l, W_l)};
        segmentation: {"logits": (B, K, H/4, W/4) decode-head class logits}.
    """
    feats = model.extract_feat(x)
    if task == "detection":
        objectness, _ = model.rpn_head(feats)
        return {"feats": list(feats), "objectness": list(objectness)}
    return {"logits": model.decode_head(feats)}


def task_loss(s_out: dict, t_out: dict, task: str, temperature: float) -> Tensor:
    if task == "detection":
        return feature_distill_loss(s_out["feats"], t_out["feats"]) + objectness_distill_loss(
            s_out["objectness"], t_out["objectness"]
        )
    return pixel_kd_loss(s_out["logits"], t_out["logits"], temperature)


def synthetic_data_samples(task: str, n: int, hw: tuple[int, int]) -> list:
    """n mmdet `DetDataSample` / mmseg `SegDataSample` with the metainfo of an un-resized (H, W) image."""
    h, w = hw
    meta = {"img_shape": (h, w), "ori_shape": (h, w), "pad_shape": (h, w), "batch_input_shape": (h, w)}
    if task == "detection":
        from mmdet.structures import DetDataSample

        return [DetDataSample(metainfo={**meta, "scale_factor": (1.0, 1.0)}) for _ in range(n)]
    from mmseg.structures import SegDataSample

    return [SegDataSample(metainfo={**meta, "padding_size": [0, 0, 0, 0]}) for _ in range(n)]


@torch.no_grad()
def calibrate_dense(student: nn.Module, batch: Tensor, task: str, scope: str) -> int:
    """Initialises the activation quantizers from one no-grad eval forward of `batch` (B, 3, H, W).

    backbone scope: the backbone's forward; model scope: a full `predict` (RPN, RoI / decode heads included).
    Returns the number of initialised quantizers.
    """
    if scope == "backbone":
        return calibrate(student.backbone, batch)
    was_training = student.training
    student.eval()
    try:
        student.predict(batch, synthetic_data_samples(task, len(batch), tuple(batch.shape[-2:])))
    finally:
        student.train(was_training)
    return sum(q._ready for q in quantizers(student))


def build_dense_student(
    teacher: nn.Module, spec: QuantSpec, calib_images: Tensor, task: str, scope: str, out_dir: Path | None = None
) -> tuple[nn.Module, Manifest]:
    """(student, manifest): the teacher's deep copy, fake-quantized over `scope`, quantizers initialised on
    calib_images (B, 3, H, W); writes `out_dir/manifest.txt` if given. Only the quantized part trains."""
    if scope not in QUANTIZE_SCOPES:
        raise ValueError(f"task.quantize must be one of {', '.join(QUANTIZE_SCOPES)}, got {scope!r}")
    student = copy.deepcopy(teacher)
    target = student.backbone if scope == "backbone" else student
    for p in student.parameters():
        p.requires_grad_(False)
    for p in target.parameters():
        p.requires_grad_(True)
    quantize_model(target, spec)
    calibrate_dense(student, calib_images, task, scope)
    manifest = build_manifest(target)
    if out_dir is not None:
        (Path(out_dir) / "manifest.txt").write_text(str(manifest) + "\n")
    return student, manifest


def train_dense_qat(
    student: nn.Module,
    teacher: nn.Module,
    images: Tensor,
    cfg: DictConfig,
    device: torch.device,
    out_dir: Path,
    tracker: Tracker | None = None,
) -> dict:
    """QAT of the dense student on synthetic images (N, 3, H, W); returns {"history", "time_qat_s",
    "resumed_from"}. Evaluation (COCO / ADE20K) is the caller's, once, after training."""
    qcfg, dcfg, tcfg = cfg.qat, cfg.distill, cfg.task
    tracker = tracker or Tracker()
    drop_cls = BackboneInfo.of(teacher.backbone).drop_cls
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    params = [p for p in student.parameters() if p.requires_grad]
    opt = build_optimizer(params, cfg.optim)
    sched = build_scheduler(opt, cfg.optim, qcfg.epochs)
    ckpt_path = Path(out_dir) / "ckpt_last.pt"
    start_epoch, history, elapsed, resumed_from = 0, [], 0.0, None
    if ckpt_path.is_file():
        st = resume_from_checkpoint(ckpt_path, student, opt, sched, qcfg.epochs, "dense QAT")
        start_epoch, history, elapsed = st["epoch"], st["history"], st["time_qat_s"]
        resumed_from = start_epoch
    n = len(images)
    batch = min(qcfg.batch_size, n)
    steps = n // batch if qcfg.drop_last else -(-n // batch)
    for epoch in range(start_epoch, qcfg.epochs):
        t0 = time.time()
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)  # order + flips from (seed, epoch)
        order = torch.randperm(n, generator=gen)
        student.eval()  # as the classification QAT: dropout / drop-path off
        do_step = epoch >= qcfg.no_step_epochs
        sums: dict[str, float] = {}
        for i in tqdm(range(steps), desc=f"dense QAT epoch {epoch + 1}/{qcfg.epochs}", leave=False, mininterval=1):
            x = images[order[i * batch : (i + 1) * batch]]
            if torch.rand((), generator=gen).item() < 0.5:
                x = x.flip(3)  # the only augmentation: boxes / masks are not involved, any flip is label-free
            x = x.to(device)
            with autocast(cfg.precision, device):
                with torch.no_grad(), capture(teacher.backbone, "matmul_av") as t_av:
                    t_out = task_outputs(teacher, x, tcfg.name)
                with capture(student.backbone, "matmul_av") as s_av:
                    s_out = task_outputs(student, x, tcfg.name)
            terms = {}
            if dcfg.hsad_scale:
                terms["hsad"] = dcfg.hsad_scale * hsad_loss(t_av, s_av, drop_cls=drop_cls, distance=dcfg.distance)
            if tcfg.distill.w_task:
                terms["task"] = tcfg.distill.w_task * task_loss(s_out, t_out, tcfg.name, tcfg.distill.temperature)
            if not terms:
                raise ValueError("dense QAT: distill.hsad_scale and task.distill.w_task are both 0")
            terms["total"] = sum(terms.values())
            opt.zero_grad(set_to_none=True)
            terms["total"].backward()
            if do_step:
                opt.step()
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v.item()
        sched.step()
        elapsed += time.time() - t0
        row = {"epoch": epoch + 1, "lr": opt.param_groups[0]["lr"], **{f"loss_{k}": v / steps for k, v in sums.items()}}
        history.append(row)
        tracker.log({f"qat/{k}": v for k, v in row.items()}, step=epoch + 1)
        state = {
            "student": student.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "epoch": epoch + 1,
            "history": history,
            "time_qat_s": elapsed,
        }
        atomic_torch_save(state, ckpt_path)
    return {"history": history, "time_qat_s": elapsed, "resumed_from": resumed_from}
