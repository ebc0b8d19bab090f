"""Stage 1: the synthetic training set, generated once per (teacher, generator config, count, seed), cached.

`synthesize_or_load(teacher, cfg, device)` is the only entry point; `cfg.generator.name` picks the generator
(conf/generator/<name>.yaml holds every hyper-parameter):

    mimiq    pixels optimised from Gaussian noise so that the heads of every block attend alike: inter-head
             attention SSIM + CE to a random label + TV prior, roll jitter, annealed noise, colour jitter
             (MIMIQ_SPEC.md §2)
    noise    Gaussian noise in normalised space, clamped, random labels (no optimisation)
    psaq     PSAQ-ViT: patch-similarity entropy of the head-mean A·V + CE + |TV − v| (§6.1)
    psaq_v2  PSAQ-ViT V2, a documented reconstruction (its code was never released, §6.2): samples maximise
             KL(teacher ‖ quantized student) under the patch-similarity prior and TV, with no label term; the
             student minimises it, step by step
    real     real images of `cfg.data`'s train split with their labels (the upper bound)

The set is cut into shards of `batch_size` images, one per optimised batch; shard i is a deterministic
function of (seed, i), so an interrupted run resumes from its finished shards to the identical set
(layout in `mimiq.synth.cache`). All randomness comes from a per-shard CPU `torch.Generator`. Under DDP the
ranks split the shards round-robin (`_generate`), which for the same reason yields the same set for any world
size; psaq_v2's student restarts with every shard, so it splits exactly too.

The teacher is used as it arrives if it already carries our attention modules (`swap_attention`, FP-exact);
otherwise a deep copy gets them, so the caller's model is never modified.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import shutil
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torch.utils.data import Dataset
from tqdm import tqdm

from mimiq.data.datasets import build_dataset
from mimiq.distill.losses import psaq_v2_discrepancy
from mimiq.models.attention import SwinWindowAttention, attention_modules, swap_attention
from mimiq.models.registry import model_data_config
from mimiq.models.teacher import teacher_identity
from mimiq.quant import QuantSpec, calibrate, quantize_model
from mimiq.synth.augment import mimiq_transform, psaq_transform, scale_px
from mimiq.synth.cache import load_shard, save_grid, set_dir, set_key, shard_path, synth_seed
from mimiq.synth.losses import (
    interhead_loss,
    interhead_ssim,
    mean_interhead_similarity,
    patch_similarity_entropy,
    tv_prior_mimiq,
    tv_prior_psaq,
)
from mimiq.synth.quality import plot_curves, set_quality
from mimiq.utils import dist
from mimiq.utils.hooks import capture
from mimiq.utils.io import atomic_save_json, atomic_torch_save, git_sha
from mimiq.utils.seed import autocast

log = logging.getLogger(__name__)


@dataclass
class SyntheticSet:
    """A generated (or real) training set for QAT.

    Attributes:
        images: (N, 3, H, W) float32 in the teacher's normalised input space, within the valid pixel range.
        labels: (N,) int64 target labels (psaq_v2: the teacher's predictions; real: the true labels).
        meta: generator, key, path, reused, time_s (generation time of the set), time_generate_s (of this
            call), interhead_ssim (signed) and interhead_abs_ssim, loss_curves, config, ... (the set's meta.json
            plus the per-call fields).
    """

    images: Tensor
    labels: Tensor
    meta: dict

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class _Context:
    """Everything a generator needs, resolved once per set."""

    gen_cfg: DictConfig  # the `generator` node
    teacher: nn.Module  # FP, frozen, eval, with our attention modules
    device: torch.device
    precision: str  # fp32 | bf16 autocast of the forward passes
    family: str  # vit | swin
    grids: list[tuple[int, int]]  # key grid of every attention layer: ViT patch grid, Swin window
    shape: tuple[int, int, int]  # (3, H, W) input
    mean: Tensor  # (1, 3, 1, 1) normalisation mean, in [0, 1] pixel units
    std: Tensor  # (1, 3, 1, 1) normalisation std
    num_classes: int
    real: Dataset | None = None  # generator=real: the train split ...
    real_index: Tensor | None = None  # ... and its (N,) images chosen with the seed

    @property
    def drop_cls(self) -> bool:
        return self.family == "vit"

    def forward(self, model: nn.Module, x: Tensor) -> Tensor:
        with autocast(self.precision, self.device):
            return model(x).float()

    def clamp_(self, x: Tensor) -> None:
        """Spec §2.2 `clamp_training` (and PSAQ's `clip`): x into [(0 − μ)/σ, (1 − μ)/σ] per channel."""
        with torch.no_grad():
            x.clamp_((0 - self.mean) / self.std, (1 - self.mean) / self.std)


@dataclass
class _Batch:
    images: Tensor  # (b, 3, H, W)
    labels: Tensor  # (b,)
    curves: dict[str, Tensor]  # loss term -> (iterations,) per-step values


class _Curves:
    """Per-step loss terms of one batch; shows the latest on the progress bar."""

    def __init__(self, bar: tqdm, every: int):
        self.bar, self.every, self.steps, self.values = bar, every, 0, defaultdict(list)

    def add(self, **terms: Tensor) -> None:
        for k, v in terms.items():
            self.values[k].append(v.detach().float())
        self.steps += 1
        self.bar.update()
        if self.steps % self.every == 0:  # .item() syncs an accelerator: not every step
            self.bar.set_postfix({k: f"{v[-1].item():.4g}" for k, v in self.values.items()}, refresh=False)

    def stack(self) -> dict[str, Tensor]:
        return {k: torch.stack(v).cpu() for k, v in self.values.items()}


# ---------------------------------------------------------------------------------------------- generators


def _init_pixels(ctx: _Context, n: int, gen: torch.Generator) -> Tensor:
    """(n, 3, H, W) standard Gaussian noise in normalised space (spec §2.2 `randn`), a leaf to optimise."""
    return torch.randn((n, *ctx.shape), generator=gen).to(ctx.device).requires_grad_()


def _random_labels(ctx: _Context, n: int, gen: torch.Generator) -> Tensor:
    """(n,) labels ~ U{0 … classes − 1}, drawn once per image and fixed during its optimisation."""
    return torch.randint(0, ctx.num_classes, (n,), generator=gen).to(ctx.device)


def _step(opt: torch.optim.Optimizer, loss: Tensor) -> None:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def mimiq_batch(ctx: _Context, images: slice, gen: torch.Generator, curves: _Curves) -> _Batch:
    """MimiQ (spec §2): L = w_ih·L_IH(all blocks) + w_ce·CE(f(x̃), y) + w_tv·TV(x), AdamW + cosine, clamp."""
    g, n = ctx.gen_cfg, images.stop - images.start
    x, y = _init_pixels(ctx, n, gen), _random_labels(ctx, n, gen)
    opt = torch.optim.AdamW([x], lr=g.lr, betas=tuple(g.betas), eps=g.eps, weight_decay=g.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=g.iterations, eta_min=g.lr_min)
    with capture(ctx.teacher, "matmul_qk") as qk:
        for it in range(g.iterations):
            x_aug = mimiq_transform(x, it, g, gen)  # §2.2: the model sees x̃; TV sees x
            qk.clear()
            logits = ctx.forward(ctx.teacher, x_aug)
            # mean(1 − SSIM²) over blocks, heads, queries; w_interhead = 0 is the CE + TV-only generator
            ih = interhead_loss(qk, ctx.grids, ctx.drop_cls) if g.w_interhead else logits.new_zeros(())
            ce = F.cross_entropy(logits, y)
            tv = tv_prior_mimiq(x)
            loss = g.w_interhead * ih + g.w_ce * ce + g.w_tv * tv
            _step(opt, loss)
            sched.step()
            ctx.clamp_(x)
            curves.add(loss=loss, ih=ih, ce=ce, tv=tv)
    return _Batch(x.detach(), y, curves.stack())


def noise_batch(ctx: _Context, images: slice, gen: torch.Generator, curves: _Curves) -> _Batch:
    """Gaussian noise in normalised space, clamped to the valid range; random labels."""
    n = images.stop - images.start
    x, y = _init_pixels(ctx, n, gen).detach(), _random_labels(ctx, n, gen)
    ctx.clamp_(x)
    return _Batch(x, y, {})


def real_batch(ctx: _Context, images: slice, gen: torch.Generator, curves: _Curves) -> _Batch:
    """Real train images `real_index[images]` of `cfg.data` with their labels (no randomness of its own)."""
    items = [ctx.real[i] for i in ctx.real_index[images].tolist()]
    return _Batch(torch.stack([x for x, _ in items]), torch.as_tensor([y for _, y in items]), {})


def _warmup_cosine(base_lr: float, step: int, steps: int, warmup: int) -> float:
    """PSAQ `lr_cosine_policy`: linear warm-up over `warmup` steps, then cosine to 0 at `steps`."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / (steps - warmup))) * base_lr


def _psaq_rounds(
    ctx: _Context, x: Tensor, gen: torch.Generator, loss_fn: Callable, after_step: Callable | None = None
) -> None:
    """PSAQ's optimisation of pixels `x` (spec §6.1): Adam, `rounds` rounds of warm-up + cosine lr, each
    with its jitter limit (same offset on both axes) and a random flip; clamp after each step.

    Args:
        ctx: the set's context.
        x: (B, 3, H, W) pixels, a leaf requiring grad; optimised in place.
        gen: the batch's random generator.
        loss_fn: (x_aug, av) -> scalar loss, given the augmented batch and the list that the teacher's
            forward inside it fills with the per-head A·V (R, H, N, d_h) of every block.
        after_step: called with no argument after each pixel step (psaq_v2's student step).
    """
    g = ctx.gen_cfg
    lr = g.lr_swin if ctx.family == "swin" else g.lr
    opt = torch.optim.Adam([x], lr=lr, betas=tuple(g.betas), eps=g.eps)  # one Adam state across rounds
    steps = g.iterations // g.rounds
    warmup = max(1, round(g.warmup_frac * steps))
    with capture(ctx.teacher, "matmul_av") as av:
        for limit in (scale_px(j, ctx.shape[-1], g.ref_size) for j in g.jitter):
            for it in range(steps):
                for group in opt.param_groups:
                    group["lr"] = _warmup_cosine(lr, it, steps, warmup)
                x_aug = psaq_transform(x, limit, g, gen)
                av.clear()
                _step(opt, loss_fn(x_aug, av))
                ctx.clamp_(x)
                if after_step is not None:
                    after_step()


def _pse(ctx: _Context, av: list[Tensor], n: int) -> Tensor:
    """L_PSE = −Σ_blocks H (spec §6.1). PSAQ's code drops token 0 of every Swin window as well."""
    g = ctx.gen_cfg
    return -sum(patch_similarity_entropy(a, g.kde_bandwidth, g.kde_points, True, n) for a in av)


def _tv_target(ctx: _Context, n: int, gen: torch.Generator) -> float:
    """PSAQ's TV target v ~ U(a, b), given for `tv_target_batch` images at `ref_size` px (spec §6.1).

    TV is a sum of Frobenius norms over the batch, which grow as √(number of pixel differences), so v is
    scaled by √(n / tv_target_batch · H·W / ref_size²): the same per-pixel smoothness at any batch and size.
    """
    g = ctx.gen_cfg
    lo, hi = g.tv_target
    v = lo + (hi - lo) * torch.rand((), generator=gen).item()
    return v * math.sqrt(n / g.tv_target_batch * ctx.shape[1] * ctx.shape[2] / g.ref_size**2)


def psaq_batch(ctx: _Context, images: slice, gen: torch.Generator, curves: _Curves) -> _Batch:
    """PSAQ-ViT (spec §6.1): L = −Σ H(patch similarity) + w_ce·CE(f(x̃), y) + w_tv·|TV(x̃) − v|."""
    g, n = ctx.gen_cfg, images.stop - images.start
    x, y = _init_pixels(ctx, n, gen), _random_labels(ctx, n, gen)
    v = _tv_target(ctx, n, gen)

    def loss_fn(x_aug: Tensor, av: list[Tensor]) -> Tensor:
        ce = F.cross_entropy(ctx.forward(ctx.teacher, x_aug), y)
        pse, tv = _pse(ctx, av, n), (tv_prior_psaq(x_aug) - v).abs()  # TV on x̃, as PSAQ's code
        loss = g.w_pse * pse + g.w_ce * ce + g.w_tv * tv
        curves.add(loss=loss, pse=pse, ce=ce, tv=tv)
        return loss

    _psaq_rounds(ctx, x, gen, loss_fn)
    return _Batch(x.detach(), y, curves.stack())


def _student(ctx: _Context, calib: Tensor) -> nn.Module:
    """A fake-quantized copy of the teacher at the generator's fixed bits (the paper-code scheme otherwise),
    its activation quantizers initialised on `calib` (B, 3, H, W), every parameter trainable."""
    student = copy.deepcopy(ctx.teacher)
    for p in student.parameters():
        p.requires_grad_(True)
    quantize_model(student, QuantSpec(w_bits=ctx.gen_cfg.student_w_bits, a_bits=ctx.gen_cfg.student_a_bits))
    calibrate(student, calib)
    return student.train()


def psaq_v2_batch(ctx: _Context, images: slice, gen: torch.Generator, curves: _Curves) -> _Batch:
    """PSAQ-ViT V2, reconstructed (spec §6.2): alternate, every step,
    a sample step  min_x  −w_kl·KL(T(x̃) ‖ S(x̃)) + w_pse·(−Σ H) + w_tv·|TV(x̃) − v|   (no label term), and
    a student step min_S  KL(T(x̃) ‖ S(x̃)) on the same detached x̃ (Adam on weights and quantizer steps).

    The student restarts from the freshly quantized teacher for every batch, so shards stay independent
    (exact resume); only the samples are kept. Labels are the teacher's predictions on the final samples.
    """
    g, n = ctx.gen_cfg, images.stop - images.start
    x = _init_pixels(ctx, n, gen)
    v = _tv_target(ctx, n, gen)
    student = _student(ctx, x.detach())  # built before the teacher's hooks exist: the copy carries none
    s_opt = torch.optim.Adam([p for p in student.parameters() if p.requires_grad], lr=g.student_lr)

    seen: dict[str, Tensor] = {}  # the sample step's x̃ and teacher logits, for the student step

    def loss_fn(x_aug: Tensor, av: list[Tensor]) -> Tensor:
        t_logits = ctx.forward(ctx.teacher, x_aug)
        kl = psaq_v2_discrepancy(ctx.forward(student, x_aug), t_logits)
        pse, tv = _pse(ctx, av, n), (tv_prior_psaq(x_aug) - v).abs()
        loss = -g.w_kl * kl + g.w_pse * pse + g.w_tv * tv
        seen.update(x_aug=x_aug.detach(), t_logits=t_logits.detach())
        curves.add(loss=loss, kl=kl, pse=pse, tv=tv)
        return loss

    def student_step() -> None:  # zero_grad drops the student gradients of the sample loss
        _step(s_opt, psaq_v2_discrepancy(ctx.forward(student, seen["x_aug"]), seen["t_logits"]))

    _psaq_rounds(ctx, x, gen, loss_fn, student_step)
    with torch.no_grad():
        y = ctx.forward(ctx.teacher, x).argmax(-1)
    return _Batch(x.detach(), y, curves.stack())


BatchFn = Callable[[_Context, slice, torch.Generator, _Curves], _Batch]
GENERATORS: dict[str, tuple[BatchFn, bool]] = {  # name -> (batch function, optimises pixels step by step)
    "mimiq": (mimiq_batch, True),
    "noise": (noise_batch, False),
    "psaq": (psaq_batch, True),
    "psaq_v2": (psaq_v2_batch, True),
    "real": (real_batch, False),
}


# ------------------------------------------------------------------------------------------- set assembly


def _shard_seed(seed: int, shard: int, attempt: int) -> int:
    """Independent, reproducible seed of shard `shard`'s `attempt`-th try (attempt > 0 after a NaN batch)."""
    return int(np.random.SeedSequence([seed, shard, attempt]).generate_state(1)[0])


def _generate_shard(ctx: _Context, seed: int, index: int, images: slice, bar: tqdm) -> dict:
    """Shard `index` (the set's images `images`); a batch with a NaN/inf is redone with the next seed."""
    fn, optimises = GENERATORS[ctx.gen_cfg.name]
    steps = ctx.gen_cfg.iterations if optimises else 1
    t0 = time.time()  # the shard's time includes discarded attempts
    for attempt in range(ctx.gen_cfg.max_nan_retries + 1):
        gen = torch.Generator().manual_seed(_shard_seed(seed, index, attempt))
        with torch.enable_grad():
            batch = fn(ctx, images, gen, _Curves(bar, every=max(1, steps // 50)))
        if not optimises:
            bar.update()
        finite = [batch.images, *batch.curves.values()]
        if all(torch.isfinite(t).all() for t in finite):
            return {
                "images": batch.images.float().cpu(),
                "labels": batch.labels.long().cpu(),
                "time_s": time.time() - t0,
                "curves": batch.curves,
                "attempt": attempt,
            }
        log.warning("shard %d, attempt %d: NaN/inf, discarded; regenerating with the next seed", index, attempt)
        bar.total += steps
    raise RuntimeError(
        f"synthetic shard {index} produced NaN/inf {ctx.gen_cfg.max_nan_retries + 1} times; lower "
        "generator.lr or raise generator.max_nan_retries"
    )


def _shard_slices(num_images: int, batch_size: int) -> list[slice]:
    return [slice(i, min(i + batch_size, num_images)) for i in range(0, num_images, batch_size)]


def _load_shards(folder: Path, slices: list[slice], shape: tuple[int, ...]) -> tuple[Tensor, Tensor, list]:
    """Every shard, concatenated: images (N, 3, H, W), labels (N,), and the shards' other entries."""
    images = torch.empty((slices[-1].stop, *shape))
    labels = torch.empty(slices[-1].stop, dtype=torch.long)
    infos = []
    for i, s in enumerate(slices):
        shard = load_shard(shard_path(folder, i), (s.stop - s.start, *shape))
        images[s], labels[s] = shard.pop("images"), shard.pop("labels")
        infos.append(shard)
    return images, labels, infos


def _mean_abs_ssim(logits_per_layer: list[Tensor], ctx: _Context) -> float:
    """Mean |SSIM| over head pairs i ≠ j, query patches and images of each layer, then over layers."""
    per_layer = []
    for logits, grid in zip(logits_per_layer, ctx.grids, strict=True):
        ssim = interhead_ssim(logits, grid, ctx.drop_cls)  # (B, Nq, H, H)
        off_diagonal = ~torch.eye(ssim.shape[-1], dtype=torch.bool, device=ssim.device)
        per_layer.append(ssim[..., off_diagonal].abs().mean())
    return torch.stack(per_layer).mean().item()


@torch.no_grad()
def set_interhead_ssim(ctx: _Context, images: Tensor, batch_size: int) -> dict[str, float]:
    """Inter-head attention SSIM of the teacher over `images` (N, 3, H, W), the quantity of the paper's Fig. 1,
    averaged over layers, head pairs i ≠ j, query patches and images:

        interhead_ssim      the signed mean (`mean_interhead_similarity`);
        interhead_abs_ssim  the mean |SSIM|, the paper's "absolute SSIM" (spec §7.2), which is what the loss
                            1 − SSIM² rewards: it drives anti-correlated head pairs to −1 too, and those lower
                            the signed mean.
    """
    sums = {"interhead_ssim": 0.0, "interhead_abs_ssim": 0.0}
    with capture(ctx.teacher, "matmul_qk") as qk:
        for chunk in images.split(batch_size):
            qk.clear()
            ctx.forward(ctx.teacher, chunk.to(ctx.device))
            sums["interhead_ssim"] += mean_interhead_similarity(qk, ctx.grids, ctx.drop_cls) * len(chunk)
            sums["interhead_abs_ssim"] += _mean_abs_ssim(qk, ctx) * len(chunk)
    return {k: v / len(images) for k, v in sums.items()}


def _context(teacher: nn.Module, cfg: DictConfig, device: torch.device, data_config: dict) -> _Context:
    family = cfg.model.family
    if not attention_modules(teacher):
        teacher = copy.deepcopy(teacher)
        swap_attention(teacher)
    attention = [m for _, m in attention_modules(teacher)]
    if not attention:
        raise ValueError(f"{type(teacher).__name__} has no timm Attention / WindowAttention to generate from")
    if any(isinstance(m, SwinWindowAttention) != (family == "swin") for m in attention):
        raise ValueError(f"model.family={family!r} does not match the attention of {type(teacher).__name__}")
    if family == "swin":
        grids = [tuple(m.window_size) for m in attention]
    elif getattr(teacher, "num_prefix_tokens", 1) == 1:
        grids = [tuple(teacher.patch_embed.grid_size)] * len(attention)
    else:
        raise ValueError(f"{cfg.model.name}: only ViTs with one prefix token (CLS) are supported")
    mean, std = (torch.tensor(data_config[k], device=device).view(1, 3, 1, 1) for k in ("mean", "std"))
    shape = tuple(data_config["input_size"])
    ctx = _Context(cfg.generator, teacher, device, cfg.precision, family, grids, shape, mean, std, teacher.num_classes)
    if cfg.generator.name == "real":
        ctx.real = build_dataset(cfg.data, "train", data_config, cfg.paths.cache_dir)
        if len(ctx.real) < cfg.generator.num_images:
            raise ValueError(f"generator=real: {cfg.generator.num_images} images asked, train has {len(ctx.real)}")
        ctx.real_index = torch.randperm(len(ctx.real), generator=torch.Generator().manual_seed(synth_seed(cfg)))
    return ctx


def _check(gen_cfg: DictConfig) -> None:
    if gen_cfg.name not in GENERATORS:
        raise ValueError(f"unknown generator {gen_cfg.name!r}; expected one of {', '.join(GENERATORS)}")
    if gen_cfg.num_images < 1 or gen_cfg.batch_size < 1:
        raise ValueError("generator.num_images and generator.batch_size must be >= 1")
    rounds = gen_cfg.get("rounds")
    if rounds is not None and (len(gen_cfg.jitter) != rounds or gen_cfg.iterations % rounds or not gen_cfg.iterations):
        raise ValueError(
            f"generator={gen_cfg.name}: needs one jitter limit per round and iterations a positive multiple of "
            f"rounds; got jitter={list(gen_cfg.jitter)}, iterations={gen_cfg.iterations}, rounds={rounds}"
        )


def _generate(ctx: _Context, cfg: DictConfig, folder: Path, slices: list) -> tuple[Tensor, Tensor, dict]:
    """Writes the missing shards, then grid.png and meta.json; returns images, labels and the meta.

    With several processes (`mimiq.utils.dist`), the missing shards (listed by rank 0) are dealt out round-robin:
    rank r generates and writes todo[r], todo[r + world], ... Shard i is a function of (synth seed, i) only (its
    images, its batch of `batch_size` and its RNG stream), so the set is the same for any world size. After a
    barrier every rank loads the whole set; rank 0 writes grid.png and meta.json and sends the meta to the others.
    """
    g = ctx.gen_cfg
    todo = dist.broadcast_object([i for i in range(len(slices)) if not shard_path(folder, i).is_file()])
    if len(todo) < len(slices):
        log.info(f"Resuming synthetic set {folder}: {len(slices) - len(todo)}/{len(slices)} shards done")
    mine = todo[dist.rank() :: dist.world_size()]
    steps = g.iterations if GENERATORS[g.name][1] else 1
    t0 = time.time()
    failed: Exception | None = None
    bar = tqdm(total=len(mine) * steps, desc=f"synth {g.name}", unit="step", mininterval=2, disable=not dist.is_main())
    try:
        for i in mine:
            atomic_torch_save(_generate_shard(ctx, synth_seed(cfg), i, slices[i], bar), shard_path(folder, i))
    except Exception as e:  # the other ranks must not wait for this one's shards until the timeout
        failed = e
    finally:
        bar.close()
    others_failed = dist.all_reduce_sum([failed is not None])[0] - (failed is not None)  # also the barrier
    if failed is not None:
        raise failed
    if others_failed:
        raise RuntimeError(f"{others_failed:.0f} other rank(s) failed generating shards of {folder}; see their logs")
    time_generate = time.time() - t0
    images, labels, shards = _load_shards(folder, slices, ctx.shape)
    if not dist.is_main():
        return images, labels, {**dist.broadcast_object(None), "time_generate_s": time_generate}
    curves = {k: torch.stack([s["curves"][k] for s in shards]).mean(0).tolist() for k in shards[0]["curves"]}
    save_grid(images, ctx.mean.cpu(), ctx.std.cpu(), folder / "grid.png")
    if curves:
        plot_curves(curves, folder / "loss_curves.png", f"{g.name}: mean over {len(shards)} batch(es)")
    meta = {
        "generator": g.name,
        "key": set_key(cfg),
        "path": str(folder),
        "teacher": teacher_identity(cfg),
        "num_images": len(images),
        "seed": synth_seed(cfg),
        "image_shape": list(ctx.shape),
        "config": OmegaConf.to_container(g, resolve=True),
        **set_interhead_ssim(ctx, images, g.batch_size),
        **set_quality(ctx.teacher, images, labels, ctx.num_classes, g.batch_size, curves),
        "time_s": sum(s["time_s"] for s in shards),
        "shard_time_s": [s["time_s"] for s in shards],
        "nan_retries": sum(s["attempt"] for s in shards),
        "loss_curves": curves,
        "grid": str(folder / "grid.png"),
        "device": str(ctx.device),
        "precision": ctx.precision,
        "git_sha": git_sha(),
    }
    atomic_save_json(meta, folder / "meta.json")
    dist.broadcast_object({**meta, "reused": False})
    return images, labels, {**meta, "time_generate_s": time_generate, "reused": False}


def synthesize_or_load(
    teacher: nn.Module, cfg: DictConfig, device: torch.device, out_dir: Path | None = None
) -> SyntheticSet:
    """The synthetic set of `cfg.generator` for `teacher`: loaded from the cache, resumed, or generated.

    Args:
        teacher: FP teacher, frozen, in eval mode, on `device`; with or without our attention modules (if
            without, a deep copy gets them and `teacher` is left as it is).
        cfg: the run config; reads `generator`, `model.family`, `model` (teacher identity), `paths.cache_dir`,
            `seed`, `precision`, and `data` for generator=real.
        device: where the teacher runs.
        out_dir: the run's output folder, if any: the image grid is copied there as `synth_grid.png`.

    Returns:
        The set, its images on the CPU. `meta["reused"]` says whether it came from the cache;
        `meta["time_s"]` is the set's original generation time, `meta["time_generate_s"]` this call's.
    """
    g = cfg.generator
    _check(g)
    folder = set_dir(cfg)
    data_config = model_data_config(teacher)
    shape = tuple(data_config["input_size"])
    slices = _shard_slices(g.num_images, g.batch_size)
    meta_path = folder / "meta.json"
    if dist.broadcast_object(meta_path.is_file()):  # every rank takes rank 0's branch
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as e:
            raise RuntimeError(f"{meta_path} is unreadable ({e}). Delete the folder {folder} to regenerate") from e
        images, labels, _ = _load_shards(folder, slices, shape)
        log.info(f"Reusing synthetic set {folder}")
        meta.update(time_generate_s=0.0, reused=True)
        if "synth_label_agreement" not in meta:  # a set generated before these were recorded
            meta.update(set_quality(teacher, images, labels, teacher.num_classes, g.batch_size, meta["loss_curves"]))
    else:
        images, labels, meta = _generate(_context(teacher, cfg, device, data_config), cfg, folder, slices)
    if out_dir is not None and dist.is_main():
        shutil.copyfile(folder / "grid.png", Path(out_dir) / "synth_grid.png")
        if (folder / "loss_curves.png").is_file():
            shutil.copyfile(folder / "loss_curves.png", Path(out_dir) / "synth_loss_curves.png")
    return SyntheticSet(images, labels, meta)
