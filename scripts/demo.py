"""`make demo`: the paper's claim on the shipped default teacher. MimiQ (`python train.py`: generation + HSAD QAT at
W4/A4 on the mini task), PSAQ-ViT + KD and Gaussian noise + KD, each with its PTQ and QAT top-1 and its set's label
agreement, against the FP teacher, and MimiQ's closure over PSAQ-ViT's best student (`mimiq.report.demo`).

    python scripts/demo.py [--out DIR] [--jobs N] [hydra overrides ...]      e.g. bits=w5a5, model=swin_mini

Runs go to logs/demo/<time>/{mimiq,psaq,noise_kd}/ (each with its metrics.json, as a train.py run). On the CPU the
three runs share the loaded teacher and go to 2 worker processes (`--jobs`; 1: one after the other, in this process,
with its output on the console), each run's console in its folder's console.log.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
ROOT = Path(__file__).resolve().parents[1]

from mimiq.config import compose  # noqa: E402
from mimiq.report.demo import DEMO_METHODS, DEMO_OVERRIDES, demo_table, run_methods  # noqa: E402
from mimiq.report.methods import load_methods  # noqa: E402
from mimiq.validate import check_numbers  # noqa: E402


def main(argv: list[str]) -> dict[str, dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "logs" / "demo" / time.strftime("%Y-%m-%d_%H-%M-%S"))
    p.add_argument("--jobs", type=int, default=2, help="worker processes on the CPU (1: in this process)")
    args, overrides = p.parse_known_args(argv)
    if args.jobs < 1:
        p.error(f"--jobs {args.jobs}: need at least 1")
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the pipeline's results go through logging
    labels = {m.id: m.label for m in load_methods(ROOT / "conf").values()}
    cfgs = {m: compose([*DEMO_OVERRIDES, *overrides, f"method={m}"]) for m in DEMO_METHODS}
    for cfg in cfgs.values():
        check_numbers(cfg)  # every run's numbers before the first run's compute
    runs = run_methods(cfgs, args.out, labels, args.jobs)
    print("\n" + demo_table(runs, labels))
    return runs


if __name__ == "__main__":
    main(sys.argv[1:])
