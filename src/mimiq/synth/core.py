"""What every generator shares: the resolved context of a set, a batch, its loss curves, the optimiser step.

A generator is a function `(ctx, images: slice, gen, curves) -> Batch` (registered in `mimiq.synth.generate`);
everything random in it comes from `gen`, the shard's CPU `torch.Generator`. A generator that optimises pixels
is a loop over its step function (`mimiq_step`, `psaq_step`, `psaq_v2_step`: one iteration, returning its loss
terms), which `mimiq.perf` times as it is.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from omegaconf import DictConfig
from torch import Tensor, nn
from torch.utils.data import Dataset
from tqdm import tqdm

from mimiq.data.datasets import build_dataset
from mimiq.models.attention import SwinWindowAttention, attention_modules, swap_attention
from mimiq.synth.cache import synth_seed
from mimiq.utils.compile import compiled, use_compile
from mimiq.utils.seed import autocast


def shard_seed(seed: int, shard: int, attempt: int) -> int:
    """Independent, reproducible seed of shard `shard`'s `attempt`-th try (attempt > 0 after a NaN batch)."""
    return int(np.random.SeedSequence([seed, shard, attempt]).generate_state(1)[0])


@dataclass
class Context:
    """Everything a generator needs, resolved once per set."""

    gen_cfg: DictConfig  # the `generator` node
    teacher: nn.Module  # FP, frozen, eval, with our attention modules: a classifier, or a dense model's backbone
    device: torch.device
    precision: str  # fp32 | bf16 autocast of the forward passes
    family: str  # vit | swin
    grids: list[tuple[int, int]]  # key grid of every attention layer: ViT patch grid, Swin window
    shape: tuple[int, int, int]  # (3, H, W) input
    mean: Tensor  # (1, 3, 1, 1) normalisation mean, in pixel units (0-1, or 0-255 for the mm models)
    std: Tensor  # (1, 3, 1, 1) normalisation std, same units
    num_classes: int | None  # None: the teacher has no classifier (dense backbone): no labels, no CE term
    pixel_max: int = 1  # the largest pixel value of mean / std's units: 1 or 255
    seed_of: Callable[[int, int, int], int] = shard_seed  # (seed, shard, attempt) -> the shard's generator seed
    real: Dataset | None = None  # generator=real: the train split ...
    real_index: Tensor | None = None  # ... and its (N,) images chosen with the seed
    teacher_fn: Callable[[Tensor], Tensor] | None = None  # what runs the teacher: itself, or compiled (`compile`)

    def __post_init__(self):
        if self.teacher_fn is None:
            self.teacher_fn = self.teacher

    @property
    def compiled(self) -> bool:
        """The steps run the teacher (and psaq_v2 its student) compiled."""
        return self.teacher_fn is not self.teacher

    @property
    def drop_cls(self) -> bool:
        return self.family == "vit"

    @property
    def uses_ce(self) -> bool:
        """The CE-to-a-random-label term applies (the teacher is a classifier)."""
        return self.num_classes is not None

    def forward(self, model: Callable[[Tensor], Tensor], x: Tensor) -> Tensor | None:
        """(B, C) fp32 logits of a classifier; None for a backbone (its captured attention is what counts).
        `model`: a module or its compiled forward (`teacher_fn`)."""
        with autocast(self.precision, self.device):
            out = model(x)
            return out.float() if isinstance(out, Tensor) else None

    def clamp_(self, x: Tensor) -> None:
        """The paper code's `clamp_training` (and PSAQ's `clip`): x into [(0 − μ)/σ, (max − μ)/σ] per channel."""
        with torch.no_grad():
            x.clamp_((0 - self.mean) / self.std, (self.pixel_max - self.mean) / self.std)


@dataclass
class Batch:
    images: Tensor  # (b, 3, H, W)
    labels: Tensor  # (b,)
    curves: dict[str, Tensor]  # loss term -> (iterations,) per-step values


class Curves:
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


def init_pixels(ctx: Context, n: int, gen: torch.Generator) -> Tensor:
    """(n, 3, H, W) standard Gaussian noise in normalised space (the paper code's `randn`), a leaf to optimise."""
    return torch.randn((n, *ctx.shape), generator=gen).to(ctx.device).requires_grad_()


def random_labels(ctx: Context, n: int, gen: torch.Generator) -> Tensor:
    """(n,) labels ~ U{0 … classes − 1}, drawn once per image and fixed during its optimisation; zeros (no draw)
    when the teacher has no classifier."""
    if not ctx.uses_ce:
        return torch.zeros(n, dtype=torch.long, device=ctx.device)
    return torch.randint(0, ctx.num_classes, (n,), generator=gen).to(ctx.device)


def generation_steps(cfg: DictConfig) -> int:
    """Steps of the whole set: batches x iterations (1 per batch without `iterations`); what `compile: auto`
    weighs."""
    g = cfg.generator
    return -(-g.num_images // g.batch_size) * g.get("iterations", 1)


def step(opt: torch.optim.Optimizer, loss: Tensor) -> None:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def build_context(teacher: nn.Module, cfg: DictConfig, device: torch.device, data_config: dict) -> Context:
    """The context of a classifier teacher (given our attention modules on a deep copy if it lacks them)."""
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
    ctx = Context(cfg.generator, teacher, device, cfg.precision, family, grids, shape, mean, std, teacher.num_classes)
    if use_compile(cfg, device, generation_steps(cfg)):  # compiles at the first call (generators that run it)
        ctx.teacher_fn = compiled(teacher)
    if cfg.generator.name == "real":
        ctx.real = build_dataset(cfg.data, "train", data_config, cfg.paths.cache_dir)
        if len(ctx.real) < cfg.generator.num_images:
            raise ValueError(f"generator=real: {cfg.generator.num_images} images asked, train has {len(ctx.real)}")
        ctx.real_index = torch.randperm(len(ctx.real), generator=torch.Generator().manual_seed(synth_seed(cfg)))
    return ctx
