"""Convergence of a synthetic set against its generation budget: the set's measures at several iteration counts.

Each point is a set generated from scratch with `generator.iterations = n` (the learning-rate schedule, the
roll schedule and the noise annealing all follow n), through the set cache (`synthesize_or_load`), so a rerun
reads the points back and the bench reuses a set of the same config. A generator's mini budget is read off its
own curve (`choose_iterations`): the fewest iterations where the set meets the convergence targets
(`mimiq.synth.quality`), else where the curve flattens, never above a cost cap; never from a QAT result.

Measures per point: label agreement, classes predicted, largest class share (the targets), the inter-head
attention |SSIM| and signed SSIM of the teacher on the clean images (the paper's Fig. 1 quantity), L_IH on the
clean images (MimiQ's own term, mean 1 − SSIM² with the diagonal; 0.75 at most with 4 heads), the same
agreement, |SSIM| and L_IH averaged over the 8 circular one-pixel shifts of the images, the last step's CE under
the generator's transform, and the wall seconds of the generation.

The shifted measures tell a set that the teacher reads as a real image apart from one fitted to the patch grid:
a teacher trained with rolls reads real images alike at every shift, while pixels optimised without a sub-patch
roll can reach full agreement and high |SSIM| at the one grid phase they were made at and lose both one pixel
away.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from pathlib import Path

import torch
from omegaconf import DictConfig, open_dict
from torch import Tensor, nn

from mimiq.models.attention import capture
from mimiq.models.registry import model_data_config
from mimiq.synth.core import Context, build_context
from mimiq.synth.generate import GENERATORS, mean_abs_ssim, synthesize_or_load
from mimiq.synth.losses import interhead_loss
from mimiq.synth.quality import AGREEMENT_TARGET, MAX_CLASS_SHARE, quality_targets_met
from mimiq.utils.io import atomic_write

FIELDS = (
    "teacher",
    "generator",
    "iterations",
    "num_images",
    "seed",
    "label_agreement",
    "classes_predicted",
    "max_class_share",
    "converged",
    "interhead_abs_ssim",
    "interhead_ssim",
    "interhead_loss",
    "shift_label_agreement",
    "shift_interhead_abs_ssim",
    "shift_interhead_loss",
    "final_ce",
    "time_s",
    "precision",
)
FLAT_POINTS = 5.0  # agreement gain (points) per step of the curve below which it has flattened


@torch.no_grad()
def clean_interhead_loss(ctx: Context, images: Tensor, batch_size: int = 128) -> float:
    """L_IH of the teacher on `images` (N, 3, H, W) as they are (no transform): MimiQ's own term, image-weighted."""
    total = 0.0
    with capture(ctx.teacher, "matmul_qk") as qk:
        for chunk in images.split(batch_size):
            qk.clear()
            ctx.forward(ctx.teacher, chunk.to(ctx.device))
            total += interhead_loss(qk, ctx.grids, ctx.drop_cls).item() * len(chunk)
    return total / len(images)


SHIFTS = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0))


@torch.no_grad()
def set_measures(ctx: Context, images: Tensor, labels: Tensor, batch_size: int = 128) -> dict[str, float]:
    """Label agreement (%), inter-head |SSIM| and L_IH of the teacher on `images` (N, 3, H, W) with target
    `labels` (N,), each image-weighted over the set."""
    sums = {"label_agreement": 0.0, "interhead_abs_ssim": 0.0, "interhead_loss": 0.0}
    with capture(ctx.teacher, "matmul_qk") as qk:
        for x, y in zip(images.split(batch_size), labels.split(batch_size), strict=True):
            qk.clear()
            logits = ctx.forward(ctx.teacher, x.to(ctx.device))
            sums["label_agreement"] += 100.0 * (logits.argmax(-1).cpu() == y.cpu()).sum().item()
            sums["interhead_abs_ssim"] += mean_abs_ssim(qk, ctx) * len(x)
            sums["interhead_loss"] += interhead_loss(qk, ctx.grids, ctx.drop_cls).item() * len(x)
    return {k: v / len(images) for k, v in sums.items()}


def shifted_measures(ctx: Context, images: Tensor, labels: Tensor, batch_size: int = 128) -> dict[str, float]:
    """`set_measures` averaged over the 8 circular shifts of the images by one pixel (`SHIFTS`), keys prefixed
    `shift_`."""
    per = [set_measures(ctx, torch.roll(images, s, dims=(2, 3)), labels, batch_size) for s in SHIFTS]
    return {f"shift_{k}": sum(m[k] for m in per) / len(per) for k in per[0]}


def _with_iterations(cfg: DictConfig, iterations: int) -> DictConfig:
    out = copy.deepcopy(cfg)
    with open_dict(out):
        out.generator.iterations = iterations
    return out


def measure_point(teacher: nn.Module, cfg: DictConfig, device: torch.device, name: str = "") -> dict:
    """One point of a curve: the set of `cfg` (generated or read from the cache) and its measures (`FIELDS`).

    Args:
        teacher: the FP classifier, frozen, eval, on `device` (with or without our attention modules).
        cfg: the run config; its `generator` (iterations included), `seed`/`synth_seed` and `paths.cache_dir`
            decide the set.
        device: where the teacher runs.
        name: the teacher's label in the row.
    """
    g = cfg.generator
    synth = synthesize_or_load(teacher, cfg, device)
    ctx = build_context(teacher, cfg, device, model_data_config(teacher))
    meta = synth.meta
    curves = meta.get("loss_curves") or {}
    return {
        "teacher": name,
        "generator": g.name,
        "iterations": int(g.iterations) if GENERATORS[g.name][1] else 0,
        "num_images": len(synth),
        "seed": meta["seed"],
        "label_agreement": meta["synth_label_agreement"],
        "classes_predicted": meta["synth_classes_predicted"],
        "max_class_share": meta["synth_max_class_share"],
        "converged": quality_targets_met(meta),
        "interhead_abs_ssim": meta["interhead_abs_ssim"],
        "interhead_ssim": meta["interhead_ssim"],
        "interhead_loss": clean_interhead_loss(ctx, synth.images, g.batch_size),
        **shifted_measures(ctx, synth.images, synth.labels, g.batch_size),
        "final_ce": float(curves["ce"][-1]) if curves.get("ce") else math.nan,
        "time_s": meta["time_s"],
        "precision": cfg.precision,  # of the forward passes that made (if optimised) and measured the set
    }


def convergence_curve(
    teacher: nn.Module, cfg: DictConfig, device: torch.device, iterations: Sequence[int], name: str = ""
) -> list[dict]:
    """The points of `cfg.generator`'s curve at each budget in `iterations` (one point, iterations 0, for a
    generator that does not optimise: noise, real). See `measure_point`.

    Raises:
        ValueError: an empty or non-positive budget list, or a budget the generator cannot split into its rounds.
    """
    if not iterations or min(iterations) < 1:
        raise ValueError(f"iterations must be positive budgets, got {list(iterations)}")
    g = cfg.generator
    if not GENERATORS[g.name][1]:
        return [measure_point(teacher, cfg, device, name)]
    rounds = g.get("rounds") or 1
    bad = [n for n in iterations if n % rounds]
    if bad:
        raise ValueError(f"generator={g.name} splits its iterations into {rounds} rounds; {bad} do not divide")
    return [measure_point(teacher, _with_iterations(cfg, n), device, name) for n in sorted(iterations)]


POINT_COST = {"psaq_v2": 5.0, "psaq": 2.0}  # a point's cost per iteration relative to MimiQ's (1), wall time on 2 cores


def point_tasks(
    teachers: Sequence[str], generators: Sequence[str], iterations: dict[str, Sequence[int]]
) -> list[tuple[str, str, list[int]]]:
    """The curves' units of work, (teacher, generator, budgets), costliest first, for side-by-side workers: one
    per point of a generator that optimises pixels (each point is generated from scratch, so the points of a
    curve are independent), one per set that optimises nothing (noise, real: a single point, last)."""
    out = []
    for t in teachers:
        for g in generators:
            optimises = GENERATORS[g][1]
            budgets = [[n] for n in sorted(iterations[g])] if optimises else [list(iterations[g])[:1]]
            out += [(t, g, b, -b[0] * POINT_COST.get(g, 1.0) if optimises else 0.0) for b in budgets]
    return [(t, g, b) for t, g, b, _ in sorted(out, key=lambda task: task[3])]


def choose_iterations(points: Sequence[dict], cap: int, flat: float = FLAT_POINTS) -> tuple[int, str]:
    """The budget read off one generator's curve, and why: the fewest iterations (<= cap) whose set meets the
    convergence targets; else the first point after which agreement gains less than `flat` points; else the
    largest budget within the cap.

    Args:
        points: rows of one (teacher, generator) curve, as from `convergence_curve`.
        cap: the most iterations allowed (the cost cap).
        flat: agreement gain in points to the next point below which the curve has flattened.
    """
    pts = sorted((p for p in points if 0 < p["iterations"] <= cap), key=lambda p: p["iterations"])
    if not pts:
        raise ValueError(f"no point of the curve within the cap of {cap} iterations")
    for p in pts:
        if p["converged"]:
            return p["iterations"], "meets the targets"
    for p, nxt in zip(pts, pts[1:], strict=False):
        if nxt["label_agreement"] - p["label_agreement"] < flat:
            return p["iterations"], f"flattens (next point +{nxt['label_agreement'] - p['label_agreement']:.1f})"
    return pts[-1]["iterations"], "the cap (still rising)"


def write_csv(rows: Sequence[dict], path: str | Path) -> None:
    """The points as CSV (columns `FIELDS`), written atomically."""
    lines = [",".join(FIELDS)]
    for r in rows:
        lines.append(",".join(f"{r[k]:.4f}" if isinstance(r[k], float) else str(r[k]) for k in FIELDS))
    atomic_write(path, lambda f: f.write(("\n".join(lines) + "\n").encode()))


def read_csv(path: str | Path) -> list[dict]:
    """The points of a `write_csv` file, typed as `measure_point` returns them; [] if there is none."""
    import csv

    path = Path(path)
    if not path.is_file():
        return []
    ints = ("iterations", "num_images", "seed", "classes_predicted")
    rows = []
    for r in csv.DictReader(path.open()):
        row: dict = {k: r[k] for k in ("teacher", "generator")}
        row["precision"] = r.get("precision") or "fp32"  # files written before the column: fp32 sets
        row.update({k: int(r[k]) for k in ints}, converged=r["converged"] == "True")
        row.update({k: float(r[k]) for k in FIELDS if k not in row})
        rows.append(row)
    return rows


def merge_rows(old: Sequence[dict], new: Sequence[dict]) -> list[dict]:
    """`old` without the points that `new` measures again (same teacher, generator, iterations), then `new`."""
    key = lambda r: (r["teacher"], r["generator"], r["iterations"])  # noqa: E731
    fresh = {key(r) for r in new}
    return [r for r in old if key(r) not in fresh] + list(new)


PANELS = (
    ("label_agreement", "label agreement (%)"),
    ("max_class_share", "largest class (%)"),
    ("interhead_abs_ssim", "inter-head |SSIM|"),
    ("interhead_loss", "L_IH, clean images"),
    ("time_s", "wall s per set"),
)


def plot_convergence(rows: Sequence[dict], path: str | Path) -> None:
    """One panel per measure against iterations (log 2), a line per (teacher, generator); the sets without
    optimisation (noise, real: iterations 0) as dashed horizontal lines. Written atomically as a PNG."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PANELS), figsize=(3.3 * len(PANELS), 3.2), squeeze=False)
    curves: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        curves.setdefault((r["teacher"], r["generator"]), []).append(r)
    for ax, (key, label) in zip(axes[0], PANELS, strict=True):
        for j, ((teacher, gen), pts) in enumerate(curves.items()):
            pts = sorted(pts, key=lambda p: p["iterations"])
            tag = f"{gen} ({teacher})" if teacher else gen
            if pts[0]["iterations"] == 0:
                if key != "time_s":
                    ax.axhline(pts[0][key], ls="--", lw=1, color=f"C{j}", label=tag)
                continue
            ax.plot([p["iterations"] for p in pts], [p[key] for p in pts], "o-", ms=3, lw=1, color=f"C{j}", label=tag)
        ax.set_xscale("log", base=2)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("iterations", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0][0].axhline(AGREEMENT_TARGET, color="grey", lw=0.5)
    axes[0][1].axhline(MAX_CLASS_SHARE, color="grey", lw=0.5)
    axes[0][0].legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write(path, lambda f: f.write(buf.getvalue()))
