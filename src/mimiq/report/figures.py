"""The mini benchmark's accuracy figure: top-1 against bit width, one panel per teacher instance."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from mimiq.report.stats import Stats, bits_title  # noqa: E402


def plot_accuracy(stats: Stats, teachers: list[str], methods: Sequence, bits: list[str], path: Path) -> None:
    """One panel per teacher instance; one fixed colour per method (`methods`: Method objects of
    mimiq.report.methods, their `colour` from conf/method/), markers (bit widths are categories, no lines between
    them), error bars = std over seeds, the teacher's FP as a dashed line, one legend for all panels."""
    fig, axes = plt.subplots(1, len(teachers), figsize=(4.5 * len(teachers), 3.8), squeeze=False, sharey=True)
    offsets = {m.id: (i - (len(methods) - 1) / 2) * 0.08 for i, m in enumerate(methods)}
    for ax, teacher in zip(axes[0], teachers, strict=True):
        for m in methods:
            pts = [(i, stats[(teacher, m.id, b)]) for i, b in enumerate(bits) if (teacher, m.id, b) in stats]
            if pts:
                ax.errorbar(
                    [p[0] + offsets[m.id] for p in pts],
                    [p[1][0] for p in pts],
                    [p[1][1] for p in pts],
                    marker="o",
                    ls="none",
                    color=m.colour,
                    label=m.label,
                    capsize=3,
                )
        ax.axhline(stats[(teacher, "fp", "w32a32")][0], color="k", ls="--", lw=1, label="FP")
        ax.set_xticks(range(len(bits)), [bits_title(b) for b in bits])
        ax.set_title(teacher)
        ax.set_ylabel("top-1 (%)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8)
    fig.tight_layout(rect=(0, 0.16, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
