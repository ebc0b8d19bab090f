"""The dense run (task=detection | segmentation), in the paper's order: FP model -> its COCO / ADE20K metric ->
synthetic images -> quantized student -> QAT (HSAD + task-level distillation) -> the student's metric.

`mimiq.pipeline.run` hands every non-classification task to `run_dense`. Everything that can fail on bad input
(unknown task, missing extra, data root, checkpoint, bad option) fails in `validate_dense`, before any compute.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from mimiq.quant import QuantSpec
from mimiq.utils.seed import resolve_device, seed_everything

log = logging.getLogger(__name__)

TASKS = ("classification", "detection", "segmentation")
PACKAGES = {"detection": ("mmengine", "mmcv", "mmdet"), "segmentation": ("mmengine", "mmcv", "mmseg")}
SOURCES = ("backbone", "classifier")


def check_mm_installed(task: str) -> None:
    missing = [p for p in PACKAGES[task] if importlib.util.find_spec(p) is None]
    if missing:
        raise ImportError(
            f"task={task} needs the optional mm extra ({', '.join(missing)} not installed): run `make install-mm`"
        )


def check_dense_data(task: DictConfig) -> None:
    """The data root has the layout the task's test split reads (README "Dense tasks")."""
    if not task.data_root:
        raise ValueError(f"task.data_root is not set: point it at the {task.dataset} folder (README 'Dense tasks')")
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


def validate_dense(cfg: DictConfig) -> QuantSpec:
    """Every check that can fail on bad input, before any compute."""
    task = cfg.task
    if task.name not in TASKS:
        raise ValueError(f"unknown task {task.name!r}; expected one of {', '.join(TASKS)}")
    if task.name == "classification":
        raise ValueError("task=classification runs through mimiq.pipeline.run, not run_dense")
    check_mm_installed(task.name)
    if task.quantize not in ("backbone", "model"):
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
    resolve_device(cfg.device)
    if cfg.precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be fp32 or bf16, got {cfg.precision!r}")
    if cfg.qat.epochs < 1 or cfg.qat.batch_size < 1:
        raise ValueError("qat.epochs and qat.batch_size must be >= 1")
    return QuantSpec.from_cfg(cfg.quant)


def run_dense(cfg: DictConfig, out_dir: str | Path) -> dict:
    """Runs the dense pipeline and writes `out_dir/metrics.json`. Returns the metrics."""
    from mimiq.dense.attention import swap_mm_attention
    from mimiq.dense.evaluate import evaluate_dense
    from mimiq.dense.model import build_dense_model, build_mm_config, data_preprocessor_stats
    from mimiq.dense.qat import build_dense_student, train_dense_qat
    from mimiq.dense.synth import synthesize_from_backbone, synthesize_from_classifier
    from mimiq.tracking import Tracker
    from mimiq.utils.io import atomic_save_json, atomic_torch_save, git_sha

    t_start = time.time()
    spec = validate_dense(cfg)
    task = cfg.task
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    run_config = OmegaConf.to_container(cfg, resolve=True)
    OmegaConf.save(cfg, out_dir / "config_resolved.yaml", resolve=True)

    with Tracker.from_cfg(cfg.logger, run_config, out_dir) as tracker:
        mm_cfg = build_mm_config(task)
        teacher, weights = build_dense_model(task, mm_cfg)  # FP, eval, strict load
        swaps = swap_mm_attention(teacher)  # our attention (FP-exact): hooks for generation and HSAD
        teacher.to(device)
        for p in teacher.parameters():
            p.requires_grad_(False)
        fp = evaluate_dense(teacher, mm_cfg, task.name, device, cfg.precision)
        log.info(
            f"FP {task.model_name} ({weights} weights, {swaps} attention modules swapped): "
            f"{_fmt(fp)} on {fp['n']} {task.dataset} images"
        )

        mean, std = (torch.tensor(v, device=device).view(1, 3, 1, 1) for v in data_preprocessor_stats(teacher))
        if task.synth.source == "backbone":
            synth = synthesize_from_backbone(teacher.backbone, cfg, mean, std)
        else:
            synth = synthesize_from_classifier(cfg, device, mean, std, out_dir)
        verb = "Reused" if synth.meta["reused"] else "Generated"
        log.info(
            f"{verb} {len(synth)} {cfg.generator.name} images from the {task.synth.source} "
            f"({synth.meta.get('path', '')})"
        )

        calib = synth.images[: cfg.qat.calib_size].to(device)
        student, manifest = build_dense_student(teacher, spec, calib, task.name, task.quantize, out_dir)
        log.info(f"Quantized student ({spec.tag}, {task.quantize}): {manifest.summary()}")
        qat = train_dense_qat(student, teacher, synth.images, cfg, device, out_dir, tracker)
        q = evaluate_dense(student, mm_cfg, task.name, device, cfg.precision)
        log.info(
            f"W{spec.w_bits}/A{spec.a_bits} {cfg.generator.name}+{cfg.distill.name}: {_fmt(q)} (FP {_fmt(fp)}), "
            f"QAT {qat['time_qat_s']:.0f} s"
        )
        atomic_torch_save(
            {"student": student.state_dict(), "quant": run_config["quant"], "task": run_config["task"]},
            out_dir / "student.pt",
        )

        scores = {k: v for k, v in q.items() if k not in ("n", "time_s")}
        metrics = {
            "experiment": cfg.get("experiment_name") or "default",
            "task": task.name,
            "model": task.model_name,
            "backbone": task.backbone,
            "data": task.dataset,
            "w_bits": spec.w_bits,
            "a_bits": spec.a_bits,
            "generator": cfg.generator.name,
            "distill": cfg.distill.name,
            "synth_source": task.synth.source,
            "quantize": task.quantize,
            "seed": cfg.seed,
            **scores,
            **{f"fp_{k}": v for k, v in fp.items() if k not in ("n", "time_s")},
            "eval_images": q["n"],
            "weights": weights,
            "num_images": len(synth),
            "interhead_ssim": synth.meta.get("interhead_ssim"),
            "synth_reused": synth.meta["reused"],
            "time_fp_eval_s": fp["time_s"],
            "time_generate_s": synth.meta["time_generate_s"],
            "time_qat_s": qat["time_qat_s"],
            "time_eval_s": q["time_s"],
            "time_total_s": time.time() - t_start,
            "qat_resumed_from_epoch": qat["resumed_from"],
            "git_sha": git_sha(),
        }
        atomic_save_json(metrics, out_dir / "metrics.json")
        atomic_save_json(qat["history"], out_dir / "qat_history.json")
        tracker.log({f"eval/{k}": v for k, v in scores.items()})
        tracker.summary(metrics)
    return metrics


def _fmt(m: dict) -> str:
    names = {"box_ap": "box AP", "mask_ap": "mask AP", "miou": "mIoU"}
    return ", ".join(f"{label} {m[k]:.2f}" for k, label in names.items() if k in m)
