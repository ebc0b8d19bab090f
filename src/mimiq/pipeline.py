"""The MimiQ run, in the paper's order: teacher -> synthetic data -> quantized student -> QAT -> evaluation."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import NamedTuple

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from mimiq.budget import budget_summary
from mimiq.data import build_dataset, build_loader, check_data_cfg
from mimiq.distill.qat import check_global_batch, qat_steps, train_qat
from mimiq.evaluate.classification import evaluate
from mimiq.models import check_model_cfg, model_data_config
from mimiq.models.attention import swap_attention
from mimiq.models.student import build_student
from mimiq.models.teacher import load_or_train_teacher, teacher_identity
from mimiq.quant import QuantSpec
from mimiq.synth.generate import synthesize_or_load
from mimiq.synth.quality import format_quality, quality_targets_met
from mimiq.tracking import Tracker
from mimiq.utils import dist
from mimiq.utils.io import atomic_save_json, atomic_torch_save, config_hash, git_sha
from mimiq.utils.seed import resolve_device, seed_everything

log = logging.getLogger(__name__)


def validate(cfg: DictConfig) -> QuantSpec:
    """Every check that can fail on bad input, before any compute starts."""
    check_model_cfg(cfg.model)
    check_data_cfg(cfg.data)
    resolve_device(cfg.device)
    if cfg.precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be fp32 or bf16, got {cfg.precision!r}")
    if cfg.qat.epochs < 1 or cfg.qat.batch_size < 1 or cfg.qat.eval_every < 1:
        raise ValueError("qat.epochs, qat.batch_size and qat.eval_every must be >= 1")
    check_global_batch(cfg.generator.num_images, cfg.qat, dist.world_size())
    return QuantSpec.from_cfg(cfg.quant)


class TeacherStage(NamedTuple):
    teacher: torch.nn.Module  # FP, frozen, attention swapped
    info: dict  # load_or_train_teacher's info
    data_config: dict  # the teacher's timm data config (input size, mean, std)
    eval_loader: DataLoader  # the task's eval split
    fp: dict  # the teacher's evaluation {"top1", "n", ...}


def teacher_stage(cfg: DictConfig, device: torch.device, memo: dict | None = None) -> TeacherStage:
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


def run(cfg: DictConfig, out_dir: str | Path, memo: dict | None = None) -> dict:
    """Runs the configured pipeline and writes `out_dir/metrics.json`. Returns the metrics.

    `memo`: see `teacher_stage` (the bench keeps its teachers loaded between runs).
    """
    if cfg.task.name != "classification":  # detection / segmentation (issue 9): the optional mm extra
        from mimiq.dense.run import run_dense

        return run_dense(cfg, out_dir)
    t_start = time.time()
    world = dist.init_from_env()  # torchrun / srun: one process per device; nothing in a world of one
    dist.quiet_logging()  # ranks > 0: warnings only, no log file
    spec = validate(cfg)
    log.info(f"{budget_summary(cfg)}, {qat_steps(cfg)} optimiser steps")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    device = dist.rank_device(resolve_device(cfg.device))  # DDP on CUDA: cuda:LOCAL_RANK
    run_config = OmegaConf.to_container(cfg, resolve=True)
    main = dist.is_main()  # only rank 0 logs, tracks and writes the run's files
    if main:
        OmegaConf.save(cfg, out_dir / "config_resolved.yaml", resolve=True)

    with Tracker.from_cfg(cfg.logger, run_config, out_dir) if main else Tracker() as tracker:
        teacher, teacher_info, data_config, eval_loader, fp = teacher_stage(cfg, device, memo)

        t0 = time.time()
        synth = synthesize_or_load(teacher, cfg, device, out_dir)  # stage 1: synthetic images, cached
        time_generate = time.time() - t0
        verb = "Reused" if synth.meta["reused"] else "Generated"
        log.info(
            f"{verb} {len(synth.images)} {cfg.generator.name} images ({synth.meta['path']}), "
            f"inter-head attention SSIM {synth.meta['interhead_ssim']:.4f}, {time_generate:.0f} s"
        )
        quality = {k: v for k, v in synth.meta.items() if k.startswith("synth_")}
        if quality:
            log.info(
                f"Synthetic set {cfg.generator.name}: {format_quality(quality)}"
                + ("" if quality_targets_met(quality) else " (below the convergence targets)")
            )
        tracker.log_curves("synth", synth.meta.get("loss_curves") or {})
        scalars = {f"synth/{k[len('synth_') :]}": v for k, v in quality.items() if not isinstance(v, list)}
        tracker.log({"synth/interhead_ssim": synth.meta["interhead_ssim"], "synth/time_s": time_generate, **scalars})
        mean, std = (torch.tensor(data_config[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
        tracker.images("synth/samples", synth.images[:16] * std + mean)

        calib = synth.images[: cfg.qat.calib_size].to(device)  # DDP: the same batch on every rank (and broadcast)
        student, manifest = build_student(teacher, spec, calib, out_dir if main else None)
        log.info(f"Quantized student ({spec.tag}, first/last: {spec.first_last}): {manifest.summary()}")
        ptq = evaluate(student, eval_loader, device, cfg.precision)  # calibration only: what QAT starts from
        log.info(
            f"W{spec.w_bits}/A{spec.a_bits} PTQ (quantizers calibrated on {len(calib)} {cfg.generator.name} "
            f"images, no training): top-1 {ptq['top1']:.2f} %"
        )
        tracker.log({"eval/ptq_top1": ptq["top1"]}, step=0)
        qat = train_qat(
            student, teacher, synth.images, synth.labels, cfg, device, eval_loader, out_dir, data_config, tracker
        )
        if main:
            atomic_torch_save(
                {
                    "student": student.state_dict(),
                    "quant": run_config["quant"],
                    "model": run_config["model"],
                    "top1": qat["top1"],
                },
                out_dir / "student.pt",
            )
        log.info(
            f"W{spec.w_bits}/A{spec.a_bits} {cfg.generator.name}+{cfg.distill.name}: top-1 {qat['top1']:.2f} % "
            f"final epoch (best epoch {qat['top1_best']:.2f} %, PTQ {ptq['top1']:.2f} %, FP {fp['top1']:.2f} %), "
            f"{qat['steps']} QAT steps in {qat['time_qat_s']:.0f} s"
        )

        metrics = {
            "experiment": cfg.get("experiment_name") or "default",
            "model": cfg.model.name,
            "data": cfg.data.name,
            "w_bits": spec.w_bits,
            "a_bits": spec.a_bits,
            "generator": cfg.generator.name,
            "distill": cfg.distill.name,
            "seed": cfg.seed,
            "fp_top1": fp["top1"],
            "top1": qat["top1"],
            "top1_best": qat["top1_best"],
            "ptq_top1": ptq["top1"],
            "qat_steps": qat["steps"],
            "interhead_ssim": synth.meta["interhead_ssim"],
            **quality,
            "num_images": len(synth.images),
            "synth_reused": synth.meta["reused"],
            "teacher_source": teacher_info["source"],
            "time_teacher_s": teacher_info.get("train_time_s") if teacher_info["source"] == "trained" else 0.0,
            "time_generate_s": time_generate,
            "time_qat_s": qat["time_qat_s"],
            "time_total_s": time.time() - t_start,
            "qat_resumed_from_epoch": qat["resumed_from"],
            "world_size": world.size,
            "git_sha": git_sha(),
        }
        if main:
            atomic_save_json(metrics, out_dir / "metrics.json")
            atomic_save_json(qat["history"], out_dir / "qat_history.json")
        tracker.summary(metrics)
    return metrics
