"""GPU speed of the paper's setting: DeiT-S 224 px (random init), MimiQ generation and QAT throughput.

    python scripts/gpu_speed.py [--out results/mini/gpu_speed.md]   # one GPU, < 10 min (no variant starts after 6)
    python scripts/gpu_speed.py --smoke                              # CPU check of the machinery: batch 2, 2 steps

For fp32 and bf16 autocast, each eager and under torch.compile, measures
  * teacher fwd+bwd: the teacher's bare forward + CE + backward to the pixels (images / s), at the generation batch;
  * generation:      one MimiQ step, the loop body of `mimiq.synth.mimiq.mimiq_batch` (its transform, context,
                     loss terms and optimiser step: images x iterations / s), and its time over the bare pass's;
  * QAT:             one step of `mimiq.distill.qat.train_qat` at W4/A4 with KD + HSAD (the CPU-side
                     `SyntheticAugment` of the batch, transfer, teacher no-grad forward, student forward, loss,
                     backward, SGD step, the loop's `.item()` logging): images / s; and the same step without the
                     augmentation (images already on the device).
Batch sizes are the paper budget's (generator 16, QAT 16; --gen-batch / --qat-batch change them). Weights are
random (timm `deit_small_patch16_224`, pretrained=False): throughput does not depend on them.

Under torch.compile the teacher and the student are compiled whole (`torch.compile(model)`); the losses,
transforms and optimiser steps stay eager. The attention hooks (`mimiq.models.attention.capture`) are registered once
per measurement, before a fresh compilation (Dynamo does not see hooks added to a module after its first compiled
call), and the graphs are then reused step after step. (`train_qat` and `mimiq_batch` register them per step /
per batch: under torch.compile as they stand, the hooks would not fire.) A variant whose compilation fails
is reported as such; variants not started within --budget-s seconds are reported as skipped.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402

from mimiq.distill.augment import SyntheticAugment  # noqa: E402
from mimiq.distill.losses import distill_loss  # noqa: E402
from mimiq.distill.qat import build_optimizer  # noqa: E402
from mimiq.models.attention import capture, swap_attention  # noqa: E402
from mimiq.models.registry import create_model, model_data_config  # noqa: E402
from mimiq.quant import QuantSpec  # noqa: E402
from mimiq.quant.convert import build_student  # noqa: E402
from mimiq.synth import core  # noqa: E402
from mimiq.synth.augment import mimiq_transform  # noqa: E402
from mimiq.synth.losses import interhead_loss, tv_prior_mimiq  # noqa: E402
from mimiq.utils.seed import autocast  # noqa: E402

DEFAULT_MODEL = "deit_small_patch16_224"
COLUMNS = [
    "teacher fwd+bwd img/s",
    "generation img*it/s",
    "generation / bare (time)",
    "QAT img/s",
    "QAT img/s, no augment",
    "peak GiB",
]


def compose_cfg(model: str, overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(
            "train",
            overrides=[
                f"model={model}",
                "model.pretrained=false",
                "model.train_teacher=false",
                "budget=paper",
                "bits=w4a4",
                *overrides,
            ],
        )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step, device: torch.device, warmup: int, steps: int) -> float:
    """Median seconds per call of `step` after `warmup` calls (compilation happens there)."""
    for _ in range(warmup):
        step()
    sync(device)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# ------------------------------------------------------------------------------------------------ the steps


def bare_step(teacher_fn, n: int, shape: tuple[int, ...], classes: int, precision: str, device: torch.device):
    """Teacher forward + CE + backward to the pixels (weights frozen)."""
    x = torch.randn(n, *shape, device=device).requires_grad_()
    y = torch.randint(0, classes, (n,), device=device)

    def step() -> None:
        x.grad = None
        with autocast(precision, device):
            logits = teacher_fn(x).float()
        F.cross_entropy(logits, y).backward()

    return step


def gen_step(ctx, teacher_fn, qk: list, n: int):
    """The loop body of `mimiq.synth.mimiq.mimiq_batch` on n images, the teacher called through `teacher_fn`."""
    g, gen = ctx.gen_cfg, torch.Generator().manual_seed(0)
    x, y = core.init_pixels(ctx, n, gen), core.random_labels(ctx, n, gen)
    opt = torch.optim.AdamW([x], lr=g.lr, betas=tuple(g.betas), eps=g.eps, weight_decay=g.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=g.iterations, eta_min=g.lr_min)
    it = [0]

    def step() -> None:
        x_aug = mimiq_transform(x, it[0] % g.iterations, g, gen)
        qk.clear()
        logits = ctx.forward(teacher_fn, x_aug)
        ih = interhead_loss(qk, ctx.grids, ctx.drop_cls)
        loss = g.w_interhead * ih + g.w_ce * F.cross_entropy(logits, y) + g.w_tv * tv_prior_mimiq(x)
        core.step(opt, loss)
        sched.step()
        ctx.clamp_(x)
        loss.detach()  # the loop's curves keep detached values (no sync)
        it[0] += 1

    return step


def qat_step(
    cfg,
    student,
    student_fn,
    teacher_fn,
    s_av: list,
    t_av: list,
    images,
    labels,
    data_config,
    precision: str,
    device: torch.device,
    augment: bool,
):
    """One `train_qat` step: CPU augmentation of the batch (if `augment`), transfer, forward passes, KD + HSAD,
    backward, SGD step, `.item()` of every term. Without `augment` the batch is already on the device."""
    opt = build_optimizer([p for p in student.parameters() if p.requires_grad], cfg.optim)
    aug = SyntheticAugment(cfg.qat.augment, data_config["mean"], data_config["std"], images.shape[-1])
    on_device = images.to(device), labels.to(device)
    drop_cls = cfg.model.family == "vit"

    def step() -> None:
        if augment:
            x, y = aug(images).to(device), labels.to(device)
        else:
            x, y = on_device
        s_av.clear()
        t_av.clear()
        with autocast(precision, device):
            with torch.no_grad():
                t_logits = teacher_fn(x)
            s_logits = student_fn(x)
        if not s_av or len(s_av) != len(t_av):
            raise RuntimeError(f"attention hooks fired {len(s_av)} (student) / {len(t_av)} (teacher) times")
        terms = distill_loss(s_logits, t_logits, y, s_av, t_av, cfg.distill, drop_cls)
        opt.zero_grad(set_to_none=True)
        terms["total"].backward()
        opt.step()
        [v.item() for v in terms.values()]

    return step


# ------------------------------------------------------------------------------------------------ measuring


def _callables(compiled: bool, *models):
    """The models themselves, or fresh torch.compile wrappers traced anew: hooks registered after a module's first
    compiled call are not seen by its graph (Dynamo does not guard on hooks), so every measurement recompiles
    with the hooks it has."""
    if not compiled:
        return models
    torch._dynamo.reset()
    return tuple(torch.compile(m) for m in models)


def measure(args, cfg, teacher, student, data_config, precision: str, compiled: bool, device: torch.device) -> dict:
    """Every column of one (precision, compile) variant."""
    shape, classes = tuple(data_config["input_size"]), teacher.num_classes
    cfg.precision = precision
    ctx = core.build_context(teacher, cfg, device, data_config)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(args.qat_batch, *shape, generator=gen).clamp(-2, 2)
    labels = torch.randint(0, classes, (args.qat_batch,), generator=gen)
    row = {}
    (teacher_fn,) = _callables(compiled, teacher)
    t_bare = timed(
        bare_step(teacher_fn, args.gen_batch, shape, classes, precision, device), device, args.warmup, args.steps
    )
    row[COLUMNS[0]] = args.gen_batch / t_bare
    with capture(teacher, "matmul_qk") as qk:
        (teacher_fn,) = _callables(compiled, teacher)
        t_gen = timed(gen_step(ctx, teacher_fn, qk, args.gen_batch), device, args.warmup, args.steps)
    row[COLUMNS[1]], row[COLUMNS[2]] = args.gen_batch / t_gen, t_gen / t_bare
    with capture(teacher, "matmul_av") as t_av, capture(student, "matmul_av") as s_av:
        teacher_fn, student_fn = _callables(compiled, teacher, student)
        for col, augment in ((COLUMNS[3], True), (COLUMNS[4], False)):
            step = qat_step(
                cfg,
                student,
                student_fn,
                teacher_fn,
                s_av,
                t_av,
                images,
                labels,
                data_config,
                precision,
                device,
                augment,
            )
            row[col] = args.qat_batch / timed(step, device, args.warmup, args.steps)
    row[COLUMNS[5]] = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return row


def fmt(v) -> str:
    if isinstance(v, str):
        return v
    return "–" if v != v else (f"{v:.2f}" if v < 10 else f"{v:.0f}")


def markdown(args, device: torch.device, rows: list[tuple[str, str, dict | str]], wall: float) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    lines = [
        f"# GPU speed: {args.model}, random init",
        "",
        f"`python scripts/gpu_speed.py{' --smoke' if args.smoke else ''}"
        f"{'' if args.model == DEFAULT_MODEL else ' --model ' + args.model}` on {name}, torch {torch.__version__}; "
        f"generation batch {args.gen_batch}, QAT batch {args.qat_batch} (W4/A4, KD + HSAD); median of {args.steps} "
        f"steps after {args.warmup} warm-up steps; {wall:.0f} s in all. Steps: see the script's docstring.",
        "",
        "| precision | torch.compile | " + " | ".join(COLUMNS) + " |",
        "|---|---|" + "---:|" * len(COLUMNS),
    ]
    for precision, comp, row in rows:
        cells = (
            [fmt(row.get(c, float("nan"))) for c in COLUMNS]
            if isinstance(row, dict)
            else [row] + [""] * (len(COLUMNS) - 1)
        )
        lines.append(f"| {precision} | {comp} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="also write the markdown here")
    ap.add_argument("--smoke", action="store_true", help="CPU, batch 2, 2 steps, no compile: checks the machinery")
    ap.add_argument("--model", default=DEFAULT_MODEL, help="a conf/model name (default DeiT-S)")
    ap.add_argument("--device", default=None, help="default: cuda if available (cpu with --smoke)")
    ap.add_argument("--gen-batch", type=int, default=None, help="default: the paper budget's generator batch")
    ap.add_argument("--qat-batch", type=int, default=None, help="default: the paper budget's QAT batch")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per measurement (default 20, smoke 2)")
    ap.add_argument("--warmup", type=int, default=None, help="warm-up steps per measurement (default 3, smoke 1)")
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--compile", choices=["off", "on", "both"], default=None, help="default: both (smoke: off)")
    ap.add_argument("--budget-s", type=float, default=360, help="no new variant starts after this many seconds")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's; smoke: 1)")
    args = ap.parse_args(argv)
    smoke = args.smoke
    args.device = args.device or ("cpu" if smoke or not torch.cuda.is_available() else "cuda")
    args.steps = args.steps or (2 if smoke else 20)
    args.warmup = args.warmup if args.warmup is not None else (1 if smoke else 3)
    args.compile = args.compile or ("off" if smoke else "both")
    device = torch.device(args.device)
    if args.threads or smoke:
        torch.set_num_threads(args.threads or 1)
    t_start = time.perf_counter()

    cfg = compose_cfg(args.model, [f"device={device.type}"])
    args.gen_batch = args.gen_batch or (2 if smoke else cfg.generator.batch_size)
    args.qat_batch = args.qat_batch or (2 if smoke else cfg.qat.batch_size)
    torch.manual_seed(0)
    teacher = create_model(cfg.model).eval().requires_grad_(False)
    swap_attention(teacher)
    teacher.to(device)
    data_config = model_data_config(teacher)
    calib = torch.randn(args.qat_batch, *data_config["input_size"], device=device).clamp(-2, 2)
    student, _ = build_student(teacher, QuantSpec.from_cfg(cfg.quant), calib)
    student.eval()

    rows = []
    compiles = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    precisions = args.precisions.split(",")
    variants = [(p, c) for c in compiles for p in (reversed(precisions) if c else precisions)]  # compiled bf16 first
    for precision, compiled in variants:
        label = "yes" if compiled else "no"
        if time.perf_counter() - t_start > args.budget_s:
            rows.append((precision, label, f"skipped: past --budget-s {args.budget_s:g}"))
            continue
        t0 = time.perf_counter()
        try:
            row = measure(args, cfg, teacher, student, data_config, precision, compiled, device)
        except Exception as e:  # a compile failure must not cost the other variants
            traceback.print_exc()
            row = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
        print(f"{precision} compile={label}: {time.perf_counter() - t0:.0f} s: {row}", file=sys.stderr)
        rows.append((precision, label, row))
        if args.out:  # after every variant: a run cut short still leaves what it measured
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(markdown(args, device, rows, time.perf_counter() - t_start))
    text = markdown(args, device, rows, time.perf_counter() - t_start)
    print(text)
    return text


if __name__ == "__main__":
    main()
