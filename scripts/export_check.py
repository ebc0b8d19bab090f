"""The deployable forms of a student against its fake-quant forward on the cached mini teachers, at several bit
widths: integer reference, onnxruntime with optimisations off and on (docs/deploy.md). Needs the optional `export`
extra. Writes nothing; prints one markdown table.

    MIMIQ_CACHE=.cache python scripts/export_check.py [--models vit_mini,swin_mini] [--bits w4a4,w4a8,w8a8,w2a4]
        [--limit N]

Each student is the teacher fake-quantized with the `mimiq` scheme and calibrated on 32 images of the mini train
split (PTQ, no QAT): an equivalence check, not an accuracy result. A teacher that is not cached is skipped with the
command that trains it (`python train.py model=<name>`, ~13 min on 2 cores).
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from mimiq.config import compose  # noqa: E402
from mimiq.data import build_dataset  # noqa: E402
from mimiq.export import onnx as qdq  # noqa: E402
from mimiq.export.report import check_forwards  # noqa: E402
from mimiq.export.run import eval_batches  # noqa: E402
from mimiq.models import model_data_config  # noqa: E402
from mimiq.models.attention import swap_attention  # noqa: E402
from mimiq.models.teacher import load_or_train_teacher, teacher_dir  # noqa: E402
from mimiq.quant import QuantSpec  # noqa: E402
from mimiq.quant.convert import build_student  # noqa: E402

FORWARDS = ("integer reference", "onnxruntime, optimisations off", "onnxruntime, optimisations on")


def cell(c: dict) -> str:
    return f"{c['max_rel_diff']:.1e} / {c['within_rounding']:.2f} / {c['top1_agree']:.2f} ({c['top1']:.2f})"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="vit_mini,swin_mini", help="comma-separated model configs (mini teachers)")
    p.add_argument("--bits", default="w4a4,w4a8,w8a8,w2a4", help="comma-separated bits configs")
    p.add_argument("--limit", type=int, default=None, help="first N evaluation images (default: all)")
    args = p.parse_args(argv)
    missing = qdq.missing_extra()
    if missing:
        print(f"export_check: {missing}", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    rows = []
    for model in args.models.split(","):
        base = compose([f"model={model}"])
        if not (teacher_dir(base) / "teacher.pt").is_file():
            print(f"skipped {model}: no cached teacher in {teacher_dir(base)} (python train.py model={model})")
            continue
        teacher, _ = load_or_train_teacher(base, torch.device("cpu"))
        swap_attention(teacher)
        data_config = model_data_config(teacher)
        train = build_dataset(base.data, "train", data_config, base.paths.cache_dir)
        calib = torch.stack([train[i][0] for i in range(32)])
        for bits in args.bits.split(","):
            cfg = compose([f"model={model}", f"bits={bits}"])
            student, _ = build_student(teacher, QuantSpec.from_cfg(cfg.quant), calib)
            student.eval()
            loader = eval_batches(cfg, student, args.limit)
            data, info = qdq.to_onnx(student, tuple(data_config["input_size"]))
            r = check_forwards(student, data, loader)
            c, f64 = r["compare"], r["float64_check"]
            rows.append(
                f"| {model} {bits} | {c['fake-quant']['top1']:.2f} | "
                + " | ".join(cell(c[k]) for k in FORWARDS)
                + f" | {f64['max_abs_diff']:.1e} | {info['opset']} | {r['accumulator_bits']} |"
            )
            print(rows[-1], flush=True)
    print(
        "\n| PTQ student | fake-quant top-1 | integer reference | onnxruntime, opt. off | onnxruntime, opt. on "
        "| float64 int. ref. max diff | opset | accumulator bits |\n|---|---|---|---|---|---|---|---|"
    )
    print("\n".join(rows))
    print(
        "\ncells: max relative logit difference to fake-quant / images differing by float rounding only (%) / top-1 "
        "agreement (%) (top-1 %)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
