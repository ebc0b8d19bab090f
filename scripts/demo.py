"""`make demo`: the embedded default (`python train.py`: MimiQ generation + HSAD QAT at W4/A4 on the mini task, the
row `method=mimiq`), then Gaussian noise + KD (`method=noise_kd`, free to generate) on the same teacher, and a table
of the two. The rows and their labels are conf/method/'s.

    python scripts/demo.py [hydra overrides ...]      e.g. bits=w5a5, model=swin_mini

Runs go to logs/demo/<time>/{mimiq,noise_kd}/ (each with its metrics.json, as a train.py run).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
ROOT = Path(__file__).resolve().parents[1]

from hydra import compose, initialize_config_dir  # noqa: E402

from mimiq import pipeline  # noqa: E402
from mimiq.report.methods import load_methods  # noqa: E402

METHODS = load_methods(ROOT / "conf")
ROWS = [(m, METHODS[m].label, [f"method={m}"]) for m in ("mimiq", "noise_kd")]  # (method id, label, overrides)


def table(runs: dict[str, dict]) -> str:
    m, n = runs["mimiq"], runs["noise_kd"]
    bits = f"W{m['w_bits']}/A{m['a_bits']}"
    lines = [
        f"| {m['model']} {bits} | top-1 (%) | PTQ (%) | synthetic-set label agreement |",
        "|---|---|---|---|",
        f"| FP teacher | {m['fp_top1']:.2f} | | |",
    ]
    for key, label, _ in reversed(ROWS):
        r = runs[key]
        agree = f"{r['synth_label_agreement']:.1f} %" if r.get("synth_label_agreement") is not None else ""
        lines.append(f"| {label} | {r['top1']:.2f} | {r['ptq_top1']:.2f} | {agree} |")
    lines.append(f"| MimiQ − noise + KD | {m['top1'] - n['top1']:+.2f} | {m['ptq_top1'] - n['ptq_top1']:+.2f} | |")
    return "\n".join(lines)


def main(overrides: list[str]) -> dict[str, dict]:
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the pipeline's results go through logging
    out = ROOT / "logs" / "demo" / time.strftime("%Y-%m-%d_%H-%M-%S")
    memo: dict = {}  # one teacher for both runs
    runs = {}
    for key, label, extra in ROWS:
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose("train", overrides=[*overrides, *extra])
        print(f"\n=== {label} -> {out / key}", flush=True)
        runs[key] = pipeline.run(cfg, out / key, memo)
    print("\n" + table(runs))
    return runs


if __name__ == "__main__":
    main(sys.argv[1:])
