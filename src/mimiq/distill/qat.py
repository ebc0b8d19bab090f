"""QAT of the quantized student on synthetic images, distilled from the frozen FP teacher (docs/method.md, Stage 3).

One loop for every task; the task adapter (`mimiq.task`) says what is compared and how:
    classification  kd_scale * T^2 * KL(teacher || student) + ce_scale * CE(student, labels)
                    + hsad_scale * L_HSAD(teacher A*V, student A*V) (paper code's trainer.py; hsad_scale = gamma = 10),
                    SimCLR-style augmentation, top-1 every `qat.eval_every` epochs;
    dense           hsad_scale * L_HSAD(backbone A*V) + w_task * L_task(neck + objectness / pixel logits)
                    (`mimiq.dense.losses`), a random horizontal flip; evaluated by the caller after training.
`qat_step` is one optimiser step (both forward passes with attention capture, the task's terms, backward,
step); `train_qat` is the loop over it. The task adapter is handed in (`QATTask`: what the loop asks of it) and so
is the evaluator, so this module depends on neither `mimiq.task` nor `mimiq.evaluate`. The loop checkpoints
`ckpt_last.pt` atomically after every epoch and resumes from it; randomness (batch order, augmentation) is
re-seeded from (seed, epoch) at each epoch start, so a resumed run is bit-identical to an uninterrupted one.

DDP (several processes, `mimiq.utils.dist`): `qat.batch_size` is the GLOBAL batch. Every rank draws the same
permutation and the same augmentation of the whole global batch (one random stream, seeded as above), then
trains on its contiguous part (`dist.batch_part`): a distributed sampler over global batches, so the images and
their augmentation are those of a one-process run. The student is wrapped in DistributedDataParallel, whose
gradient all-reduce averages over ranks; each rank's loss is weighted by (its images x world / global batch) so
that the average is the global-batch mean even when a last partial batch splits unevenly. The teacher is
replicated and frozen. Rank 0's student state (the quantizer initialisation) is broadcast before training;
every rank reads a checkpoint to resume, only rank 0 writes it.
"""

from __future__ import annotations

import inspect
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from mimiq.models.attention import capture
from mimiq.quant.quantizers import Quantizer
from mimiq.tracking import Tracker
from mimiq.utils import dist
from mimiq.utils.compile import compiled, use_compile
from mimiq.utils.io import load_training_state, save_training_state
from mimiq.utils.seed import autocast, derived_seed

log = logging.getLogger(__name__)

Evaluator = Callable[[nn.Module], float]  # the student -> its top-1 (%) on the task's eval split


class QATTask(Protocol):
    """What QAT asks of the task adapter (`mimiq.task.Task` implements it)."""

    def backbone(self, model: nn.Module) -> nn.Module:
        """The module whose attention is captured (`capture(..., "matmul_av")`)."""

    def outputs(self, model: nn.Module, x: Tensor) -> Any:
        """What the output distillation compares, for images x (B, 3, H, W)."""

    def distill_terms(
        self, s_out: Any, t_out: Any, labels: Tensor, s_av: list[Tensor], t_av: list[Tensor], drop_cls: bool
    ) -> dict[str, Tensor]:
        """The weighted loss terms and their sum under "total"."""

    def drop_cls(self, teacher: nn.Module) -> bool:
        """Token 0 of the attention is a CLS token, dropped by HSAD."""

    def augment(self, teacher: nn.Module, size: int) -> Callable[[Tensor], Tensor]:
        """The augmentation of a (B, 3, H, W) batch of `size` px images in the teacher's normalisation."""


def param_groups(model: nn.Module, ocfg) -> list[dict]:
    """The trainable parameters of `model` as optimiser groups: one group, or two when `optim.quantizer_lr_scale`
    is not 1 (the parameters of the quantizer modules, i.e. LSQ steps and zero points, at lr x that scale)."""
    scale = float(ocfg.get("quantizer_lr_scale", 1.0))  # absent from configs resolved before the key existed
    trainable = [p for p in model.parameters() if p.requires_grad]
    if scale == 1.0:
        return [{"params": trainable}]
    quant_ids = {id(p) for m in model.modules() if isinstance(m, Quantizer) for p in m.parameters()}
    rest = [p for p in trainable if id(p) not in quant_ids]
    quant = [p for p in trainable if id(p) in quant_ids]
    return [{"params": rest}, {"params": quant, "lr": ocfg.lr * scale}]


def build_optimizer(params, ocfg) -> torch.optim.Optimizer:
    if ocfg.name == "sgd":
        return torch.optim.SGD(
            params, lr=ocfg.lr, momentum=ocfg.momentum, nesterov=ocfg.nesterov, weight_decay=ocfg.weight_decay
        )
    if ocfg.name == "adam":
        return torch.optim.Adam(params, lr=ocfg.lr, weight_decay=ocfg.weight_decay)
    raise ValueError(f"optim.name must be sgd or adam, got {ocfg.name!r}")


def build_scheduler(opt, ocfg, epochs: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Stepped once per epoch, as the paper code's `update_lr`."""
    if ocfg.schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 1.0)
    if ocfg.schedule == "multi_step":
        return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(ocfg.milestones), gamma=ocfg.gamma)
    if ocfg.schedule == "cosine" and len(opt.param_groups) > 1:  # each group to its own floor (min_lr_ratio x its lr)
        r = ocfg.min_lr_ratio
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda e: r + (1 - r) * (1 + math.cos(math.pi * e / epochs)) / 2)
    if ocfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs, eta_min=ocfg.lr * ocfg.min_lr_ratio)
    raise ValueError(f"optim.schedule must be constant, multi_step or cosine, got {ocfg.schedule!r}")


def qat_steps(cfg) -> int:
    """Optimiser steps the configured QAT takes: (epochs - no_step_epochs) x batches per epoch."""
    q, n = cfg.qat, cfg.generator.num_images
    b = min(q.batch_size, n)  # a batch larger than the set is the whole set
    per_epoch = n // b if q.drop_last else -(-n // b)
    return max(0, q.epochs - q.no_step_epochs) * per_epoch


def qat_step(
    model: nn.Module,
    teacher: nn.Module,
    task: QATTask,
    x: Tensor,
    y: Tensor,
    opt: torch.optim.Optimizer,
    drop_cls: bool,
    precision: str = "fp32",
    step: bool = True,
    loss_scale: float = 1.0,
) -> dict[str, Tensor]:
    """One QAT step on one batch: the teacher's forward (no grad) and the student's, both capturing the per-head
    A·V of `task.backbone`, the task's distillation terms, zeroed gradients, backward, and the optimiser step.

    Args:
        model: the fake-quantized student, its DistributedDataParallel wrapper, or either under torch.compile
            (`mimiq.utils.compile.compiled`; the capture sits on the wrapped student); its trainable parameters
            are those of `opt`.
        teacher: FP, frozen, eval mode, attention swapped (`swap_attention`); or its compiled forward.
        task: the adapter (`QATTask`): `backbone`, `outputs`, `distill_terms`.
        x: (B, 3, H, W) images, normalised and augmented, on the models' device; y: (B,) their generation labels.
        opt: the student's optimiser.
        drop_cls: token 0 of the attention is a CLS token, left out of HSAD (`task.drop_cls(teacher)`).
        precision: fp32 | bf16 (autocast of both forward passes).
        step: take the optimiser step; False: forward and backward only (the paper code's `no_step_epochs`).
        loss_scale: multiplies "total" for the backward only (DDP: world x this rank's share of the global batch).

    Returns:
        the task's terms (detached scalars) and their sum under "total", unscaled.
    """
    student = model.module if isinstance(model, DistributedDataParallel) else model
    with autocast(precision, x.device):
        with torch.no_grad(), capture(task.backbone(teacher), "matmul_av") as t_av:
            t_out = task.outputs(teacher, x)
        with capture(task.backbone(student), "matmul_av") as s_av:
            s_out = task.outputs(model, x)
    terms = task.distill_terms(s_out, t_out, y, s_av, t_av, drop_cls)
    opt.zero_grad(set_to_none=True)
    (terms["total"] * loss_scale if loss_scale != 1.0 else terms["total"]).backward()
    if step:
        opt.step()
    return {k: v.detach() for k, v in terms.items()}


def _ddp(student: nn.Module, device: torch.device) -> nn.Module:
    """The student in DistributedDataParallel, rank 0's state (quantizer init, resumed state) on every rank."""
    dist.broadcast_module_(student)
    # no buffer sync per forward: the student runs in eval mode, its buffers never change during QAT
    ddp_params = inspect.signature(DistributedDataParallel).parameters
    no_sync = {"forward_sync_buffers" if "forward_sync_buffers" in ddp_params else "broadcast_buffers": False}
    return DistributedDataParallel(student, device_ids=[device.index] if device.type == "cuda" else None, **no_sync)


def train_qat(
    student: nn.Module,
    teacher: nn.Module,
    synth,
    task: QATTask,
    cfg,
    device: torch.device,
    out_dir: Path,
    tracker: Tracker | None = None,
    evaluate: Evaluator | None = None,
) -> dict:
    """Runs QAT (`qat_step` over the epochs); returns {"top1" (final epoch), "top1_best" (best evaluated epoch:
    test-set selection, a secondary number), "history", "steps" (optimiser steps taken), "time_qat_s",
    "resumed_from"}.

    Args:
        student: fake-quantized, activation quantizers initialised (`build_student`), attention swapped, on device.
        teacher: FP, attention swapped (the matmul_av outputs of `task.backbone` are distilled); frozen here.
        synth: the synthetic set: `.images` (N, 3, H, W) normalised, `.labels` (N,) generation labels. Under
            DDP, every rank holds all of them.
        task: the task adapter (`QATTask`).
        cfg: the run config (`qat`, `optim`, `seed`, `precision`).
        out_dir: where `ckpt_last.pt` is written and resumed from.
        evaluate: the student's top-1 (%), called every `qat.eval_every` epochs and after the last (under DDP on
            every rank: each evaluates its shard); None: no evaluation here (top1 and top1_best are None).
    """
    images, labels = synth.images, synth.labels
    qcfg = cfg.qat
    tracker = tracker or Tracker()
    drop_cls = task.drop_cls(teacher)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    opt = build_optimizer(param_groups(student, cfg.optim), cfg.optim)
    sched = build_scheduler(opt, cfg.optim, qcfg.epochs)
    augment = task.augment(teacher, images.shape[-1])
    ckpt_path = Path(out_dir) / "ckpt_last.pt"
    parts = {"student": student, "optimizer": opt, "scheduler": sched}
    start_epoch, history, elapsed, resumed_from = 0, [], 0.0, None
    world = dist.world_size()
    dist.check_global_batch(len(images), qcfg, world)
    if dist.broadcast_object(ckpt_path.is_file()):  # rank 0's view decides; every rank reads the file
        st = load_training_state(ckpt_path, parts, "QAT checkpoint", f"Delete {ckpt_path} to restart QAT from epoch 0.")
        log.info(f"Resuming QAT from {ckpt_path} at epoch {st['epoch']}/{qcfg.epochs}")
        start_epoch, history, elapsed = st["epoch"], st["history"], st["time_qat_s"]
        resumed_from = start_epoch
    model = _ddp(student, device) if world > 1 else student
    runs_teacher = teacher  # what qat_step calls: the models, or their compiled forwards (`compile`)
    if use_compile(cfg, device, qat_steps(cfg)):
        model, runs_teacher = compiled(model), compiled(teacher)
    n = len(images)
    batch = min(qcfg.batch_size, n)
    steps = n // batch if qcfg.drop_last else -(-n // batch)
    steps_done = sum(steps for h in history if h["epoch"] > qcfg.no_step_epochs)  # optimiser steps (resume)
    for epoch in range(start_epoch, qcfg.epochs):
        t0 = time.time()
        torch.manual_seed(derived_seed(cfg.seed, epoch))  # order + augmentation depend on (seed, epoch) only
        order = torch.randperm(n)
        student.eval()  # the paper code trains in eval mode: dropout / drop-path off, quantizers identical
        do_step = epoch >= qcfg.no_step_epochs  # paper code: the optimizer starts stepping after no_step_epochs
        sums: dict[str, float] = {}
        bar = tqdm(
            range(steps),
            desc=f"QAT epoch {epoch + 1}/{qcfg.epochs}",
            leave=False,
            mininterval=1,
            disable=not dist.is_main(),
        )
        for i in bar:
            idx = order[i * batch : (i + 1) * batch]
            x, y = augment(images[idx]), labels[idx]  # the global batch: the same on every rank
            part = dist.batch_part(len(idx))  # this rank's images of it (all of them in a world of one)
            share = (part.stop - part.start) / len(idx)  # this rank's fraction of the global batch
            # DDP averages gradients over ranks; x world x share turns that average into the global-batch mean
            terms = qat_step(
                model,
                runs_teacher,
                task,
                x[part].to(device),
                y[part].to(device),
                opt,
                drop_cls,
                cfg.precision,
                step=do_step,
                loss_scale=world * share if world > 1 else 1.0,
            )
            steps_done += do_step
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v.item() * share  # summed over ranks below: the global-batch mean
            bar.set_postfix({k: f"{v.item():.3f}" for k, v in terms.items()})
        sums = dict(zip(sums, dist.all_reduce_sum(list(sums.values())), strict=True))
        sched.step()
        elapsed += time.time() - t0
        evaluated = evaluate is not None and (epoch + 1 == qcfg.epochs or (epoch + 1) % qcfg.eval_every == 0)
        top1 = evaluate(student) if evaluated else None
        row = {
            "epoch": epoch + 1,
            **({"top1": top1} if evaluate is not None else {}),
            "lr": opt.param_groups[0]["lr"],
            **{f"loss_{k}": v / steps for k, v in sums.items()},
        }
        history.append(row)
        if dist.is_main():
            log.info("QAT epoch %d/%d: top-1 %s, loss %.4f", epoch + 1, qcfg.epochs, top1, row["loss_total"])
        evals = {"eval/top1": top1} if top1 is not None else {}
        tracker.log({**evals, **{f"qat/{k}": v for k, v in row.items() if k != "top1"}}, step=epoch + 1)
        if dist.is_main():
            save_training_state(ckpt_path, parts, epoch=epoch + 1, history=history, time_qat_s=elapsed)
    if not history:
        raise ValueError("qat.epochs must be >= 1")
    evaluated = [h["top1"] for h in history if h.get("top1") is not None]
    return {
        "top1": history[-1].get("top1"),
        "top1_best": max(evaluated) if evaluated else None,
        "history": history,
        "steps": steps_done,
        "time_qat_s": elapsed,
        "resumed_from": resumed_from,
    }
