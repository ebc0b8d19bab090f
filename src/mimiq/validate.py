"""The allowed range of every numeric field of the generator, qat, optim, teacher and distill groups, checked once
before any compute (`mimiq.pipeline.run`): a bad value ends in one error naming the field and its range.

    check_numbers(cfg)     raises ValueError("generator.num_images=0: must be an int >= 1"), or returns None

The ranges are data (RULES); a field absent from a config (another generator's key) is not checked. A test checks
that every numeric field of every composed config has a rule, so a new field cannot skip this.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from omegaconf import OmegaConf

GROUPS = ("generator", "qat", "optim", "teacher", "distill")


@dataclass(frozen=True)
class Rule:
    """kind "int" | "float" | "bool"; lo / hi bounds (None: open), inclusive unless lo_open / hi_open; n: a list of
    exactly n such values (None: a scalar, 0: a list of any length >= 1)."""

    kind: str
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    n: int | None = None

    def ok(self, v) -> bool:
        if self.kind == "bool":
            return isinstance(v, bool)
        types = (int,) if self.kind == "int" else (int, float)
        if isinstance(v, bool) or not isinstance(v, types) or (isinstance(v, float) and not math.isfinite(v)):
            return False
        if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
            return False
        return self.hi is None or (v < self.hi if self.hi_open else v <= self.hi)

    def describe(self) -> str:
        if self.kind == "bool":
            what = "true or false"
        elif self.lo is not None and self.hi is not None:
            lo, hi = ("(" if self.lo_open else "["), (")" if self.hi_open else "]")
            what = f"{'an' if self.kind == 'int' else 'a'} {self.kind} in {lo}{self.lo:g}, {self.hi:g}{hi}"
        elif self.lo is not None:
            what = f"{'an' if self.kind == 'int' else 'a'} {self.kind} {'>' if self.lo_open else '>='} {self.lo:g}"
        else:
            what = f"a finite {self.kind}"
        if self.n is None:
            return what
        return f"a list of {self.n if self.n else 'one or more'} values, each {what}"


INT_POS, INT_NONNEG = Rule("int", 1), Rule("int", 0)
POS, NONNEG, PROB = Rule("float", 0, lo_open=True), Rule("float", 0), Rule("float", 0, 1)
BOOL = Rule("bool")

# field -> rule; `generator.iterations` is >= 1 for a generator that optimises pixels (one with a `generator.lr`)
RULES: dict[str, Rule] = {
    # generator (conf/generator/*.yaml, conf/budget/*.yaml)
    "generator.num_images": INT_POS,
    "generator.batch_size": INT_POS,
    "generator.iterations": INT_NONNEG,
    "generator.max_nan_retries": INT_NONNEG,
    "generator.w_interhead": NONNEG,
    "generator.w_ce": NONNEG,
    "generator.w_tv": NONNEG,
    "generator.w_pse": NONNEG,
    "generator.w_kl": NONNEG,
    "generator.lr": POS,
    "generator.lr_swin": POS,
    "generator.lr_min": NONNEG,
    "generator.betas": Rule("float", 0, 1, hi_open=True, n=2),
    "generator.eps": POS,
    "generator.weight_decay": NONNEG,
    "generator.ref_size": INT_POS,
    "generator.jitter": Rule("int", 0, n=0),
    "generator.flip": PROB,
    "generator.noise_std": NONNEG,
    "generator.jitter_mean": NONNEG,
    "generator.jitter_log_std": NONNEG,
    "generator.rounds": INT_POS,
    "generator.tv_target": Rule("float", 0, n=2),
    "generator.tv_target_batch": INT_POS,
    "generator.kde_bandwidth": POS,
    "generator.kde_points": Rule("int", 2),
    "generator.warmup_frac": Rule("float", 0, 1, hi_open=True),
    "generator.student_w_bits": Rule("int", 2, 8),
    "generator.student_a_bits": Rule("int", 2, 8),
    "generator.student_lr": POS,
    # qat (conf/qat/default.yaml)
    "qat.epochs": INT_POS,
    "qat.batch_size": INT_POS,
    "qat.drop_last": BOOL,
    "qat.no_step_epochs": INT_NONNEG,
    "qat.eval_every": INT_POS,
    "qat.calib_size": INT_POS,
    "qat.augment.enabled": BOOL,
    "qat.augment.per_sample": BOOL,
    "qat.augment.synthetic": BOOL,
    "qat.augment.crop_scale": Rule("float", 0, 1, lo_open=True, n=2),
    "qat.augment.jitter": Rule("float", 0, n=4),
    "qat.augment.jitter_p": PROB,
    "qat.augment.grayscale_p": PROB,
    "qat.augment.blur_frac": PROB,
    "qat.augment.blur_sigma": Rule("float", 0, lo_open=True, n=2),
    # optim (conf/optim/*.yaml)
    "optim.lr": POS,
    "optim.momentum": Rule("float", 0, 1, hi_open=True),
    "optim.nesterov": BOOL,
    "optim.weight_decay": NONNEG,
    "optim.milestones": Rule("int", 0, n=0),
    "optim.gamma": Rule("float", 0, 1, lo_open=True),
    "optim.min_lr_ratio": PROB,
    "optim.quantizer_lr_scale": POS,
    # teacher (conf/teacher/mini.yaml)
    "teacher.epochs": INT_POS,
    "teacher.batch_size": INT_POS,
    "teacher.lr": POS,
    "teacher.weight_decay": NONNEG,
    "teacher.warmup_epochs": NONNEG,
    "teacher.label_smoothing": Rule("float", 0, 1, hi_open=True),
    "teacher.crop_scale": Rule("float", 0, 1, lo_open=True, n=2),
    "teacher.roll": INT_NONNEG,
    "teacher.invariance.p": PROB,
    "teacher.invariance.noise_std": NONNEG,
    "teacher.invariance.jitter_mean": NONNEG,
    "teacher.invariance.jitter_log_std": NONNEG,
    "teacher.grad_clip": NONNEG,
    "teacher.ema_decay": Rule("float", 0, 1, hi_open=True),
    "teacher.seed": INT_NONNEG,
    "teacher.use_shipped": BOOL,
    "teacher.outliers.channels": INT_NONNEG,
    "teacher.outliers.scale": Rule("float", 1),
    "teacher.outliers.seed": INT_NONNEG,
    # distill (conf/distill/*.yaml)
    "distill.kd_scale": NONNEG,
    "distill.temperature": POS,
    "distill.ce_scale": NONNEG,
    "distill.hsad_scale": NONNEG,
}


DESCRIPTIVE = ("generator.facts",)  # what a generator is (report/ reads it), not a number the run uses


def numeric_fields(cfg) -> dict[str, object]:
    """'group.path' -> value of every int, float, bool or list-of-numbers leaf of GROUPS in `cfg` (resolved)."""
    out: dict[str, object] = {}

    def walk(prefix: str, node) -> None:
        if prefix in DESCRIPTIVE:
            return
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}.{k}", v)
        elif isinstance(node, (bool, int, float)) or (
            isinstance(node, list) and node and all(isinstance(x, (int, float)) for x in node)
        ):
            out[prefix] = node

    for g in GROUPS:
        node = cfg.get(g)
        if node is not None:
            walk(g, OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node)
    return out


def check_numbers(cfg) -> None:
    """Raises ValueError naming the first field of RULES whose value in `cfg` is out of its range."""
    for path, rule in RULES.items():
        v = _get(cfg, path)
        if v is _MISSING:
            continue
        if path == "generator.iterations" and cfg.generator.get("lr") is not None:
            rule = INT_POS  # noise and real have no pixel lr and ignore iterations
        values = v if isinstance(v, list) else [v]
        shape_ok = (rule.n is None and not isinstance(v, list)) or (
            rule.n is not None and isinstance(v, list) and len(v) >= 1 and (rule.n == 0 or len(v) == rule.n)
        )
        if not shape_ok or not all(rule.ok(x) for x in values):
            raise ValueError(f"{path}={_show(v)}: must be {rule.describe()}")


_MISSING = object()


def _get(cfg, path: str):
    node = cfg
    for part in path.split("."):
        if node is None or not hasattr(node, "get") or part not in node:
            return _MISSING
        node = node.get(part)
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def _show(v) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    return repr(v) if isinstance(v, str) else str(v)
