"""Where the time of one MimiQ generation step and one QAT step goes (CPU, torch.profiler), and what they cost
relative to plain forward/backward passes of the same model, measured side by side.

    python scripts/profile_steps.py [--out results/mini/profile.md] [--reps 15] [--threads 1]

Builds the mini ViT teacher architecture (`model=vit_mini`, random init: the cost does not depend on the
weights) with our attention modules, and times:
  * gen:      one MimiQ generation step on 128 images of 32x32 (the loop body of
              `mimiq.synth.generate.mimiq_batch`, iteration 0: roll, flip, annealed noise, colour jitter; teacher
              forward capturing `matmul_qk`; inter-head loss + CE + TV; backward to the pixels; AdamW; clamp);
  * bare:     teacher forward + CE + backward to the pixels of the same batch;
  * qat:      one QAT step at the configured bits (W4/A4), KD + HSAD, batch 32 (as `mimiq.distill.qat.train_qat`,
              without the data augmentation): teacher no-grad forward, student forward, loss, backward, SGD step;
  * fp_fb:    FP student (the teacher's copy, trainable) forward + the same loss + backward, plus the teacher's
              no-grad forward (no optimizer step);
  * finetune: FP fine-tuning step: FP student forward, CE, backward, SGD step (no teacher).
Ratios are medians of interleaved runs (a, b, a, b, ...), so a loaded machine slows both sides alike. With
`--compare-reference` the QAT step also runs on the composite fake-quant path (`functional.fused(False)`), the
implementation before the fused autograd functions, interleaved with the fused one.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402
from torch import Tensor, nn  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from mimiq.distill.losses import distill_loss  # noqa: E402
from mimiq.distill.qat import build_optimizer  # noqa: E402
from mimiq.models.attention import capture, swap_attention  # noqa: E402
from mimiq.models.registry import create_model, model_data_config  # noqa: E402
from mimiq.quant import QuantSpec  # noqa: E402
from mimiq.quant import functional as qf  # noqa: E402
from mimiq.quant.convert import build_student  # noqa: E402
from mimiq.synth.augment import annealed_noise, color_jitter, random_flip, roll_jitter, scale_px  # noqa: E402
from mimiq.synth.losses import interhead_loss, tv_prior_mimiq  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
Step = Callable[[], None]


def compose_cfg(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=overrides)


def frozen(model: nn.Module) -> nn.Module:
    for p in model.eval().parameters():
        p.requires_grad_(False)
    return model


def trainable(teacher: nn.Module) -> nn.Module:
    """An FP copy of the teacher with trainable weights, in eval mode (as the QAT student)."""
    model = copy.deepcopy(teacher).eval()
    for p in model.parameters():
        p.requires_grad_(True)
    return model


# ------------------------------------------------------------------------------------------------ the steps


def gen_step(teacher: nn.Module, cfg, n: int, seed: int = 0, loss_fn: Callable = interhead_loss) -> Step:
    """One MimiQ generation step on (n, 3, 32, 32) pixels (the loop body of `mimiq_batch`, iteration 0);
    `loss_fn` is the inter-head loss (another implementation can be timed in its place)."""
    g, size = cfg.generator, cfg.model.arch.img_size
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=gen).requires_grad_()
    y = torch.randint(0, 10, (n,), generator=gen)
    opt = torch.optim.AdamW([x], lr=g.lr, betas=tuple(g.betas), eps=g.eps, weight_decay=g.weight_decay)
    grids = [tuple(teacher.patch_embed.grid_size)] * len(teacher.blocks)
    limit = scale_px(g.jitter[0], size, g.ref_size)
    mean, std = (torch.tensor(model_data_config(teacher)[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    lo, hi = (0 - mean) / std, (1 - mean) / std  # the valid pixel range in normalised space

    def step() -> None:
        with capture(teacher, "matmul_qk") as qk:
            x_aug = roll_jitter(x, limit, gen)
            x_aug = random_flip(x_aug, g.flip, gen)
            x_aug = annealed_noise(x_aug, 0, g.iterations, g.noise_std, gen)
            x_aug = color_jitter(x_aug, g.jitter_mean, g.jitter_log_std, gen)
            logits = teacher(x_aug)
            loss = (
                g.w_interhead * loss_fn(qk, grids, True)
                + g.w_ce * F.cross_entropy(logits, y)
                + g.w_tv * tv_prior_mimiq(x)
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                x.clamp_(lo, hi)

    return step


def bare_step(teacher: nn.Module, n: int, size: int) -> Step:
    """Teacher forward + CE + backward to the pixels of the same batch (no attention capture, no step)."""
    x, y = torch.randn(n, 3, size, size).requires_grad_(), torch.randint(0, 10, (n,))

    def step() -> None:
        x.grad = None
        F.cross_entropy(teacher(x), y).backward()

    return step


def qat_step(student: nn.Module, teacher: nn.Module, cfg, x: Tensor, y: Tensor, opt_step: bool = True) -> Step:
    """One `train_qat` step (KD + HSAD) on the batch x (B, 3, H, W); opt_step=False: forward + backward only."""
    opt = build_optimizer([p for p in student.parameters() if p.requires_grad], cfg.optim)

    def step() -> None:
        with torch.no_grad(), capture(teacher, "matmul_av") as t_av:
            t_logits = teacher(x)
        with capture(student, "matmul_av") as s_av:
            s_logits = student(x)
        terms = distill_loss(s_logits, t_logits, y, s_av, t_av, cfg.distill, drop_cls=True)
        opt.zero_grad(set_to_none=True)
        terms["total"].backward()
        if opt_step:
            opt.step()
        [v.item() for v in terms.values()]  # the loop's logging

    return step


def finetune_step(model: nn.Module, cfg, x: Tensor, y: Tensor) -> Step:
    """FP fine-tuning: forward, CE, backward, SGD step."""
    opt = build_optimizer(list(model.parameters()), cfg.optim)

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


class Reference:
    """Runs a step on the composite fake-quant path (the implementation before the fused functions)."""

    def __init__(self, step: Step):
        self.step = step

    def __call__(self) -> None:
        with qf.fused(False):
            self.step()


# ------------------------------------------------------------------------------------------------ measuring


def interleaved(steps: dict[str, Step], reps: int, warmup: int = 2) -> dict[str, float]:
    """Median seconds per call of each step, the steps run in turn (a, b, c, a, b, c, ...)."""
    for _ in range(warmup):
        for f in steps.values():
            f()
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(reps):
        for k, f in steps.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def top_ops(step: Step, runs: int = 3, rows: int = 12) -> tuple[list[tuple[str, float, float, int]], float]:
    """([(op, self CPU ms per step, % of self CPU total, calls per step)], self CPU ms per step in total)."""
    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(runs):
            step()
    events = list(prof.key_averages())
    total = sum(e.self_cpu_time_total for e in events)
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    return [
        (e.key, e.self_cpu_time_total / 1e3 / runs, 100 * e.self_cpu_time_total / total, e.count // runs)
        for e in events[:rows]
    ], total / 1e3 / runs


def ops_table(title: str, ops: list[tuple[str, float, float, int]], total: float) -> str:
    lines = [
        f"**{title}** (self CPU {total:.1f} ms per step under the profiler)",
        "",
        "| op | self CPU ms / step | % | calls / step |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| `{k}` | {ms:.2f} | {pct:.1f} | {n} |" for k, ms, pct, n in ops]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "results/mini/profile.md")
    ap.add_argument("--reps", type=int, default=15, help="interleaved repetitions per ratio")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--gen-batch", type=int, default=128)
    ap.add_argument("--qat-batch", type=int, default=32)
    ap.add_argument(
        "--compare-reference",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time the QAT step on the composite fake-quant path",
    )
    ap.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. bits=w4a8")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = compose_cfg(["model=vit_mini", *args.overrides])
    size = cfg.model.arch.img_size
    teacher = frozen(create_model(cfg.model, num_classes=10))
    swap_attention(teacher)
    spec = QuantSpec.from_cfg(cfg.quant)
    x, y = torch.randn(args.qat_batch, 3, size, size), torch.randint(0, 10, (args.qat_batch,))
    student, _ = build_student(teacher, spec, torch.randn(cfg.qat.calib_size, 3, size, size))
    fp = trainable(teacher)

    steps = {
        "gen": gen_step(teacher, cfg, args.gen_batch),
        "bare": bare_step(teacher, args.gen_batch, size),
        "qat": qat_step(student, teacher, cfg, x, y),
        "fp_fb": qat_step(fp, teacher, cfg, x, y, opt_step=False),
        "finetune": finetune_step(trainable(teacher), cfg, x, y),
    }
    if args.compare_reference:
        steps["qat_ref"] = Reference(qat_step(copy.deepcopy(student), teacher, cfg, x, y))
    t0 = time.perf_counter()
    med = interleaved(steps, args.reps)
    wall = time.perf_counter() - t0
    prof = {k: top_ops(steps[k]) for k in ("gen", "qat", *(["qat_ref"] if args.compare_reference else []))}

    ratios = [
        ("generation step / bare teacher fwd+bwd (CE), same 128 images", med["gen"] / med["bare"]),
        ("QAT step / (FP student fwd+bwd + teacher no-grad fwd)", med["qat"] / med["fp_fb"]),
        ("QAT step / FP fine-tuning step (CE)", med["qat"] / med["finetune"]),
    ]
    if args.compare_reference:
        ratios += [
            ("QAT step, composite (reference) fake-quant / fused", med["qat_ref"] / med["qat"]),
            ("QAT step, composite fake-quant / (FP fwd+bwd + teacher fwd)", med["qat_ref"] / med["fp_fb"]),
            ("QAT step, composite fake-quant / FP fine-tuning step", med["qat_ref"] / med["finetune"]),
        ]
    md = [
        "# Step cost: where the time of a generation step and a QAT step goes",
        "",
        f"`python scripts/profile_steps.py{' ' + ' '.join(args.overrides) if args.overrides else ''}` "
        f"(mini ViT, random init, {spec.tag}, torch {torch.__version__}, {args.threads} thread(s), "
        f"{args.reps} interleaved repetitions, {wall:.0f} s). Ratios are medians of steps run in turn, so a "
        "loaded machine slows both sides alike; absolute milliseconds are for orientation only.",
        "",
        "| ratio | value |",
        "|---|---:|",
        *[f"| {k} | {v:.2f} |" for k, v in ratios],
        "",
        "Medians (ms, orientation only): " + ", ".join(f"{k} {v * 1e3:.1f}" for k, v in med.items()),
        "",
        "The generation step runs the FP teacher only (no fake-quant). The QAT step leaves out the data "
        "augmentation; its composite rows are the fake-quant implementation before the fused autograd functions "
        "(`mimiq.quant.functional.fused(False)`), timed interleaved with the fused one. Self CPU times come from "
        "torch.profiler, which inflates small Python-level ops (`_FakeQuant*`).",
        "",
        ops_table(f"Generation step, {args.gen_batch} images", *prof["gen"]),
        "",
        ops_table(f"QAT step, batch {args.qat_batch}, fused fake-quant", *prof["qat"]),
    ]
    if args.compare_reference:
        md += ["", ops_table(f"QAT step, batch {args.qat_batch}, composite fake-quant (before)", *prof["qat_ref"])]
    text = "\n".join(md) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
