"""A finished run's student, rebuilt from its run directory, and the evaluation the export report compares.

A run directory (`mimiq.pipeline.run`) keeps what the rebuild needs: `config_resolved.yaml` (model architecture,
data, quantization scheme) and `student.pt` (the student's state dict: weights, learned steps and zero points, the
quantizers' calibration flags). The architecture is built without weights (timm, random init), fake-quantized with
the run's scheme, and the student's state loaded strictly over it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from mimiq.export.qparams import ExportError, check_student
from mimiq.models.attention import swap_attention
from mimiq.models.registry import create_model
from mimiq.quant import QuantSpec, quantize_model
from mimiq.utils.io import load_checkpoint


@dataclass
class RunStudent:
    run_dir: Path
    cfg: DictConfig  # the run's resolved config
    spec: QuantSpec
    student: nn.Module  # fake-quantized, eval mode, CPU, no gradients
    top1: float | None  # the run's final top-1 (student.pt), for the report


def build_architecture(model_cfg: dict | DictConfig, num_classes: int | None, spec: QuantSpec | None) -> nn.Module:
    """The student's modules without its weights: timm `model_cfg` at random init (no hub, no checkpoint),
    attention swapped, fake-quantized with `spec` (None: FP). Eval mode, CPU."""
    m = OmegaConf.create(
        OmegaConf.to_container(model_cfg, resolve=True) if OmegaConf.is_config(model_cfg) else model_cfg
    )
    m.pretrained, m.checkpoint = False, None
    model = create_model(m, num_classes=num_classes)
    swap_attention(model)
    if spec is not None:
        quantize_model(model, spec)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def num_classes_of(cfg: DictConfig) -> int | None:
    """The classifier width the pipeline built: the data's classes for project-trained teachers, else timm's."""
    m = cfg.model
    trained = m.get("train_teacher") and not m.get("checkpoint") and not m.get("pretrained")
    return int(cfg.data.num_classes) if trained else None


def _unfinished(run_dir: Path) -> str:
    ckpt = run_dir / "ckpt_last.pt"
    if not ckpt.is_file():
        return "no QAT checkpoint either: the run stopped before QAT"
    try:
        st = torch.load(ckpt, map_location="cpu", weights_only=True)
        return f"its QAT checkpoint stops at epoch {st['epoch']}: the run did not finish; rerun its command to resume"
    except Exception:
        return "its QAT checkpoint is unreadable"


def load_run(run_dir: str | Path) -> RunStudent:
    """The checked, fake-quantized student of a finished classification run. Raises ExportError (one message) for a
    directory that is not a run, a run without a finished student, a task or scheme the exporters do not cover."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config_resolved.yaml"
    if not run_dir.is_dir():
        raise ExportError(f"{run_dir}: no such run directory")
    if not cfg_path.is_file():
        raise ExportError(f"{run_dir}: not a run directory (no config_resolved.yaml; train.py writes one)")
    cfg = OmegaConf.load(cfg_path)
    if not (run_dir / "student.pt").is_file():
        raise ExportError(f"{run_dir}: no finished student (student.pt missing; {_unfinished(run_dir)})")
    task = cfg.get("task", {}).get("name", "classification")
    if task != "classification":
        raise ExportError(f"{run_dir}: task {task!r}; the exporters cover classification students only")
    spec = QuantSpec.from_cfg(cfg.quant)
    if spec.w_bits == spec.a_bits == 32:
        raise ExportError(f"{run_dir}: bits=fp, nothing is quantized; there is no integer student to export")
    record = load_checkpoint(run_dir / "student.pt", "student", "Rerun the run to write it again.")
    student = build_architecture(cfg.model, num_classes_of(cfg), spec)
    try:
        student.load_state_dict(record["student"], strict=True)
    except (RuntimeError, KeyError) as e:
        raise ExportError(f"{run_dir}/student.pt does not fit the run's config: {str(e).splitlines()[0]}") from e
    check_student(student)
    return RunStudent(run_dir, cfg, spec, student, record.get("top1"))


def eval_batches(cfg: DictConfig, student: nn.Module, limit: int | None = None, batch_size: int = 100):
    """(images (B, 3, H, W), labels (B,)) of the run's evaluation split (the first `limit` images)."""
    from mimiq.data import build_dataset, build_loader
    from mimiq.models import model_data_config

    data = build_dataset(cfg.data, "test", model_data_config(student), cfg.paths.cache_dir)
    if limit is not None:
        data = torch.utils.data.Subset(data, range(min(limit, len(data))))
    return build_loader(data, batch_size, shuffle=False, num_workers=0)


@torch.no_grad()
def logits_of(forward, loader) -> tuple[Tensor, Tensor]:
    """(logits (N, classes), labels (N,)) of `forward(images)` over the loader."""
    out, labels = [], []
    for x, y in loader:
        out.append(torch.as_tensor(forward(x)).float())
        labels.append(y)
    return torch.cat(out), torch.cat(labels)


ROUNDING_TOL = 1e-5  # per-image max |logit diff| / max |reference logit| of two float32 forwards without a flip


def compare(logits: Tensor, reference: Tensor, labels: Tensor) -> dict:
    """Top-1 of `logits` (N, classes), and how they differ from `reference`: max |diff|, max |diff| relative to the
    largest |reference logit|, top-1 agreement (%), and the share of images (%) whose logits differ by float rounding
    only (relative max |diff| <= ROUNDING_TOL; the others hold a flip: an activation one grid step apart)."""
    n, scale = len(labels), max(reference.abs().max().item(), 1e-12)
    per_image = (logits - reference).abs().amax(1)
    return {
        "top1": 100.0 * int((logits.argmax(1) == labels).sum()) / n,
        "max_abs_diff": per_image.max().item(),
        "max_rel_diff": per_image.max().item() / scale,
        "top1_agree": 100.0 * int((logits.argmax(1) == reference.argmax(1)).sum()) / n,
        "within_rounding": 100.0 * int((per_image <= ROUNDING_TOL * scale).sum()) / n,
        "n": n,
    }
