"""Can the generators invert this teacher? Its top-1 on real images under each generator's input transform.

A generator optimises CE(f(x̃), y) on the transformed x̃ (`mimiq.synth.augment.generator_transform`). If the
teacher classifies transformed *real* images near chance, that term has no attainable target and generation
does not converge (the set collapses into the class the teacher gives to noise). The report is the gate of the
mini teacher (`INVARIANCE_GATE`): measured on real test images, never on synthetic ones.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mimiq.synth.augment import generator_transform

INVARIANCE_GATE = 80.0  # %: least top-1 on real test images under a generator's transform (mean over its schedule)
PROGRESS = (0.0, 0.25, 0.5, 0.75, 0.99)  # points of the generator's schedule (0: strongest MimiQ offset noise)


@torch.no_grad()
def invariance_report(
    teacher: nn.Module, images: Tensor, labels: Tensor, generators: dict, batch_size: int = 50, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Top-1 (%) of `teacher` on `images` under each generator's transform.

    Args:
        teacher: FP classifier in eval mode.
        images: (N, 3, H, W) normalised real images; labels: (N,) their classes.
        generators: name -> `generator` config (mimiq, psaq, psaq_v2; others have no transform).
        batch_size: images per transform draw (the roll and flip are drawn once per batch, as in generation).
        seed: the draws' seed (the same draws for every generator name).

    Returns:
        {"clean": {"top1": .}, name: {"top1": mean over PROGRESS, "worst": min over PROGRESS, "p0": ., ...}}.
    """
    device = next(teacher.parameters()).device

    def top1(fn) -> float:
        correct = 0
        for x, y in zip(images.split(batch_size), labels.split(batch_size), strict=True):
            correct += (teacher(fn(x).to(device)).argmax(-1).cpu() == y).sum().item()
        return 100.0 * correct / len(labels)

    report = {"clean": {"top1": top1(lambda x: x)}}
    for name, g in generators.items():
        gen = torch.Generator().manual_seed(seed)
        by_p = {f"p{p:g}": top1(lambda x, p=p, g=g, gen=gen: generator_transform(x, g, p, gen)) for p in PROGRESS}
        report[name] = {"top1": sum(by_p.values()) / len(by_p), "worst": min(by_p.values()), **by_p}
    return report


def format_report(report: dict) -> str:
    """One line: clean and each generator's mean (worst) top-1, and whether the gate holds."""
    parts = [f"clean {report['clean']['top1']:.1f}"]
    parts += [f"{k} {v['top1']:.1f} (worst {v['worst']:.1f})" for k, v in report.items() if k != "clean"]
    ok = all(v["top1"] >= INVARIANCE_GATE for k, v in report.items() if k != "clean")
    return (
        f"teacher top-1 on real test images under the generator transforms: {', '.join(parts)} % "
        f"(gate >= {INVARIANCE_GATE:g} %: {'met' if ok else 'NOT met'})"
    )
