"""The FP teacher: loaded (hub / local file), or, on the mini task, shipped with the package, cached or trained.

A project-trained teacher is named `<model.name>-<key>`, where `key` hashes the architecture, the data content and
the training recipe: any change there names another teacher, anything else (bits, generator, logger, ...) reuses it.
In order: the shipped file `src/mimiq/teachers/<name>.pt` (`mimiq.models.shipped`; off with
`teacher.use_shipped=false`), the cache `<cache_dir>/teachers/<name>/teacher.pt`, else training into that cache
(checkpointed every epoch, resumed after a kill). A shipped or cached teacher whose recorded key, recipe or
architecture differs from the config's is an error, never used silently.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
from omegaconf import OmegaConf
from torchvision.transforms import v2
from tqdm import tqdm

from mimiq.data import build_dataset, build_loader
from mimiq.evaluate.classification import evaluate
from mimiq.models import shipped
from mimiq.models.registry import _arch_kwargs, create_model, model_data_config
from mimiq.utils.ema import ema_update
from mimiq.utils.io import atomic_save_json, atomic_torch_save, config_hash, git_sha, load_checkpoint
from mimiq.utils.seed import autocast

log = logging.getLogger(__name__)


# `teacher` keys that do not change the trained weights: outliers are applied after training (`channel_outliers`),
# use_shipped only says where to look. A key added to conf/teacher/ that does not change the weights goes here, so
# that the names (and the shipped files) of the teachers trained before it stay valid.
KEY_SKIP = ("log_every", "outliers", "use_shipped")


def recipe_part(recipe: dict) -> dict:
    """The hashed part of a resolved `teacher` recipe: everything but KEY_SKIP, and `ema_decay` only where it is on
    (a recipe without the weight average hashes as it did before the key existed)."""
    return {k: v for k, v in recipe.items() if k not in KEY_SKIP and not (k == "ema_decay" and not v)}


def key_parts(model_cfg, data_cfg, recipe) -> dict:
    """What a trained teacher's name hashes: {"timm_name", "arch", "data" (the mini data's content key), "recipe"}."""
    from mimiq.data.mini import mini_key

    data_part = mini_key(dict(data_cfg)) if data_cfg.name == "mini" else OmegaConf.to_container(data_cfg)
    return {
        "timm_name": model_cfg.timm_name,
        "arch": _arch_kwargs(model_cfg),
        "data": data_part,
        "recipe": recipe_part(OmegaConf.to_container(recipe, resolve=True)),
    }


def teacher_key(model_cfg, data_cfg, recipe) -> str:
    p = key_parts(model_cfg, data_cfg, recipe)
    return config_hash("teacher-v1", p["timm_name"], p["arch"], p["data"], p["recipe"])


def teacher_dir(cfg) -> Path:
    return Path(cfg.paths.cache_dir) / "teachers" / f"{cfg.model.name}-{teacher_key(cfg.model, cfg.data, cfg.teacher)}"


def teacher_identity(cfg) -> str:
    """A string that changes whenever the teacher's weights can change (cache keys of synthetic sets)."""
    m = cfg.model
    if m.get("checkpoint"):
        st = Path(m.checkpoint).stat()
        return f"file:{Path(m.checkpoint).resolve()}:{st.st_size}:{int(st.st_mtime)}"
    if m.pretrained:
        return f"timm:{m.timm_name}:{config_hash(_arch_kwargs(m))}"
    if m.train_teacher:
        o = cfg.teacher.get("outliers") or {}
        tag = f":outliers{o['channels']}x{o['scale']:g}s{o.get('seed', 0)}" if o.get("channels") else ""
        name = teacher_dir(cfg).name
        prov = shipped.read_provenance(name) if cfg.teacher.get("use_shipped", True) else None
        if prov is not None:  # the shipped weights, which a local training of the same key need not equal bit for bit
            return f"shipped:{name}:{str(prov.get('sha256'))[:16]}{tag}"
        return f"trained:{name}{tag}"
    return f"random:{m.timm_name}:{config_hash(_arch_kwargs(m))}:seed{cfg.seed}"


def check_outliers(o, embed_dim: int | None) -> None:
    """Raises ValueError for a `teacher.outliers` block `channel_outliers` cannot apply (width unchecked if None)."""
    if not o or not o.get("channels"):
        return
    c, s = o["channels"], o["scale"]
    if not (isinstance(c, int) and 0 < c <= (embed_dim or c)):
        raise ValueError(f"teacher.outliers.channels={c!r}: need an int in 0..{embed_dim} (the embedding width)")
    if not (isinstance(s, (int, float)) and s >= 1):
        raise ValueError(f"teacher.outliers.scale={s!r}: need a number >= 1")


@torch.no_grad()
def channel_outliers(model: nn.Module, channels: int, scale: float, seed: int = 0) -> list[str]:
    """Gives the model post-LayerNorm outlier channels without changing its function; returns manifest lines.

    In every block, `channels` random channels (per LayerNorm, drawn with `seed`) of `norm1` and `norm2` get their
    affine weight and bias multiplied by `scale`, and the matching input columns of the Linear they feed
    (`attn.qkv`, `mlp.fc1`) are divided by it: y = W (s * LN(x)) / s. The FP outputs are unchanged (up to float
    rounding); what changes is what per-tensor activation quantizers see. Pretrained ViTs carry such channels
    (their post-LN activation ranges differ by one to two orders of magnitude across channels: FQ-ViT, RepQ-ViT),
    and they are why W4/A4 is hard for them; a mini teacher trained for minutes on 10 photos has none, and its
    W4/A4 PTQ matched FP whatever the calibration data (results/mini/ANALYSIS.md).

    Works on timm ViT/DeiT `Block`s and Swin `SwinTransformerBlock`s (both name these four modules alike).
    """
    g = torch.Generator().manual_seed(seed)
    lines = []
    for name, blk in model.named_modules():
        if not all(hasattr(blk, a) for a in ("norm1", "norm2", "attn", "mlp")):
            continue
        for norm_name, norm, lin_name, lin in (
            ("norm1", blk.norm1, "attn.qkv", blk.attn.qkv),
            ("norm2", blk.norm2, "mlp.fc1", blk.mlp.fc1),
        ):
            if not isinstance(norm, nn.LayerNorm) or norm.weight is None or lin.in_features != norm.weight.numel():
                raise TypeError(f"{name}.{norm_name} -> {lin_name}: need an affine LayerNorm feeding that Linear")
            idx = torch.randperm(norm.weight.numel(), generator=g)[:channels].sort().values
            norm.weight[idx] *= scale
            if norm.bias is not None:
                norm.bias[idx] *= scale
            lin.weight[:, idx] /= scale
            lines.append(f"{name}.{norm_name} x{scale:g} -> {name}.{lin_name} /{scale:g}: channels {idx.tolist()}")
    if not lines:
        raise TypeError(f"{type(model).__name__} has no transformer block (norm1, attn, norm2, mlp) to reparameterise")
    return lines


def _lr_lambda(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


class RandomRoll(nn.Module):
    """Circular shift of a (3, H, W) image by up to `max_px` pixels per axis (uniform integers, torch RNG).

    The MimiQ generator rolls its model input by up to this much every step (`generator.jitter`): a teacher that
    never saw such shifts changes its prediction under them, and the generator's CE term cannot be satisfied.
    """

    def __init__(self, max_px: int):
        super().__init__()
        self.max_px = int(max_px)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.max_px <= 0:
            return x
        dy, dx = torch.randint(-self.max_px, self.max_px + 1, (2,)).tolist()
        return torch.roll(x, shifts=(dy, dx), dims=(-2, -1))


def invariance_augment(x: torch.Tensor, inv) -> torch.Tensor:
    """The generators' photometric transforms, drawn per image, on a normalised batch (teacher training).

    With probability `inv.p` per image: a per-channel offset of std `inv.noise_std` · U(0, 1) (MimiQ's annealed
    GaussianNoise at a random point of its schedule), then, with probability `inv.p` again, MimiQ's ColorJitter
    (x − m) / s with m ~ U(−a, a), s = exp(U(−b, b)) per image and channel (a = `jitter_mean`, b =
    `jitter_log_std`). An ImageNet teacher tolerates such changes; a teacher trained without them classifies
    MimiQ's x̃ near chance, and the generator's CE term then pulls towards nothing (results/mini/ANALYSIS.md).
    x: (B, 3, H, W); torch's global RNG (seeded and checkpointed by `train_classifier`).
    """
    if not inv or not inv.get("p"):
        return x
    b, c = x.shape[:2]
    shape = (b, c, 1, 1)

    def mask() -> torch.Tensor:
        return (torch.rand(b, 1, 1, 1) < inv.p).to(x)

    x = x + mask() * torch.randn(shape).to(x) * inv.noise_std * torch.rand(b, 1, 1, 1).to(x)
    m = (torch.rand(shape) * 2 - 1).to(x) * inv.jitter_mean
    s = ((torch.rand(shape) * 2 - 1) * inv.jitter_log_std).exp().to(x)
    on = mask()
    return on * (x - m) / s + (1 - on) * x


def train_classifier(model: nn.Module, cfg, device: torch.device, work_dir: Path) -> dict:
    """Supervised training of `model` on `cfg.data` train split with recipe `cfg.teacher`; resumes from
    `work_dir/partial.pt`. Returns {"train_time_s", "epochs"}."""
    r = cfg.teacher
    dc = model_data_config(model)
    crop = v2.RandomResizedCrop(dc["input_size"][-1], scale=tuple(r.crop_scale), antialias=True)
    augment = v2.Compose([crop, v2.RandomHorizontalFlip(), RandomRoll(r.get("roll", 0))])
    train_set = build_dataset(cfg.data, "train", dc, cfg.paths.cache_dir, augment=augment)
    loader = build_loader(train_set, r.batch_size, shuffle=True, seed=r.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=r.lr, weight_decay=r.weight_decay)
    total = r.epochs * len(loader)
    warmup = int(r.warmup_epochs * len(loader))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_lambda(s, total, warmup))
    crit = nn.CrossEntropyLoss(label_smoothing=r.label_smoothing)
    partial = work_dir / "partial.pt"
    start_epoch, elapsed = 0, 0.0
    decay = float(r.get("ema_decay", 0.0))  # the weight average's, per step (0: off); checkpointed with the rest
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()} if decay else None
    if partial.is_file():
        st = load_checkpoint(partial, "teacher training checkpoint", f"Delete {partial} to restart training.")
        model.load_state_dict(st["model"])
        if ema is not None:
            ema = st["ema"]
        opt.load_state_dict(st["opt"])
        sched.load_state_dict(st["sched"])
        torch.set_rng_state(st["rng"])
        loader.generator.set_state(st["loader_rng"])
        start_epoch, elapsed = st["epoch"], st["elapsed"]
        log.info("resuming teacher training at epoch %d/%d", start_epoch, r.epochs)
    model.to(device)
    for epoch in range(start_epoch, r.epochs):
        t0 = time.time()
        model.train()
        bar = tqdm(loader, desc=f"teacher epoch {epoch + 1}/{r.epochs}", leave=False, mininterval=2)
        for x, y in bar:
            x, y = invariance_augment(x.to(device), r.get("invariance")), y.to(device)
            with autocast(r.precision, device):
                loss = crit(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if r.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), r.grad_clip)
            opt.step()
            sched.step()
            if ema is not None:
                ema_update(ema, model.state_dict(), decay)
            bar.set_postfix(loss=f"{loss.item():.3f}")
        elapsed += time.time() - t0
        log.info("teacher epoch %d/%d: loss %.3f, %.0f s", epoch + 1, r.epochs, loss.item(), elapsed)
        state = {
            "model": model.state_dict(),
            "opt": opt.state_dict(),
            "sched": sched.state_dict(),
            "rng": torch.get_rng_state(),
            "loader_rng": loader.generator.get_state(),
            "epoch": epoch + 1,
            "elapsed": elapsed,
            **({"ema": ema} if ema is not None else {}),
        }
        atomic_torch_save(state, partial)
    model.eval()
    stats = {"train_time_s": elapsed, "epochs": r.epochs}
    if ema is not None:  # the teacher is the average; the last iterate is kept beside it (`teacher_last.pt`)
        atomic_torch_save(model.state_dict(), work_dir / "teacher_last.pt")
        model.load_state_dict(ema)
        stats["ema_decay"] = decay
    return stats


def load_or_train_teacher(cfg, device: torch.device) -> tuple[nn.Module, dict]:
    """Returns (frozen FP teacher in eval mode on `device`, info dict with `source` and, if trained, timings)."""
    m = cfg.model
    if m.get("checkpoint") or m.pretrained or not m.train_teacher:
        model = create_model(m)
        source = "checkpoint" if m.get("checkpoint") else ("pretrained" if m.pretrained else "random")
        return _freeze(model.to(device)), {"source": source}
    outliers = cfg.teacher.get("outliers")
    check_outliers(outliers, _arch_kwargs(m).get("embed_dim"))
    work_dir = teacher_dir(cfg)
    parts = key_parts(m, cfg.data, cfg.teacher)
    expected = {"key": teacher_key(m, cfg.data, cfg.teacher), "model": m.name, **parts}
    if cfg.teacher.get("use_shipped", True):
        prov = shipped.read_provenance(work_dir.name)
        if prov is not None:
            pt = shipped.verify_shipped(work_dir.name, prov, expected)
            model = _load_weights(m, cfg.data.num_classes, pt, "shipped teacher", shipped.HOW)
            log.info("loaded the shipped teacher %s (no training)", pt)
            info = {k: prov.get(k) for k in ("key", "sha256", "commit", "clean_top1", "train_time_s")}
            return _freeze(_with_outliers(model, outliers).to(device)), {**info, "source": "shipped", "path": str(pt)}
        others = sorted(p.stem for p in shipped.SHIPPED_DIR.glob(f"{m.name}-*.pt"))
        if others:
            log.info("no shipped teacher for this recipe (%s; shipped: %s)", work_dir.name, ", ".join(others))
    path = work_dir / "teacher.pt"
    how = f"Delete {work_dir} and rerun to retrain the teacher."
    if path.is_file():
        meta_path = work_dir / "meta.json"
        info = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        recorded = {**info, "recipe": recipe_part(info.get("recipe") or {})}
        diff = shipped.mismatches(recorded, {k: expected[k] for k in ("timm_name", "arch", "recipe")})
        diff += shipped.mismatches(info, {"key": expected["key"]}) if "key" in info else []
        if not info or diff:
            what = "; ".join(diff) if info else f"it has no {meta_path.name} to check its recipe against"
            raise ValueError(f"cached teacher {path} is not this config's teacher: {what}. {how}")
        model = _load_weights(m, cfg.data.num_classes, path, "cached teacher", how)
        info.update(source="cache", path=str(path))
        log.info("reusing cached teacher %s", path)
        return _freeze(_with_outliers(model, outliers).to(device)), info
    log.info("training the teacher %s on data=%s -> %s", m.name, cfg.data.name, path)
    torch.manual_seed(cfg.teacher.seed)
    model = create_model(m, num_classes=cfg.data.num_classes)
    stats = train_classifier(model, cfg, device, work_dir)
    test_set = build_dataset(cfg.data, "test", model_data_config(model), cfg.paths.cache_dir)
    test_loader = build_loader(test_set, cfg.data.batch_size, shuffle=False)
    top1 = evaluate(model, test_loader, device)["top1"]
    if stats.get("ema_decay"):  # the weight average's gain over the last iterate, recorded beside it
        last = _load_weights(m, cfg.data.num_classes, work_dir / "teacher_last.pt", "last iterate", how)
        stats["last_iterate_top1"] = evaluate(last.to(device), test_loader, device)["top1"]
    meta = {
        "model": m.name,
        "key": expected["key"],
        "timm_name": m.timm_name,
        "arch": _arch_kwargs(m),
        "data": cfg.data.name,
        "data_key": parts["data"],
        "recipe": OmegaConf.to_container(cfg.teacher, resolve=True),
        "fp_top1": top1,
        "commit": git_sha(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "command": " ".join(["python", *sys.argv]),
        **stats,
    }
    atomic_torch_save(model.state_dict(), path)
    atomic_save_json(meta, work_dir / "meta.json")
    (work_dir / "partial.pt").unlink(missing_ok=True)
    return _freeze(_with_outliers(model, outliers)), {**meta, "source": "trained", "path": str(path)}


def _load_weights(model_cfg, num_classes: int, path: Path, what: str, how: str) -> nn.Module:
    """The model of `model_cfg` with the state dict at `path` (strict); one clear error if it does not fit."""
    model, state = create_model(model_cfg, num_classes=num_classes), load_checkpoint(path, what, how)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0][:300]
        raise RuntimeError(f"{what} {path} does not fit model={model_cfg.name} ({first}). {how}") from e
    return model


def _with_outliers(model: nn.Module, o) -> nn.Module:
    if o and o.get("channels"):
        lines = channel_outliers(model, o["channels"], o["scale"], o.get("seed", 0))
        log.info(f"Teacher reparameterised with post-LayerNorm outlier channels ({len(lines)} LayerNorms, FP-exact):")
        log.info("\n".join("  " + line for line in lines))
    return model


def _freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
