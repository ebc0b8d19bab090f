"""One tracking facade: W&B (online / offline / disabled) or nothing. Always closed, even on exceptions.

Steps: a metric's namespace is its name up to the first "/" (synth, qat, eval, ...). `step=` given to `log` /
`images` is that namespace's own x-axis (synth: generation iteration, qat: epoch), logged as `<namespace>/step`
beside the values; W&B's run step is never set, so it only increases, whatever order the stages log in.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


class Tracker:
    """No-op tracker (`logger=none`); `WandbTracker` overrides the methods."""

    def log(self, metrics: dict, step: int | None = None) -> None:
        """metrics: {"<namespace>/<name>": value}; step: the namespace's step (None: its last one, else 0)."""

    def images(self, name: str, images, step: int | None = None) -> None:
        """images: (N, 3, H, W) in [0, 1] (de-normalised); at most 16 are logged."""

    def log_curves(self, prefix: str, curves: dict[str, list[float]], start: int = 0, every: int = 1) -> None:
        """Whole curves at once, one row per step: curves {"loss_ce": [v0, v1, ...], ...} -> `prefix/loss_ce` at
        steps start, start + 1, ... (curves may differ in length); every > 1 keeps every `every`-th step."""

    def summary(self, metrics: dict) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @staticmethod
    def from_cfg(logger_cfg, run_config: dict, out_dir: str | Path) -> Tracker:
        if logger_cfg.name == "none":
            return Tracker()
        if logger_cfg.name == "wandb":
            return WandbTracker(logger_cfg, run_config, Path(out_dir))
        raise ValueError(f"logger.name must be none or wandb, got {logger_cfg.name!r}")


def namespace(key: str) -> str:
    """'synth/loss_ce' -> 'synth'; a key without '/' is its own namespace."""
    return key.split("/", 1)[0]


def step_key(ns: str) -> str:
    return f"{ns}/step"


class WandbTracker(Tracker):
    def __init__(self, cfg, run_config: dict, out_dir: Path):
        import wandb

        if cfg.mode not in ("online", "offline", "disabled"):
            raise ValueError(f"logger.mode must be online, offline or disabled, got {cfg.mode!r}")
        self._wandb = wandb
        self.run = wandb.init(
            project=cfg.project,
            entity=cfg.get("entity"),
            name=cfg.get("run_name"),
            group=cfg.get("group"),
            tags=list(cfg.get("tags") or []),
            mode=cfg.mode,
            dir=str(out_dir),
            config=run_config,
            reinit="create_new",
        )
        self._steps: dict[str, int] = {}  # namespace -> its last step
        self._defined: set[str] = set()  # define_metric names already sent

    def _define(self, name: str, step_metric: str | None = None, **kw) -> None:
        if name not in self._defined:
            self.run.define_metric(name, step_metric=step_metric, **kw)
            self._defined.add(name)

    def _row(self, metrics: dict, step: int | None) -> dict:
        """metrics plus `<namespace>/step` for each of their namespaces, each plotted against its own step."""
        row = dict(metrics)
        for key in metrics:
            ns = namespace(key)
            self._define(step_key(ns), hidden=True)
            self._define(f"{ns}/*" if "/" in key else key, step_metric=step_key(ns))  # a bare key: by name
        for ns in dict.fromkeys(namespace(k) for k in metrics):
            if step is not None:
                self._steps[ns] = int(step)
            row[step_key(ns)] = self._steps.setdefault(ns, 0)
        return row

    def log(self, metrics: dict, step: int | None = None) -> None:
        if metrics:
            self.run.log(self._row(metrics, step))  # never step=: W&B's own step only increases

    def images(self, name: str, images, step: int | None = None) -> None:
        from torchvision.utils import make_grid

        grid = make_grid(images[:16].float().clamp(0, 1), nrow=4)
        self.log({name: self._wandb.Image(grid.permute(1, 2, 0).numpy())}, step=step)

    def log_curves(self, prefix: str, curves: dict[str, list[float]], start: int = 0, every: int = 1) -> None:
        n = max((len(v) for v in curves.values()), default=0)
        for i in range(0, n, max(1, int(every))):
            self.log({f"{prefix}/{k}": float(v[i]) for k, v in curves.items() if i < len(v)}, step=start + i)

    def summary(self, metrics: dict) -> None:
        self.run.summary.update(metrics)

    def close(self) -> None:
        self.run.finish()
