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

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import torch  # noqa: E402

from mimiq.config import compose  # noqa: E402
from mimiq.synth.invariance import format_report, invariance_report  # noqa: E402
from mimiq.task import make_task  # noqa: E402


def generator_cfgs(overrides: list[str]) -> dict:
    """name -> the composed `generator` config of each pixel-optimising generator."""
    # psaq_v2 applies PSAQ-ViT's transform (synth.augment.generator_transform)
    return {name: compose([*overrides, f"generator={name}"]).generator for name in ("mimiq", "psaq")}


def main(overrides: list[str]) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the pipeline's results go through logging
    cfg = compose([*overrides, "logger=none"])
    stage = make_task(cfg).teacher_stage(torch.device("cpu"))
    xs, ys = zip(*stage.eval_loader.dataset, strict=True)
    report = invariance_report(stage.teacher, torch.stack(xs), torch.tensor(ys), generator_cfgs(overrides))
    print(format_report(report))
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
