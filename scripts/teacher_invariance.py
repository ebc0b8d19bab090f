"""Teacher top-1 on real test images under each generator's input transform (the mini teacher's gate).

    python scripts/teacher_invariance.py [hydra overrides ...]     e.g. model=swin_mini teacher.seed=1

Trains (or reuses from the cache) the configured teacher, then prints clean top-1 and top-1 under the MimiQ,
PSAQ-ViT (and V2, the same) transforms (`mimiq.synth.invariance`), as JSON on the last line.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
ROOT = Path(__file__).resolve().parents[1]

import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

from mimiq.synth.invariance import format_report, invariance_report, teacher_gate  # noqa: E402
from mimiq.task import make_task  # noqa: E402


def generator_cfgs(overrides: list[str]) -> dict:
    """name -> the composed `generator` config of each pixel-optimising generator."""
    out = {}
    for name in teacher_gate().generators:  # conf/targets/mini.yaml (psaq_v2 shares psaq's transform)
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            out[name] = compose("train", overrides=[*overrides, f"generator={name}"]).generator
    return out


def main(overrides: list[str]) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the pipeline's results go through logging
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, "logger=none"])
    stage = make_task(cfg).teacher_stage(torch.device("cpu"))
    xs, ys = zip(*stage.eval_loader.dataset, strict=True)
    report = invariance_report(stage.teacher, torch.stack(xs), torch.tensor(ys), generator_cfgs(overrides))
    print(format_report(report))
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
