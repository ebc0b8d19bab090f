"""Did generation converge? Label agreement, class balance and final losses of a synthetic set.

Read these before any accuracy: a set whose images the teacher does not give their target class, or that
collapses into a few classes, trains a student on a distribution that has little to do with the teacher's.
Targets at the mini budget (docs/mini.md, 'The mini benchmark'): agreement >= 85 %, every class predicted, no
class > 25 % of the set.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor, nn

from mimiq.utils.io import atomic_write

AGREEMENT_TARGET = 85.0  # %: teacher argmax on the clean image == the image's target label
MAX_CLASS_SHARE = 25.0  # %: of the set in the teacher's most predicted class


@torch.no_grad()
def set_quality(
    teacher: nn.Module,
    images: Tensor,
    labels: Tensor,
    num_classes: int,
    batch_size: int = 128,
    curves: dict[str, list[float]] | None = None,
) -> dict:
    """Convergence measures of a set; every key starts with `synth_`.

    Args:
        teacher: FP classifier in eval mode (its device is used).
        images: (N, 3, H, W) normalised; labels: (N,) the targets they were generated for (psaq_v2: the teacher's
            own predictions, so its agreement is 100 % by construction; noise: random, ~chance).
        num_classes: classes of the teacher.
        curves: per-step loss terms (mean over shards), term -> (iterations,); the last value of each is reported.

    Returns:
        synth_label_agreement (%), synth_class_hist (teacher-predicted class counts), synth_class_entropy (nats of
        that histogram; ln(num_classes) = uniform), synth_class_entropy_max, synth_classes_predicted,
        synth_max_class_share (%), synth_teacher_confidence (mean max softmax), synth_final_<term> per curve.
    """
    device = next(teacher.parameters()).device
    preds, conf = [], []
    for chunk in images.split(batch_size):
        p = teacher(chunk.to(device)).float().softmax(-1).cpu()
        preds.append(p.argmax(-1))
        conf.append(p.max(-1).values)
    pred = torch.cat(preds)
    hist = torch.bincount(pred, minlength=num_classes)
    share = hist.float() / len(pred)
    entropy = -(share[share > 0] * share[share > 0].log()).sum().item()
    out = {
        "synth_label_agreement": 100.0 * (pred == labels.cpu()).float().mean().item(),
        "synth_class_hist": hist.tolist(),
        "synth_class_entropy": entropy,
        "synth_class_entropy_max": math.log(num_classes),
        "synth_classes_predicted": int((hist > 0).sum()),
        "synth_max_class_share": 100.0 * share.max().item(),
        "synth_teacher_confidence": torch.cat(conf).mean().item(),
    }
    out.update({f"synth_final_{k}": float(v[-1]) for k, v in (curves or {}).items() if len(v)})
    return out


def quality_targets_met(q: dict) -> bool:
    """agreement >= AGREEMENT_TARGET, every class predicted, no class above MAX_CLASS_SHARE."""
    every_class = q["synth_classes_predicted"] == len(q["synth_class_hist"])
    balanced = q["synth_max_class_share"] <= MAX_CLASS_SHARE
    return q["synth_label_agreement"] >= AGREEMENT_TARGET and every_class and balanced


def format_quality(q: dict) -> str:
    finals = ", ".join(f"{k[len('synth_final_') :]} {v:.4g}" for k, v in q.items() if k.startswith("synth_final_"))
    return (
        f"label agreement {q['synth_label_agreement']:.1f} %, classes {q['synth_classes_predicted']}/"
        f"{len(q['synth_class_hist'])}, largest class {q['synth_max_class_share']:.1f} %, class entropy "
        f"{q['synth_class_entropy']:.3f}/{q['synth_class_entropy_max']:.3f} nats"
        + (f"; final losses {finals}" if finals else "")
    )


def plot_curves(curves: dict[str, list[float]], path: str | Path, title: str = "") -> None:
    """One panel per loss term, per step (mean over the set's batches), written atomically as a PNG."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(3 * len(curves), 2.6), squeeze=False)
    for ax, (k, v) in zip(axes[0], curves.items(), strict=True):
        ax.plot(range(1, len(v) + 1), v, lw=1)
        ax.set_title(k, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write(path, lambda f: f.write(buf.getvalue()))
