"""QAT of the quantized student on synthetic images, distilled from the frozen FP teacher (docs/method.md, Stage 3).

One loop for every task; the task adapter (`mimiq.task`) says what is compared and how:
    classification  kd_scale * T^2 * KL(teacher || student) + ce_scale * CE(student, labels)
                    + hsad_scale * L_HSAD(teacher A*V, student A*V) (paper code's trainer.py; hsad_scale = gamma = 10),
                    SimCLR-style augmentation, top-1 every `qat.eval_every` epochs;
    dense           hsad_scale * L_HSAD(backbone A*V) + w_task * L_task(neck + objectness / pixel logits)
                    (`mimiq.dense.losses`), a random horizontal flip; evaluated by the caller after training.
The loop checkpoints `ckpt_last.pt` atomically after every epoch and resumes from it; randomness (batch order,
augmentation) is re-seeded from (seed, epoch) at each epoch start, so a resumed run is bit-identical to an
uninterrupted one.

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
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from mimiq.distill.losses import hsad_loss, kd_loss
from mimiq.evaluate.classification import evaluate
from mimiq.tracking import Tracker
from mimiq.utils import dist
from mimiq.utils.hooks import capture
from mimiq.utils.io import atomic_torch_save, load_checkpoint
from mimiq.utils.seed import autocast

if TYPE_CHECKING:
    from mimiq.task import Task

log = logging.getLogger(__name__)


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
    if ocfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs, eta_min=ocfg.lr * ocfg.min_lr_ratio)
    raise ValueError(f"optim.schedule must be constant, multi_step or cosine, got {ocfg.schedule!r}")


def distill_loss(
    s_logits: Tensor, t_logits: Tensor, labels: Tensor, s_av: list[Tensor], t_av: list[Tensor], dcfg, drop_cls: bool
) -> dict[str, Tensor]:
    """The weighted terms and their sum under "total"; zero-weight terms are not computed."""
    terms: dict[str, Tensor] = {}
    if dcfg.kd_scale:
        terms["kd"] = dcfg.kd_scale * kd_loss(s_logits.float(), t_logits.float(), dcfg.temperature)
    if dcfg.ce_scale:
        terms["ce"] = dcfg.ce_scale * F.cross_entropy(s_logits.float(), labels)
    if dcfg.hsad_scale:
        terms["hsad"] = dcfg.hsad_scale * hsad_loss(t_av, s_av, drop_cls=drop_cls, distance=dcfg.distance)
    if not terms:
        raise ValueError("distill: every loss weight (kd_scale, ce_scale, hsad_scale) is 0")
    terms["total"] = sum(terms.values())
    return terms


def resume_from_checkpoint(path: Path, student: nn.Module, opt, sched, epochs: int, what: str) -> dict:
    """Loads `path` (a `ckpt_last.pt`) into the student, optimizer and scheduler; returns the whole state
    (epoch, history, time_qat_s, ...). A corrupt file fails with one message naming it and the fix; `what` names
    the loop in the resume message."""
    st = load_checkpoint(path, "QAT checkpoint", f"Delete {path} to restart QAT from epoch 0.")
    student.load_state_dict(st["student"])
    opt.load_state_dict(st["optimizer"])
    sched.load_state_dict(st["scheduler"])
    log.info(f"Resuming {what} from {path} at epoch {st['epoch']}/{epochs}")
    return st


def qat_steps(cfg) -> int:
    """Optimiser steps the configured QAT takes: (epochs - no_step_epochs) x batches per epoch."""
    q, n = cfg.qat, cfg.generator.num_images
    b = min(q.batch_size, n)  # a batch larger than the set is the whole set
    per_epoch = n // b if q.drop_last else -(-n // b)
    return max(0, q.epochs - q.no_step_epochs) * per_epoch


def check_global_batch(n: int, qcfg, world: int) -> None:
    """Fails fast unless every rank gets images of every global batch: `qat.batch_size` divisible by the world
    size, and (without drop_last) a last partial batch of at least one image per rank."""
    if world == 1:
        return
    if qcfg.batch_size % world:
        raise ValueError(
            f"qat.batch_size={qcfg.batch_size} is the global batch of all {world} processes and must be "
            f"divisible by {world} (per-process batch = batch_size / {world})"
        )
    last = n % qcfg.batch_size
    if not qcfg.drop_last and 0 < last < world:
        raise ValueError(
            f"the last batch of the epoch has {last} image(s) ({n} images, qat.batch_size="
            f"{qcfg.batch_size}), fewer than the {world} processes: set qat.drop_last=true"
        )


def train_qat(
    student: nn.Module,
    teacher: nn.Module,
    images: Tensor,
    labels: Tensor,
    cfg,
    device: torch.device,
    eval_loader: DataLoader | None,
    out_dir: Path,
    data_config: dict | None,
    tracker: Tracker | None = None,
    task: Task | None = None,
) -> dict:
    """Runs QAT; returns {"top1" (final epoch), "top1_best" (best evaluated epoch: test-set selection, a secondary
    number), "history", "steps" (optimiser steps taken), "time_qat_s", "resumed_from"}.

    Args:
        student: fake-quantized, activation quantizers initialised (`build_student`), attention swapped.
        teacher: FP, frozen, eval mode, attention swapped (the matmul_av outputs of `task.backbone` are distilled).
        images: (N, 3, H, W) synthetic images, normalised; labels: (N,) their generation labels. Under DDP,
            every rank holds all of them.
        eval_loader: the classification eval split, evaluated every `qat.eval_every` epochs and after the last;
            under DDP over `dist.shard_dataset(...)`, so ranks share the evaluation. None: no evaluation here (the
            dense tasks evaluate once, after training; top1 and top1_best are None).
        data_config: the teacher's normalisation and input size (the task's augmentation).
        task: the task adapter (`mimiq.task`): outputs, distillation terms, backbone, augmentation;
            classification if None.
    """
    if task is None:
        from mimiq.task.classification import Classification

        task = Classification(cfg)
    qcfg = cfg.qat
    tracker = tracker or Tracker()
    drop_cls = task.drop_cls(teacher)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    params = [p for p in student.parameters() if p.requires_grad]
    opt = build_optimizer(params, cfg.optim)
    sched = build_scheduler(opt, cfg.optim, qcfg.epochs)
    augment = task.augment(data_config, images.shape[-1])
    ckpt_path = Path(out_dir) / "ckpt_last.pt"
    start_epoch, history, elapsed, resumed_from = 0, [], 0.0, None
    world = dist.world_size()
    check_global_batch(len(images), qcfg, world)
    if dist.broadcast_object(ckpt_path.is_file()):  # rank 0's view decides; every rank reads the file
        st = resume_from_checkpoint(ckpt_path, student, opt, sched, qcfg.epochs, "QAT")
        torch.set_rng_state(st["rng"])
        start_epoch, history, elapsed = st["epoch"], st["history"], st["time_qat_s"]
        resumed_from = start_epoch
    model = student
    if world > 1:
        dist.broadcast_module_(student)  # rank 0's quantizer init (and resumed state) on every rank
        # no buffer sync per forward: the student runs in eval mode, its buffers never change during QAT
        ddp_params = inspect.signature(DistributedDataParallel).parameters
        no_sync = {"forward_sync_buffers" if "forward_sync_buffers" in ddp_params else "broadcast_buffers": False}
        model = DistributedDataParallel(
            student, device_ids=[device.index] if device.type == "cuda" else None, **no_sync
        )
    n = len(images)
    batch = min(qcfg.batch_size, n)
    steps = n // batch if qcfg.drop_last else -(-n // batch)
    steps_done = sum(steps for h in history if h["epoch"] > qcfg.no_step_epochs)  # optimiser steps (resume)
    for epoch in range(start_epoch, qcfg.epochs):
        t0 = time.time()
        torch.manual_seed(cfg.seed * 1_000_003 + epoch)  # order + augmentation depend on (seed, epoch) only
        order = torch.randperm(n)
        student.eval()  # the paper code trains in eval mode: dropout / drop-path off, quantizers identical
        do_step = epoch >= qcfg.no_step_epochs
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
            x, y = x[part].to(device), y[part].to(device)
            share = (part.stop - part.start) / len(idx)  # this rank's fraction of the global batch
            with autocast(cfg.precision, device):
                with torch.no_grad(), capture(task.backbone(teacher), "matmul_av") as t_av:
                    t_out = task.outputs(teacher, x)
                with capture(task.backbone(student), "matmul_av") as s_av:
                    s_out = task.outputs(model, x)
            terms = task.distill_terms(s_out, t_out, y, s_av, t_av, drop_cls)
            opt.zero_grad(set_to_none=True)
            # DDP averages gradients over ranks; x world x share turns that average into the global-batch mean
            (terms["total"] * (world * share) if world > 1 else terms["total"]).backward()
            if do_step:  # paper code: the optimizer starts stepping after `no_step_epochs` epochs
                opt.step()
                steps_done += 1
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v.item() * share  # summed over ranks below: the global-batch mean
            bar.set_postfix({k: f"{v.item():.3f}" for k, v in terms.items()})
        sums = dict(zip(sums, dist.all_reduce_sum(list(sums.values())), strict=True))
        sched.step()
        elapsed += time.time() - t0
        evaluated = eval_loader is not None and (epoch + 1 == qcfg.epochs or (epoch + 1) % qcfg.eval_every == 0)
        top1 = evaluate(student, eval_loader, device, cfg.precision)["top1"] if evaluated else None
        row = {
            "epoch": epoch + 1,
            **({"top1": top1} if eval_loader is not None else {}),
            "lr": opt.param_groups[0]["lr"],
            **{f"loss_{k}": v / steps for k, v in sums.items()},
        }
        history.append(row)
        if dist.is_main():
            log.info("QAT epoch %d/%d: top-1 %s, loss %.4f", epoch + 1, qcfg.epochs, top1, row["loss_total"])
        evals = {"eval/top1": top1} if top1 is not None else {}
        tracker.log({**evals, **{f"qat/{k}": v for k, v in row.items() if k != "top1"}}, step=epoch + 1)
        state = {
            "student": student.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "rng": torch.get_rng_state(),
            "epoch": epoch + 1,
            "history": history,
            "time_qat_s": elapsed,
        }
        if dist.is_main():
            atomic_torch_save(state, ckpt_path)
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
