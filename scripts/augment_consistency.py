"""How the teacher reads the QAT augmentation's views of each training set: the check behind
`qat.augment.synthetic` (conf/budget/mini.yaml).

    python scripts/augment_consistency.py                                   # the three mini teachers
    python scripts/augment_consistency.py --teachers vit_mini --generators real,mimiq --draws 4
    python scripts/augment_consistency.py qat.augment.jitter_p=0 qat.augment.grayscale_p=0 qat.augment.blur_frac=0 \
        qat.augment.crop_scale=[0.8,1.0]                                      # a milder augmentation: crop + flip

For each teacher and generator, the bench's seed-0 set (read from the set cache, generated if missing) is viewed
through the paper code's QAT augmentation (`mimiq.distill.augment.SyntheticAugment`, drawn per image, the run's
`qat.augment` settings, Hydra overrides included, with the augmentation on), and
`mimiq.distill.augment.augment_consistency` prints the share of views the teacher gives the class it gives the clean
image, the share read as the set's label, and KL(clean || view). One thread; a few seconds per set.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import torch  # noqa: E402
from omegaconf import open_dict  # noqa: E402

from mimiq.config import compose  # noqa: E402
from mimiq.distill.augment import SyntheticAugment, augment_consistency  # noqa: E402
from mimiq.models.registry import model_data_config  # noqa: E402
from mimiq.report import bench  # noqa: E402


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teachers", default="vit_mini,vit_mini.t1,swin_mini", help="comma list of teacher instances")
    ap.add_argument("--generators", default="real,noise,psaq,mimiq", help="comma list")
    ap.add_argument("--draws", type=int, default=8, help="augmented views per image")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. qat.augment.crop_scale=[0.8,1]")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    memo: dict = {}
    rows = []
    print("teacher       generator  clean agreement  view keeps class  view matches label  KL(clean || view)")
    for teacher in args.teachers.split(","):
        cfg = compose([*bench.teacher_overrides(teacher), "logger=none", *args.overrides])
        aug_cfg = cfg.qat.augment.copy()
        with open_dict(aug_cfg):
            aug_cfg.enabled, aug_cfg.per_sample = True, True
        for gen in args.generators.split(","):
            stage, synth = bench.synthetic_set(teacher, gen, memo)
            dc = model_data_config(stage.teacher)
            augment = SyntheticAugment(aug_cfg, dc["mean"], dc["std"], synth.images.shape[-1])
            torch.manual_seed(0)
            r = augment_consistency(stage.teacher.eval(), synth.images, synth.labels, augment, args.draws)
            rows.append({"teacher": teacher, "generator": gen, **r})
            print(
                f"{teacher:<13} {gen:<10} {r['clean_agreement']:>14.1f} % {r['keeps_class']:>15.1f} % "
                f"{r['matches_label']:>17.1f} % {r['kl']:>18.3f}",
                flush=True,
            )
    return rows


if __name__ == "__main__":
    main()
