"""The MimiQ run, in the paper's order: teacher -> synthetic data -> quantized student -> QAT -> evaluation."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from mimiq.data import build_dataset, build_loader, check_data_cfg
from mimiq.evaluate.classification import evaluate
from mimiq.models import check_model_cfg, model_data_config
from mimiq.models.teacher import load_or_train_teacher
from mimiq.utils.io import atomic_save_json, git_sha
from mimiq.utils.seed import resolve_device, seed_everything

log = logging.getLogger(__name__)


def validate(cfg: DictConfig) -> None:
    """Every check that can fail on bad input, before any compute starts."""
    check_model_cfg(cfg.model)
    check_data_cfg(cfg.data)
    resolve_device(cfg.device)
    if cfg.precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be fp32 or bf16, got {cfg.precision!r}")


def run(cfg: DictConfig, out_dir: str | Path) -> dict:
    """Runs the configured pipeline and writes `out_dir/metrics.json`. Returns the metrics."""
    t_start = time.time()
    validate(cfg)
    out_dir = Path(out_dir)
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)

    teacher, teacher_info = load_or_train_teacher(cfg, device)  # FP, frozen
    if teacher_info["source"] == "cache":
        print(f"Reusing cached teacher {teacher_info['path']}")
    elif teacher_info["source"] == "trained":
        print(f"Trained teacher in {teacher_info['train_time_s']:.0f} s -> {teacher_info['path']}")

    eval_set = build_dataset(cfg.data, "test", model_data_config(teacher), cfg.paths.cache_dir)
    eval_loader = build_loader(eval_set, cfg.data.batch_size, shuffle=False, num_workers=cfg.data.num_workers)
    fp = evaluate(teacher, eval_loader, device, cfg.precision)
    print(f"Teacher {cfg.model.name} FP top-1 on {cfg.data.name} {'test' if cfg.data.name == 'mini' else 'val'}: "
          f"{fp['top1']:.2f} % ({fp['n']} images)")  # fmt: skip

    metrics = {
        "model": cfg.model.name,
        "data": cfg.data.name,
        "seed": cfg.seed,
        "fp_top1": fp["top1"],
        "fp_top5": fp["top5"],
        "teacher_source": teacher_info["source"],
        "teacher_train_time_s": teacher_info.get("train_time_s"),
        "time_total_s": time.time() - t_start,
        "git_sha": git_sha(),
    }
    atomic_save_json(metrics, out_dir / "metrics.json")
    OmegaConf.save(cfg, out_dir / "config_resolved.yaml", resolve=True)
    return metrics
