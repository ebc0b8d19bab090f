"""Evaluate a saved quantized student alone: python scripts/evaluate_student.py <run_dir> [key=value ...]

Rebuilds the architecture from the run's resolved config, quantizes it with the run's quant spec, loads
`<run_dir>/student.pt` strictly (weights and quantizer state) and evaluates it on the run's eval set (or on the
data given by overrides, e.g. data.root=/other/imagenet). Prints the top-1 and exits non-zero on any mismatch.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

from mimiq.data import build_dataset, build_loader
from mimiq.evaluate.classification import evaluate
from mimiq.models import create_model, model_data_config
from mimiq.quant import QuantSpec, quantize_model
from mimiq.utils.io import load_checkpoint
from mimiq.utils.seed import resolve_device


def load_student(run_dir: Path, cfg) -> torch.nn.Module:
    how = f"Rerun the training run that wrote {run_dir} (it saves student.pt at the end)."
    state = load_checkpoint(run_dir / "student.pt", "saved student", how)
    model_cfg = OmegaConf.merge(cfg.model, {"pretrained": False, "checkpoint": None})
    num_classes = cfg.data.num_classes if cfg.model.train_teacher else None
    student = create_model(model_cfg, num_classes=num_classes)
    quantize_model(student, QuantSpec.from_cfg(cfg.quant))
    student.load_state_dict(state["student"], strict=True)
    return student.eval()


def main(argv: list[str]) -> float:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        raise SystemExit(0 if argv else 2)
    run_dir = Path(argv[0])
    cfg_path = run_dir / "config_resolved.yaml"
    if not cfg_path.is_file():
        raise SystemExit(f"{cfg_path} not found: pass the run directory of a finished train.py run")
    cfg = OmegaConf.merge(OmegaConf.load(cfg_path), OmegaConf.from_dotlist(argv[1:]))
    device = resolve_device(cfg.device)
    student = load_student(run_dir, cfg).to(device)
    data_config = model_data_config(student)
    loader = build_loader(
        build_dataset(cfg.data, "test", data_config, cfg.paths.cache_dir),
        cfg.data.batch_size,
        shuffle=False,
        num_workers=cfg.data.num_workers,
    )
    top1 = evaluate(student, loader, device, cfg.precision)["top1"]
    print(f"student {cfg.model.name} w{cfg.quant.w_bits}a{cfg.quant.a_bits} from {run_dir}: top-1 {top1:.2f} %")
    return top1


if __name__ == "__main__":
    main(sys.argv[1:])
