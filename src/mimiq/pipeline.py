"""The MimiQ run, in the paper's order: teacher -> synthetic data -> quantized student -> QAT -> evaluation.

One pipeline for every task: the task adapter (`mimiq.task`) builds and evaluates the teacher, makes the
synthetic set, says which part is quantized and what QAT distils; classification evaluates during QAT, the dense
tasks (detection / segmentation, the optional mm extra) once after it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from mimiq.budget import budget_summary
from mimiq.distill.qat import qat_steps, train_qat
from mimiq.synth.quality import format_quality, quality_targets_met
from mimiq.task import Task, make_task
from mimiq.tracking import Tracker
from mimiq.utils import dist
from mimiq.utils.io import atomic_save_json, atomic_torch_save, git_sha
from mimiq.utils.seed import resolve_device, seed_everything

log = logging.getLogger(__name__)


def _log_synth(task: Task, synth, time_generate: float, data_config: dict, tracker: Tracker) -> dict:
    """Logs the set (and tracks its curves, quality and samples); returns its quality entries (`synth_*`)."""
    cfg, meta = task.cfg, synth.meta
    verb = "Reused" if meta["reused"] else "Generated"
    ssim = f", inter-head attention SSIM {meta['interhead_ssim']:.4f}" if "interhead_ssim" in meta else ""
    log.info(
        f"{verb} {len(synth.images)} {cfg.generator.name} images ({meta.get('path', '')}){ssim}, {time_generate:.0f} s"
    )
    quality = {k: v for k, v in meta.items() if k.startswith("synth_")}
    if quality:
        log.info(
            f"Synthetic set {cfg.generator.name}: {format_quality(quality)}"
            + ("" if quality_targets_met(quality) else " (below the convergence targets)")
        )
    tracker.log_curves("synth", meta.get("loss_curves") or {})
    scalars = {f"synth/{k[len('synth_') :]}": v for k, v in quality.items() if not isinstance(v, list)}
    tracker.log({"synth/interhead_ssim": meta.get("interhead_ssim"), "synth/time_s": time_generate, **scalars})
    mean, std = (torch.tensor(data_config[k]).view(1, 3, 1, 1) / task.pixel_max for k in ("mean", "std"))
    tracker.images("synth/samples", synth.images[:16] * std + mean)
    return quality


def run(cfg: DictConfig, out_dir: str | Path, memo: dict | None = None) -> dict:
    """Runs the configured pipeline and writes `out_dir/metrics.json`. Returns the metrics.

    `memo`: see `Task.teacher_stage` (the bench keeps its teachers loaded between runs).
    """
    task = make_task(cfg)  # an unknown task fails here
    t_start = time.time()
    world = dist.init_from_env()  # torchrun / srun: one process per device; nothing in a world of one
    dist.quiet_logging()  # ranks > 0: warnings only, no log file
    spec = task.validate()
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
        stage = task.teacher_stage(device, memo)

        t0 = time.time()
        synth = task.synthesize(stage, device, out_dir)  # stage 1: synthetic images, cached
        time_generate = time.time() - t0
        quality = _log_synth(task, synth, time_generate, stage.data_config, tracker)

        calib = synth.images[: cfg.qat.calib_size].to(device)  # DDP: the same batch on every rank (and broadcast)
        student, manifest = task.build_student(stage.teacher, spec, calib, out_dir if main else None)
        log.info(f"Quantized student ({spec.tag}, first/last: {spec.first_last}): {manifest.summary()}")
        ptq = None
        if task.evaluates_during_qat:  # calibration only: what QAT starts from
            ptq = task.evaluate(student, stage, device)
            log.info(
                f"W{spec.w_bits}/A{spec.a_bits} PTQ (quantizers calibrated on {len(calib)} {cfg.generator.name} "
                f"images, no training): {task.format(ptq)}"
            )
            tracker.log({f"eval/ptq_{cfg.task.metric}": ptq[cfg.task.metric]}, step=0)
        evaluator = task.qat_evaluator(stage, device)
        qat = train_qat(student, stage.teacher, synth, task, cfg, device, out_dir, tracker, evaluator)
        final = {"top1": qat["top1"]} if task.evaluates_during_qat else task.evaluate(student, stage, device)
        if main:
            record = {"student": student.state_dict(), "quant": run_config["quant"]}
            atomic_torch_save({**record, **task.student_record(run_config, final)}, out_dir / "student.pt")
        result = task.summary(stage, final, qat, ptq)
        log.info(f"W{spec.w_bits}/A{spec.a_bits} {cfg.generator.name}+{cfg.distill.name}: {result}")

        metrics = {
            "experiment": cfg.get("experiment_name") or "default",
            "w_bits": spec.w_bits,
            "a_bits": spec.a_bits,
            "generator": cfg.generator.name,
            "distill": cfg.distill.name,
            "seed": cfg.seed,
            **task.metrics(stage, synth, final, qat, ptq),
            "qat_steps": qat["steps"],
            "interhead_ssim": synth.meta.get("interhead_ssim"),
            **quality,
            "num_images": len(synth.images),
            "synth_reused": synth.meta["reused"],
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
        if not task.evaluates_during_qat:
            tracker.log({f"eval/{k}": v for k, v in final.items() if k not in ("n", "time_s")})
        tracker.summary(metrics)
    return metrics
