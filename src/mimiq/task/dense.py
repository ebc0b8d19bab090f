"""The dense tasks (docs/dense.md): COCO detection / instance segmentation (mmdet 3.3) and ADE20K semantic segmentation
(mmseg 1.2.2), with data-free quantized ViT backbones; the mm glue itself is `mimiq.dense`.

    teacher     an upstream mm config + overrides, loaded strictly from `task.checkpoint`, attention swapped
    synthetic   `task.synth.source`: through the backbone (`mimiq.dense.synth`: inter-head + TV, no CE) or the
                `model` ImageNet classifier's set, re-normalised
    student     `task.quantize`: the backbone only (the data-free default; neck and heads stay FP and frozen) or
                the whole detector / segmentor (calibrated with one full inference on synthetic images)
    QAT loss    hsad_scale * L_HSAD(backbone per-head A·V) + w_task * L_task: detection the FPN features and the
                RPN objectness, segmentation the decode head's pixel logits (`mimiq.dense.losses`); a random
                horizontal flip is the only augmentation (no boxes or masks are involved)
    evaluation  mmdet's / mmseg's own test pipeline and metric, once after QAT

Everything that can fail on bad input (missing extra, data root, checkpoint, bad option) fails in `validate`.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from pathlib import Path

import torch
from torch import Tensor, nn

from mimiq.distill.losses import hsad_loss, weighted_terms
from mimiq.models.attention import swap_attention
from mimiq.models.registry import model_data_config
from mimiq.models.teacher import load_or_train_teacher
from mimiq.quant import Manifest, QuantSpec, calibrate, quantizers
from mimiq.synth.generate import SyntheticSet, synthesize_or_load
from mimiq.task.base import Task, TeacherStage
from mimiq.utils import dist

log = logging.getLogger(__name__)

PACKAGES = {"detection": ("mmengine", "mmcv", "mmdet"), "segmentation": ("mmengine", "mmcv", "mmseg")}
SOURCES = ("backbone", "classifier")
QUANTIZE_SCOPES = ("backbone", "model")
SCORE_NAMES = {"box_ap": "box AP", "mask_ap": "mask AP", "miou": "mIoU"}


def check_mm_installed(task: str) -> None:
    missing = [p for p in PACKAGES[task] if importlib.util.find_spec(p) is None]
    if missing:
        raise ImportError(
            f"task={task} needs the optional mm extra ({', '.join(missing)} not installed): run `make install-mm`"
        )


def check_dense_data(task) -> None:
    """The data root has the layout the task's test split reads (docs/dense.md, "Data and weights")."""
    if not task.data_root:
        raise ValueError(
            f"task.data_root is not set: point it at the {task.dataset} folder (docs/dense.md: 'Data and weights')"
        )
    root = Path(task.data_root)
    if not root.is_dir():
        raise FileNotFoundError(f"task.data_root: folder {root} does not exist")
    if task.name == "detection":
        need = {
            "task.ann_file": (root / task.ann_file, "file"),
            "task.data_prefix.img": (root / task.data_prefix.img, "dir"),
        }
    else:
        need = {f"task.data_prefix.{k}": (root / v, "dir") for k, v in task.data_prefix.items()}
    for field, (path, kind) in need.items():
        ok = path.is_file() if kind == "file" else path.is_dir() and any(path.iterdir())
        if not ok:
            raise FileNotFoundError(f"{field}: {path} is missing or empty ({task.dataset} layout under task.data_root)")


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


def synthetic_data_samples(task: str, n: int, hw: tuple[int, int]) -> list:
    """n mmdet `DetDataSample` / mmseg `SegDataSample` with the metainfo of an un-resized (H, W) image."""
    h, w = hw
    meta = {"img_shape": (h, w), "ori_shape": (h, w), "pad_shape": (h, w), "batch_input_shape": (h, w)}
    if task == "detection":
        from mmdet.structures import DetDataSample

        return [DetDataSample(metainfo={**meta, "scale_factor": (1.0, 1.0)}) for _ in range(n)]
    from mmseg.structures import SegDataSample

    return [SegDataSample(metainfo={**meta, "padding_size": [0, 0, 0, 0]}) for _ in range(n)]


def synthesize_from_classifier(
    cfg, device: torch.device, mean: Tensor, std: Tensor, out_dir: Path | None = None
) -> SyntheticSet:
    """task.synth.source=classifier: the classification set of `cfg.generator` from the `cfg.model` ImageNet
    classifier (cached as in Tab. 2), converted from the classifier's normalisation (0-1 units) to the dense
    model's (mean, std: (1, 3, 1, 1), 0-255 units)."""
    classifier, _ = load_or_train_teacher(cfg, device)
    swap_attention(classifier)
    data_config = model_data_config(classifier)
    t0 = time.time()
    synth = synthesize_or_load(classifier, cfg, device, out_dir)
    c_mean, c_std = (torch.tensor(data_config[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    pixels = (synth.images * c_std + c_mean) * 255  # (N, 3, H, W) RGB in 0-255
    images = (pixels - mean.cpu()) / std.cpu()
    meta = {k: v for k, v in synth.meta.items() if k not in ("loss_curves", "shard_time_s")}
    meta.update(source="classifier", classifier=cfg.model.name, time_generate_s=time.time() - t0)
    return SyntheticSet(images, synth.labels, meta)


def random_flip(x: Tensor) -> Tensor:
    """The dense QAT augmentation: a horizontal flip of the whole batch with probability 1/2 (global RNG)."""
    return x.flip(3) if torch.rand(()).item() < 0.5 else x


class Dense(Task):
    """Detection / segmentation with an mm model; `outputs` and `task_loss` are the subclasses'."""

    uses_ce = False  # the backbone has no classifier head: the generator's CE term does not exist
    evaluates_during_qat = False  # a COCO / ADE20K evaluation is long: once, after QAT
    pixel_max = 255

    @property
    def scope(self) -> str:
        return self.cfg.task.quantize

    def check(self) -> None:
        cfg, task = self.cfg, self.cfg.task
        check_mm_installed(task.name)
        if task.quantize not in QUANTIZE_SCOPES:
            raise ValueError(f"task.quantize must be backbone or model, got {task.quantize!r}")
        if task.synth.source not in SOURCES:
            raise ValueError(f"task.synth.source must be one of {', '.join(SOURCES)}, got {task.synth.source!r}")
        if task.checkpoint:
            if not Path(task.checkpoint).is_file():
                raise FileNotFoundError(f"task.checkpoint: file {task.checkpoint} does not exist")
        elif not task.random_init:
            raise ValueError("task.checkpoint is not set: the FP detector / segmentor weights are required")
        check_dense_data(task)
        from mimiq.dense.model import resolve_config_path

        resolve_config_path(task.mm_config)
        if task.synth.source == "classifier":
            from mimiq.models import check_model_cfg

            check_model_cfg(cfg.model)
        if dist.world_size() > 1:
            raise ValueError(f"task={task.name} runs in one process (no DDP); got {dist.world_size()}")

    def teacher_stage(self, device: torch.device, memo: dict | None = None) -> TeacherStage:
        """The FP detector / segmentor (strict load), attention swapped, frozen, and its COCO / ADE20K metric."""
        from mimiq.dense.attention import swap_mm_attention
        from mimiq.dense.model import build_dense_model, build_mm_config, data_preprocessor_stats

        task = self.cfg.task
        self.mm_cfg = build_mm_config(task)
        teacher, weights = build_dense_model(task, self.mm_cfg)  # FP, eval, strict load
        swaps = swap_mm_attention(teacher)  # our attention (FP-exact): hooks for generation and HSAD
        teacher.to(device)
        for p in teacher.parameters():
            p.requires_grad_(False)
        fp = self.evaluate(teacher, None, device)
        log.info(
            f"FP {task.model_name} ({weights} weights, {swaps} attention modules swapped): "
            f"{self.format(fp)} on {fp['n']} {task.dataset} images"
        )
        mean, std = data_preprocessor_stats(teacher)
        data_config = {"input_size": (3, *task.synth.image_size), "mean": mean, "std": std}  # 0-255 units
        return TeacherStage(teacher, {"source": "checkpoint", "weights": weights}, data_config, None, fp)

    def synthesize(self, stage: TeacherStage, device: torch.device, out_dir: Path) -> SyntheticSet:
        from mimiq.dense.synth import synthesize_from_backbone

        mean, std = (torch.tensor(stage.data_config[k], device=device).view(1, 3, 1, 1) for k in ("mean", "std"))
        if self.cfg.task.synth.source == "backbone":
            return synthesize_from_backbone(stage.teacher.backbone, self.cfg, mean, std)
        return synthesize_from_classifier(self.cfg, device, mean, std, out_dir)

    def backbone(self, model: nn.Module) -> nn.Module:
        return model.backbone

    def quantized(self, model: nn.Module) -> nn.Module:
        return model.backbone if self.scope == "backbone" else model

    @torch.no_grad()
    def calibrate(self, part: nn.Module, batch: Tensor) -> int:
        """backbone scope: the backbone's forward; model scope: a full `predict` (RPN, RoI / decode heads)."""
        if self.scope == "backbone":
            return calibrate(part, batch)
        was_training = part.training
        part.eval()
        try:
            part.predict(batch, synthetic_data_samples(self.name, len(batch), tuple(batch.shape[-2:])))
        finally:
            part.train(was_training)
        return sum(q._ready for q in quantizers(part))

    def drop_cls(self, teacher: nn.Module) -> bool:
        from mimiq.dense.synth import BackboneInfo

        return BackboneInfo.of(teacher.backbone).drop_cls

    def augment(self, teacher: nn.Module, size: int):
        return random_flip

    def outputs(self, model: nn.Module, x: Tensor) -> dict:
        return task_outputs(model, x, self.name)

    def task_loss(self, s_out: dict, t_out: dict) -> Tensor:
        raise NotImplementedError

    def distill_terms(self, s_out, t_out, labels, s_av, t_av, drop_cls) -> dict[str, Tensor]:
        dcfg, tcfg = self.cfg.distill, self.cfg.task.distill
        return weighted_terms(
            {
                "hsad": (dcfg.hsad_scale, lambda: hsad_loss(t_av, s_av, drop_cls=drop_cls, distance=dcfg.distance)),
                "task": (tcfg.w_task, lambda: self.task_loss(s_out, t_out)),
            },
            "distill.hsad_scale, task.distill.w_task",
        )

    def evaluate(self, model: nn.Module, stage: TeacherStage | None, device: torch.device) -> dict:
        from mimiq.dense.evaluate import evaluate_dense

        return evaluate_dense(model, self.mm_cfg, self.name, device, self.cfg.precision)

    def format(self, scores: dict) -> str:
        return ", ".join(f"{label} {scores[k]:.2f}" for k, label in SCORE_NAMES.items() if k in scores)

    def summary(self, stage: TeacherStage, final: dict, qat: dict, ptq: dict | None) -> str:
        return f"{self.format(final)} (FP {self.format(stage.fp)}), QAT {qat['time_qat_s']:.0f} s"

    def student_record(self, run_config: dict, final: dict) -> dict:
        return {"task": run_config["task"]}

    def metrics(self, stage: TeacherStage, synth: SyntheticSet, final: dict, qat: dict, ptq: dict | None) -> dict:
        task, fp = self.cfg.task, stage.fp
        return {
            "task": task.name,
            "model": task.model_name,
            "backbone": task.backbone,
            "data": task.dataset,
            "synth_source": task.synth.source,
            "quantize": task.quantize,
            **{k: v for k, v in final.items() if k not in ("n", "time_s")},
            **{f"fp_{k}": v for k, v in fp.items() if k not in ("n", "time_s")},
            "eval_images": final["n"],
            "weights": stage.info["weights"],
            "time_fp_eval_s": fp["time_s"],
            "time_eval_s": final["time_s"],
        }


class Detection(Dense):
    name = "detection"

    def task_loss(self, s_out: dict, t_out: dict) -> Tensor:
        from mimiq.dense.losses import feature_distill_loss, objectness_distill_loss

        return feature_distill_loss(s_out["feats"], t_out["feats"]) + objectness_distill_loss(
            s_out["objectness"], t_out["objectness"]
        )


class Segmentation(Dense):
    name = "segmentation"

    def task_loss(self, s_out: dict, t_out: dict) -> Tensor:
        from mimiq.dense.losses import pixel_kd_loss

        return pixel_kd_loss(s_out["logits"], t_out["logits"], self.cfg.task.distill.temperature)


def build_dense_student(
    teacher: nn.Module, spec: QuantSpec, calib: Tensor, task: str, scope: str, out_dir: Path | None = None
) -> tuple[nn.Module, Manifest]:
    """`Task.build_student` of the dense `task` with `task.quantize=scope`, without a run config."""
    from omegaconf import OmegaConf

    if scope not in QUANTIZE_SCOPES:
        raise ValueError(f"task.quantize must be one of {', '.join(QUANTIZE_SCOPES)}, got {scope!r}")
    cfg = OmegaConf.create({"task": {"name": task, "quantize": scope}})
    return (Detection if task == "detection" else Segmentation)(cfg).build_student(teacher, spec, calib, out_dir)
