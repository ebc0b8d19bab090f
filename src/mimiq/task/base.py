"""The task adapter's interface (`Task`) and what its teacher stage hands on (`TeacherStage`); the adapters are
`mimiq.task.classification` and `mimiq.task.dense`, built by `mimiq.task.make_task`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch
from omegaconf import DictConfig
from torch import Tensor, nn
from torch.utils.data import DataLoader

from mimiq.quant import Manifest, QuantSpec
from mimiq.quant.convert import build_student
from mimiq.utils import dist
from mimiq.utils.seed import resolve_device

PRECISIONS = ("fp32", "bf16")


class TeacherStage(NamedTuple):
    teacher: nn.Module  # FP, frozen, eval, attention swapped, on the device
    info: dict  # how it was obtained: {"source": "cache" | "trained" | "memo" | "checkpoint", ...}
    data_config: dict  # its input: {"input_size": (3, H, W), "mean": [3], "std": [3]} (mm models: 0-255 units)
    eval_loader: DataLoader | None  # classification's eval split (the dense tasks evaluate through mm)
    fp: dict  # the teacher's evaluation: {"top1", "n", ...} or the dense metrics


class Task:
    """The interface; `Classification` and `Dense` implement it. Built from the run config."""

    name: str
    uses_ce: bool  # the generator's CE term applies (the teacher has a classifier head)
    evaluates_during_qat: bool  # evaluate the student before QAT (PTQ) and every `qat.eval_every` epochs
    pixel_max: int = 1  # the pixel range of `data_config`'s mean / std: 0-1 (timm), 0-255 (mm)

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg

    def validate(self) -> QuantSpec:
        """Every check that can fail on bad input, before any compute; returns the quantization spec. The task's
        own checks (`check`) first, then those of every task: device, precision, the QAT loop's numbers and the
        split of its global batch over the processes."""
        self.check()
        cfg = self.cfg
        resolve_device(cfg.device)
        if cfg.precision not in PRECISIONS:
            raise ValueError(f"precision must be fp32 or bf16, got {cfg.precision!r}")
        if cfg.qat.epochs < 1 or cfg.qat.batch_size < 1:
            raise ValueError("qat.epochs and qat.batch_size must be >= 1")
        if self.evaluates_during_qat and cfg.qat.eval_every < 1:
            raise ValueError("qat.eval_every must be >= 1")
        dist.check_global_batch(cfg.generator.num_images, cfg.qat, dist.world_size())
        return QuantSpec.from_cfg(cfg.quant)

    def check(self) -> None:
        """The task's own input checks (model, data, optional packages), run first by `validate`."""
        raise NotImplementedError

    def teacher_stage(self, device: torch.device, memo: dict | None = None) -> TeacherStage:
        raise NotImplementedError

    def synthesize(self, stage: TeacherStage, device: torch.device, out_dir: Path):
        """The synthetic set (`mimiq.synth.generate.SyntheticSet`: images (N, 3, H, W), labels (N,), meta)."""
        raise NotImplementedError

    def backbone(self, model: nn.Module) -> nn.Module:
        """The module whose attention is captured (generation, HSAD)."""
        raise NotImplementedError

    def quantized(self, model: nn.Module) -> nn.Module:
        """The part of the student that is fake-quantized and trained."""
        return self.backbone(model)

    def calibrate(self, part: nn.Module, batch: Tensor) -> object:
        """Initialises the activation quantizers of `part` (`quantized(student)`) from batch (B, 3, H, W)."""
        raise NotImplementedError

    def build_student(
        self, teacher: nn.Module, spec: QuantSpec, calib: Tensor, out_dir: Path | None = None
    ) -> tuple[nn.Module, Manifest]:
        return build_student(teacher, spec, calib, out_dir, self.quantized, self.calibrate)

    def drop_cls(self, teacher: nn.Module) -> bool:
        """Token 0 of the attention is a CLS token (ViT), dropped by HSAD."""
        raise NotImplementedError

    def augment(self, teacher: nn.Module, size: int) -> Callable[[Tensor], Tensor]:
        """The QAT augmentation of a (B, 3, H, W) batch of `size` px images in the teacher's normalisation,
        drawing from the global RNG."""
        raise NotImplementedError

    def qat_evaluator(self, stage: TeacherStage, device: torch.device) -> Callable[[nn.Module], float] | None:
        """What QAT evaluates every `qat.eval_every` epochs: student -> top-1 (%); None: nothing during QAT."""
        return None

    def outputs(self, model: nn.Module, x: Tensor):
        """What the output distillation compares, for images x (B, 3, H, W)."""
        raise NotImplementedError

    def distill_terms(
        self, s_out, t_out, labels: Tensor, s_av: list[Tensor], t_av: list[Tensor], drop_cls: bool
    ) -> dict[str, Tensor]:
        """The weighted loss terms and their sum under "total"."""
        raise NotImplementedError

    def evaluate(self, model: nn.Module, stage: TeacherStage, device: torch.device) -> dict:
        raise NotImplementedError

    def format(self, scores: dict) -> str:
        """The task's scores for the log, e.g. 'top-1 71.20 %' or 'box AP 38.10, mask AP 35.02'."""
        raise NotImplementedError

    def summary(self, stage: TeacherStage, final: dict, qat: dict, ptq: dict | None) -> str:
        """The run's result for the log: the student's scores against PTQ and FP, and the QAT time."""
        raise NotImplementedError

    def student_record(self, run_config: dict, final: dict) -> dict:
        """What student.pt holds besides the student's state and the quantization config."""
        raise NotImplementedError

    def metrics(self, stage: TeacherStage, synth, final: dict, qat: dict, ptq: dict | None) -> dict:
        """The task's own entries of metrics.json (scores, identity of the model and data)."""
        raise NotImplementedError
