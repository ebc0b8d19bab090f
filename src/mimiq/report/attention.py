"""Attention analysis of synthetic sets: inter-head similarity per set, its bar chart, and the attention maps of
one query patch head by head (the paper's Fig. 1 analogue)."""

from __future__ import annotations

import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from mimiq.models.attention import capture  # noqa: E402


def similarity_row(teacher: str, source: str, synth, grids: Path | None = None) -> dict:
    """One row of attention_similarity.csv for a synthetic set (its meta's inter-head SSIM); copies the set's
    grid.png (and loss_curves.png) to `grids`/<teacher>_<source>[_loss].png."""
    folder = Path(synth.meta["path"])
    if grids is not None:
        shutil.copyfile(folder / "grid.png", grids / f"{teacher}_{source}.png")
        if (folder / "loss_curves.png").is_file():
            shutil.copyfile(folder / "loss_curves.png", grids / f"{teacher}_{source}_loss.png")
    return {
        "source": source,
        "teacher": teacher,
        "interhead_ssim": synth.meta["interhead_ssim"],
        "interhead_abs_ssim": synth.meta.get("interhead_abs_ssim"),
        "num_images": len(synth.images),
        "set": folder.name,
    }


def plot_similarity(rows: list[dict], teachers: list[str], path: Path) -> None:
    """Mean inter-head |SSIM| per source, one bar per teacher."""
    fig, ax = plt.subplots(figsize=(7, 3.5))
    width = 0.8 / len(teachers)
    sources = list(dict.fromkeys(r["source"] for r in rows))
    for j, teacher in enumerate(teachers):
        by_source = {r["source"]: r["interhead_abs_ssim"] for r in rows if r["teacher"] == teacher}
        ax.bar(
            [i + j * width for i in range(len(sources))],
            [by_source.get(s, float("nan")) for s in sources],
            width,
            label=teacher,
        )
    ax.set_xticks([i + width * (len(teachers) - 1) / 2 for i in range(len(sources))], sources)
    ax.set_ylabel("mean inter-head attention |SSIM|")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_attention_maps(teacher_name: str, panels: list[tuple], path: Path, layer: int = -1) -> None:
    """One query patch (the centre), every head of one block, for the first image of each set. `panels`:
    (source, teacher module, images, data_config with mean/std). Softmax attention over the key patches (CLS
    dropped), on the patch grid."""
    fig = axes = None
    for row, (src, teacher, images, data_config) in enumerate(panels):
        x = images[:1]
        with torch.no_grad(), capture(teacher, "matmul_qk") as qk:
            teacher(x)
        logits = qk[layer][0]  # (heads, tokens, tokens)
        gh, gw = teacher.patch_embed.grid_size
        q = 1 + (gh // 2) * gw + gw // 2  # centre patch (+1: CLS first)
        maps = logits[:, q, 1:].softmax(-1).view(-1, gh, gw)
        if fig is None:
            fig, axes = plt.subplots(len(panels), 1 + len(maps), figsize=(2 * (1 + len(maps)), 2 * len(panels)))
        mean, std = (torch.tensor(data_config[k]).view(3, 1, 1) for k in ("mean", "std"))
        axes[row][0].imshow((x[0] * std + mean).clamp(0, 1).permute(1, 2, 0).numpy())
        axes[row][0].set_ylabel(src)
        for h, m in enumerate(maps):
            axes[row][1 + h].imshow(m.numpy(), cmap="viridis")
            axes[row][1 + h].set_title(f"head {h}", fontsize=8) if row == 0 else None
        for ax in axes[row]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"{teacher_name}: attention of the centre patch, block {layer % len(qk)}, head by head")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
