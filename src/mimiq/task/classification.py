"""The classification task: a timm ViT / DeiT / Swin classifier on ImageNet or the embedded mini task.

The whole model is quantized and its attention captured; the output distillation is logit KD (+ CE to the
generation labels), the generator's CE term applies, and the student's top-1 is evaluated during QAT.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import Tensor, nn

from mimiq.data import build_dataset, build_loader, check_data_cfg
from mimiq.distill.augment import SyntheticAugment, augments
from mimiq.distill.losses import distill_loss
from mimiq.evaluate.classification import evaluate
from mimiq.models import check_model_cfg, model_data_config
from mimiq.models.attention import swap_attention
from mimiq.models.teacher import load_or_train_teacher, teacher_identity
from mimiq.quant import calibrate
from mimiq.synth.generate import SyntheticSet, synthesize_or_load
from mimiq.task.base import Task, TeacherStage
from mimiq.utils import dist
from mimiq.utils.io import config_hash

log = logging.getLogger(__name__)


def teacher_stage(cfg, device: torch.device, memo: dict | None = None) -> TeacherStage:
    """Stage 0: the FP teacher (trained and cached, or loaded), attention swapped, and its eval top-1.

    `memo`, if given, keeps the stage between calls in one process (scripts/bench.py), keyed by the teacher's
    identity, the data config, device and precision; a stage taken from it reports `info["source"] == "memo"`.
    """
    key = (
        teacher_identity(cfg),
        config_hash(OmegaConf.to_container(cfg.data, resolve=True)),
        str(device),
        cfg.precision,
    )
    if memo is not None and key in memo:
        log.info(f"Reusing teacher {cfg.model.name} from this process (FP top-1 {memo[key].fp['top1']:.2f} %)")
        return memo[key]._replace(info={**memo[key].info, "source": "memo"})
    with dist.main_first():  # rank 0 trains (or fetches) and caches the teacher and the data; the others read them
        teacher, teacher_info = load_or_train_teacher(cfg, device)  # FP, frozen
        if teacher_info["source"] == "cache":
            log.info(f"Reusing cached teacher {teacher_info['path']}")
        elif teacher_info["source"] == "trained":
            log.info(f"Trained teacher in {teacher_info['train_time_s']:.0f} s -> {teacher_info['path']}")
        swap_attention(teacher)  # our attention modules (FP-exact): hooks for generation and HSAD
        data_config = model_data_config(teacher)
        eval_set = build_dataset(cfg.data, "test", data_config, cfg.paths.cache_dir)
    eval_set = dist.shard_dataset(eval_set)  # DDP: each rank evaluates its share, counts are summed
    eval_loader = build_loader(eval_set, cfg.data.batch_size, shuffle=False, num_workers=cfg.data.num_workers)
    fp = evaluate(teacher, eval_loader, device, cfg.precision)
    log.info(f"Teacher {cfg.model.name} FP top-1: {fp['top1']:.2f} % ({fp['n']} {cfg.data.name} eval images)")
    stage = TeacherStage(teacher, teacher_info, data_config, eval_loader, fp)
    if memo is not None:
        memo[key] = stage
    return stage


class Classification(Task):
    name = "classification"
    uses_ce = True
    evaluates_during_qat = True  # top-1 every `qat.eval_every` epochs (and a PTQ top-1 before QAT)

    def check(self) -> None:
        check_model_cfg(self.cfg.model)
        check_data_cfg(self.cfg.data)

    def teacher_stage(self, device: torch.device, memo: dict | None = None) -> TeacherStage:
        return teacher_stage(self.cfg, device, memo)

    def synthesize(self, stage: TeacherStage, device: torch.device, out_dir: Path) -> SyntheticSet:
        return synthesize_or_load(stage.teacher, self.cfg, device, out_dir)

    def backbone(self, model: nn.Module) -> nn.Module:
        return model

    def calibrate(self, part: nn.Module, batch: Tensor) -> int:
        return calibrate(part, batch)

    def drop_cls(self, teacher: nn.Module) -> bool:
        return self.cfg.model.family == "vit"

    def augment(self, teacher: nn.Module, size: int) -> Callable[[Tensor], Tensor]:
        if not augments(self.cfg):  # off, or a synthetic set where `qat.augment.synthetic` is false
            why = "qat.augment.enabled=false" if not self.cfg.qat.augment.enabled else "qat.augment.synthetic=false"
            log.info(f"QAT augmentation off ({why}; generator={self.cfg.generator.name})")
            return lambda x: x
        data_config = model_data_config(teacher)  # the teacher's normalisation (as its stage's data_config)
        return SyntheticAugment(self.cfg.qat.augment, data_config["mean"], data_config["std"], size)

    def qat_evaluator(self, stage: TeacherStage, device: torch.device) -> Callable[[nn.Module], float]:
        return lambda student: evaluate(student, stage.eval_loader, device, self.cfg.precision)["top1"]

    def outputs(self, model: nn.Module, x: Tensor) -> Tensor:
        return model(x)  # (B, classes) logits

    def distill_terms(self, s_out, t_out, labels, s_av, t_av, drop_cls) -> dict[str, Tensor]:
        return distill_loss(s_out, t_out, labels, s_av, t_av, self.cfg.distill, drop_cls)

    def evaluate(self, model: nn.Module, stage: TeacherStage, device: torch.device) -> dict:
        return evaluate(model, stage.eval_loader, device, self.cfg.precision)

    def format(self, scores: dict) -> str:
        return f"top-1 {scores['top1']:.2f} %"

    def summary(self, stage: TeacherStage, final: dict, qat: dict, ptq: dict | None) -> str:
        return (
            f"top-1 {qat['top1']:.2f} % final epoch (best epoch {qat['top1_best']:.2f} %, PTQ {ptq['top1']:.2f} %, "
            f"FP {stage.fp['top1']:.2f} %), {qat['steps']} QAT steps in {qat['time_qat_s']:.0f} s"
        )

    def student_record(self, run_config: dict, final: dict) -> dict:
        return {"model": run_config["model"], "top1": final["top1"]}

    def metrics(self, stage: TeacherStage, synth: SyntheticSet, final: dict, qat: dict, ptq: dict | None) -> dict:
        cfg, info = self.cfg, stage.info
        return {
            "model": cfg.model.name,
            "data": cfg.data.name,
            "fp_top1": stage.fp["top1"],
            "top1": qat["top1"],
            "top1_best": qat["top1_best"],
            "ptq_top1": ptq["top1"],
            "teacher_source": info["source"],
            "time_teacher_s": info.get("train_time_s") if info["source"] == "trained" else 0.0,
        }
