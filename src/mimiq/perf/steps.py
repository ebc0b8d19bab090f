"""One-step callables over the functions the loops call, and the baselines of the ratios.

The generation steps call `mimiq.synth.<generator>.<generator>_step` and the QAT step calls
`mimiq.distill.qat.qat_step`, looked up in their modules at every call: what is timed is what `mimiq_batch`,
`psaq_batch`, `psaq_v2_batch` and `train_qat` run (tests/test_speed_scripts.py patches them and counts). A
compiled variant goes through the same switch as a run (`compile=on`: `build_context` compiles the teacher;
QAT compiles both models with `mimiq.utils.compile.compiled`, as `train_qat`).

Models are random-init (`model.train_teacher=false`, no hub weights): a step costs the same with any weights.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from mimiq.distill import qat as distill_qat
from mimiq.models.attention import swap_attention
from mimiq.models.registry import create_model, model_data_config
from mimiq.quant import QuantSpec
from mimiq.quant.convert import build_student
from mimiq.synth import mimiq as synth_mimiq
from mimiq.synth import psaq as synth_psaq
from mimiq.synth import psaq_v2 as synth_psaq_v2
from mimiq.synth.core import build_context
from mimiq.task.classification import Classification
from mimiq.utils.compile import compiled
from mimiq.utils.seed import autocast

# generator -> (its module, its batch-state constructor, its step function), names looked up at call time
GENERATION = {
    "mimiq": (synth_mimiq, "mimiq_init", "mimiq_step"),
    "psaq": (synth_psaq, "psaq_init", "psaq_step"),
    "psaq_v2": (synth_psaq_v2, "psaq_v2_init", "psaq_v2_step"),
}


@dataclass
class Models:
    """The models and the QAT batch the steps share."""

    cfg: DictConfig  # the composed run config (model, generator, qat, optim, distill, quant, precision)
    device: torch.device
    teacher: nn.Module  # FP, frozen, eval, our attention modules
    student: nn.Module  # fake-quantized copy (cfg.quant / bits), activation quantizers calibrated
    data_config: dict  # the teacher's mean, std, input_size
    x: Tensor  # (qat.batch_size, 3, H, W) a QAT batch on the device
    y: Tensor  # (qat.batch_size,) its labels


def build_models(cfg: DictConfig, device: torch.device, seed: int = 0) -> Models:
    """Random-init teacher (`cfg.model`, `cfg.data.num_classes` classes), its student, one QAT batch."""
    torch.manual_seed(seed)
    teacher = create_model(cfg.model, num_classes=cfg.data.num_classes).to(device).eval().requires_grad_(False)
    swap_attention(teacher)
    data_config = model_data_config(teacher)
    shape = tuple(data_config["input_size"])
    calib = torch.randn(cfg.qat.calib_size, *shape, device=device)
    student, _ = build_student(teacher, QuantSpec.from_cfg(cfg.quant), calib)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(cfg.qat.batch_size, *shape, generator=gen).to(device)
    y = torch.randint(0, cfg.data.num_classes, (cfg.qat.batch_size,), generator=gen).to(device)
    return Models(cfg, device, teacher, student, data_config, x, y)


def _run_cfg(cfg: DictConfig, gen_cfg: DictConfig, compile: bool, precision: str) -> DictConfig:
    """`cfg` with the generator node `gen_cfg`, `compile` on / off and `precision` (a copy)."""
    out = copy.deepcopy(cfg)
    OmegaConf.set_struct(out, False)
    out.generator = copy.deepcopy(gen_cfg)
    out.compile, out.precision = "on" if compile else "off", precision
    return out


def generation(
    m: Models, gen_cfg: DictConfig, batch: int, compile: bool, precision: str = "fp32"
) -> Callable[[], None]:
    """One iteration of the generator `gen_cfg` (its `<name>_step`) per call, on a batch of `batch` images from its
    `<name>_init`; the iteration index runs through the generator's schedule and wraps around."""
    if gen_cfg.name not in GENERATION:
        raise ValueError(f"generator {gen_cfg.name!r} has no step to time; expected one of {', '.join(GENERATION)}")
    module, init, step = GENERATION[gen_cfg.name]
    ctx = build_context(m.teacher, _run_cfg(m.cfg, gen_cfg, compile, precision), m.device, m.data_config)
    gen = torch.Generator().manual_seed(0)
    state = getattr(module, init)(ctx, batch, gen)
    it = [0]

    def run() -> None:
        getattr(module, step)(ctx, state, it[0] % ctx.gen_cfg.iterations, gen)
        it[0] += 1

    return run


def bare(m: Models, batch: int, compile: bool, precision: str = "fp32") -> Callable[[], None]:
    """The teacher's bare forward + CE + backward to the pixels of `batch` images (no capture, no step)."""
    teacher_fn = compiled(m.teacher) if compile else m.teacher
    x = torch.randn(batch, *m.data_config["input_size"], device=m.device).requires_grad_()
    y = torch.randint(0, m.cfg.data.num_classes, (batch,), device=m.device)

    def run() -> None:
        x.grad = None
        with autocast(precision, m.device):
            logits = teacher_fn(x).float()
        F.cross_entropy(logits, y).backward()

    return run


def _trainable_copy(teacher: nn.Module) -> nn.Module:
    """An FP copy of the teacher with trainable weights, in eval mode (as the QAT student trains)."""
    return copy.deepcopy(teacher).eval().requires_grad_(True)


def qat(m: Models, compile: bool, precision: str = "fp32", fp: bool = False) -> Callable[[], None]:
    """`qat_step` on the QAT batch: the quantized student (a copy: each variant trains its own), SGD step; with
    `fp` an FP trainable copy of the teacher and no optimiser step (the FP passes the QAT step adds cost to)."""
    student = _trainable_copy(m.teacher) if fp else copy.deepcopy(m.student)
    opt = distill_qat.build_optimizer(distill_qat.param_groups(student, m.cfg.optim), m.cfg.optim)
    model, teacher = (compiled(student), compiled(m.teacher)) if compile else (student, m.teacher)
    task = Classification(m.cfg)
    drop_cls = task.drop_cls(m.teacher)

    def run() -> None:
        distill_qat.qat_step(model, teacher, task, m.x, m.y, opt, drop_cls, precision, step=not fp)

    return run


def finetune(m: Models, compile: bool, precision: str = "fp32") -> Callable[[], None]:
    """FP fine-tuning of a trainable copy of the teacher on the QAT batch: forward, CE, backward, SGD step."""
    model = _trainable_copy(m.teacher)
    opt = distill_qat.build_optimizer(list(model.parameters()), m.cfg.optim)
    run_model = compiled(model) if compile else model

    def run() -> None:
        with autocast(precision, m.device):
            logits = run_model(m.x).float()
        loss = F.cross_entropy(logits, m.y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return run
