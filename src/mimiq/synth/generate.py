"""Stage 1: the synthetic training set, generated once per (teacher, generator config, count, seed), cached.

`synthesize_or_load(teacher, cfg, device)` is the entry point of the classification set; `cfg.generator.name`
picks the generator (conf/generator/<name>.yaml holds every hyper-parameter), one module each:

    mimiq    (`mimiq.synth.mimiq`) pixels optimised from Gaussian noise so that the heads of every block attend
             alike: inter-head attention SSIM + CE to a random label + TV prior, roll jitter, annealed noise,
             colour jitter (docs/method.md, Stage 1)
    noise    (`mimiq.synth.baselines`) Gaussian noise in normalised space, clamped, random labels
    psaq     (`mimiq.synth.psaq`) PSAQ-ViT: patch-similarity entropy of the head-mean A·V + CE + |TV − v|
             (arXiv 2203.02250)
    psaq_v2  (`mimiq.synth.psaq_v2`) PSAQ-ViT V2, reconstructed from arXiv 2209.05687: samples maximise
             KL(teacher ‖ quantized student) under the patch-similarity prior and TV, with no label term; the
             student minimises it, step by step
    real     (`mimiq.synth.baselines`) real images of `cfg.data`'s train split with their labels (the upper bound)

The set is cut into shards of `batch_size` images, one per optimised batch; shard i is a deterministic
function of (seed, i), so an interrupted run resumes from its finished shards to the identical set
(layout in `mimiq.synth.cache`). All randomness comes from a per-shard CPU `torch.Generator`. Under DDP the
ranks split the shards round-robin (`generate_shards`), which for the same reason yields the same set for any
world size; psaq_v2's student restarts with every shard, so it splits exactly too. The dense tasks' backbone-made
sets (`mimiq.dense.synth`) go through the same shard machinery.

The teacher is used as it arrives if it already carries our attention modules (`swap_attention`, FP-exact);
otherwise a deep copy gets them, so the caller's model is never modified.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from tqdm import tqdm

from mimiq.models.attention import capture
from mimiq.models.registry import model_data_config
from mimiq.models.teacher import teacher_identity
from mimiq.synth.baselines import noise_batch, real_batch
from mimiq.synth.cache import load_shard, save_grid, set_dir, set_key, shard_path, synth_seed
from mimiq.synth.core import Context, Curves, build_context
from mimiq.synth.losses import interhead_ssim, mean_interhead_similarity
from mimiq.synth.mimiq import mimiq_batch
from mimiq.synth.psaq import psaq_batch
from mimiq.synth.psaq_v2 import psaq_v2_batch
from mimiq.synth.quality import plot_curves, set_quality
from mimiq.utils import dist
from mimiq.utils.io import atomic_save_json, atomic_torch_save, git_sha

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


GENERATORS: dict[str, tuple[Callable, bool]] = {  # name -> (batch function, optimises pixels step by step)
    "mimiq": (mimiq_batch, True),
    "noise": (noise_batch, False),
    "psaq": (psaq_batch, True),
    "psaq_v2": (psaq_v2_batch, True),
    "real": (real_batch, False),
}


# ------------------------------------------------------------------------------------------- set assembly


def _generate_shard(ctx: Context, seed: int, index: int, images: slice, bar: tqdm) -> dict:
    """Shard `index` (the set's images `images`); a batch with a NaN/inf is redone with the next seed."""
    fn, optimises = GENERATORS[ctx.gen_cfg.name]
    steps = ctx.gen_cfg.iterations if optimises else 1
    t0 = time.time()  # the shard's time includes discarded attempts
    for attempt in range(ctx.gen_cfg.max_nan_retries + 1):
        gen = torch.Generator().manual_seed(ctx.seed_of(seed, index, attempt))
        with torch.enable_grad():
            batch = fn(ctx, images, gen, Curves(bar, every=max(1, steps // 50)))
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


def shard_slices(num_images: int, batch_size: int) -> list[slice]:
    return [slice(i, min(i + batch_size, num_images)) for i in range(0, num_images, batch_size)]


def load_shards(folder: Path, slices: list[slice], shape: tuple[int, ...]) -> tuple[Tensor, Tensor, list]:
    """Every shard, concatenated: images (N, 3, H, W), labels (N,), and the shards' other entries."""
    images = torch.empty((slices[-1].stop, *shape))
    labels = torch.empty(slices[-1].stop, dtype=torch.long)
    infos = []
    for i, s in enumerate(slices):
        shard = load_shard(shard_path(folder, i), (s.stop - s.start, *shape))
        images[s], labels[s] = shard.pop("images"), shard.pop("labels")
        infos.append(shard)
    return images, labels, infos


def mean_abs_ssim(logits_per_layer: list[Tensor], ctx: Context) -> float:
    """Mean |SSIM| over head pairs i ≠ j, query patches and images of each layer, then over layers."""
    per_layer = []
    for logits, grid in zip(logits_per_layer, ctx.grids, strict=True):
        ssim = interhead_ssim(logits, grid, ctx.drop_cls)  # (B, Nq, H, H)
        off_diagonal = ~torch.eye(ssim.shape[-1], dtype=torch.bool, device=ssim.device)
        per_layer.append(ssim[..., off_diagonal].abs().mean())
    return torch.stack(per_layer).mean().item()


@torch.no_grad()
def set_interhead_ssim(ctx: Context, images: Tensor, batch_size: int) -> dict[str, float]:
    """Inter-head attention SSIM of the teacher over `images` (N, 3, H, W), the quantity of the paper's Fig. 1,
    averaged over layers, head pairs i ≠ j, query patches and images:

        interhead_ssim      the signed mean (`mean_interhead_similarity`);
        interhead_abs_ssim  the mean |SSIM| (an unofficial summary of the paper says "absolute SSIM"), what the loss
                            1 − SSIM² rewards: it drives anti-correlated head pairs to −1 too, and those lower
                            the signed mean.
    """
    sums = {"interhead_ssim": 0.0, "interhead_abs_ssim": 0.0}
    with capture(ctx.teacher, "matmul_qk") as qk:
        for chunk in images.split(batch_size):
            qk.clear()
            ctx.forward(ctx.teacher, chunk.to(ctx.device))
            sums["interhead_ssim"] += mean_interhead_similarity(qk, ctx.grids, ctx.drop_cls) * len(chunk)
            sums["interhead_abs_ssim"] += mean_abs_ssim(qk, ctx) * len(chunk)
    return {k: v / len(images) for k, v in sums.items()}


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


def generate_shards(ctx: Context, seed: int, folder: Path, slices: list[slice], desc: str) -> float:
    """Writes the set's missing shards into `folder`; returns the seconds it took.

    With several processes (`mimiq.utils.dist`), the missing shards (listed by rank 0) are dealt out round-robin:
    rank r generates and writes todo[r], todo[r + world], ... Shard i is a function of (seed, i) only (its
    images, its batch of `batch_size` and its RNG stream), so the set is the same for any world size. Returns
    after a barrier: then every shard is on disk.
    """
    g = ctx.gen_cfg
    todo = dist.broadcast_object([i for i in range(len(slices)) if not shard_path(folder, i).is_file()])
    if len(todo) < len(slices):
        log.info(f"Resuming synthetic set {folder}: {len(slices) - len(todo)}/{len(slices)} shards done")
    mine = todo[dist.rank() :: dist.world_size()]
    steps = g.iterations if GENERATORS[g.name][1] else 1
    t0 = time.time()
    failed: Exception | None = None
    bar = tqdm(total=len(mine) * steps, desc=desc, unit="step", mininterval=2, disable=not dist.is_main())
    try:
        for i in mine:
            atomic_torch_save(_generate_shard(ctx, seed, i, slices[i], bar), shard_path(folder, i))
    except Exception as e:  # the other ranks must not wait for this one's shards until the timeout
        failed = e
    finally:
        bar.close()
    others_failed = dist.all_reduce_sum([failed is not None])[0] - (failed is not None)  # also the barrier
    if failed is not None:
        raise failed
    if others_failed:
        raise RuntimeError(f"{others_failed:.0f} other rank(s) failed generating shards of {folder}; see their logs")
    return time.time() - t0


def _generate(ctx: Context, cfg: DictConfig, folder: Path, slices: list) -> tuple[Tensor, Tensor, dict]:
    """Writes the missing shards (`generate_shards`), then grid.png and meta.json; returns images, labels and the
    meta. Every rank loads the whole set; rank 0 writes grid.png and meta.json and sends the meta to the others."""
    g = ctx.gen_cfg
    time_generate = generate_shards(ctx, synth_seed(cfg), folder, slices, f"synth {g.name}")
    images, labels, shards = load_shards(folder, slices, ctx.shape)
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
    slices = shard_slices(g.num_images, g.batch_size)
    meta_path = folder / "meta.json"
    if dist.broadcast_object(meta_path.is_file()):  # every rank takes rank 0's branch
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as e:
            raise RuntimeError(f"{meta_path} is unreadable ({e}). Delete the folder {folder} to regenerate") from e
        images, labels, _ = load_shards(folder, slices, shape)
        log.info(f"Reusing synthetic set {folder}")
        meta.update(time_generate_s=0.0, reused=True)
        if "synth_label_agreement" not in meta:  # a set generated before these were recorded
            meta.update(set_quality(teacher, images, labels, teacher.num_classes, g.batch_size, meta["loss_curves"]))
    else:
        images, labels, meta = _generate(build_context(teacher, cfg, device, data_config), cfg, folder, slices)
    if out_dir is not None and dist.is_main():
        shutil.copyfile(folder / "grid.png", Path(out_dir) / "synth_grid.png")
        if (folder / "loss_curves.png").is_file():
            shutil.copyfile(folder / "loss_curves.png", Path(out_dir) / "synth_loss_curves.png")
    return SyntheticSet(images, labels, meta)
