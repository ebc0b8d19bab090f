"""One tracking facade: W&B (online / offline / disabled) or nothing. Always closed, even on exceptions."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


class Tracker:
    """No-op tracker (`logger=none`); `WandbTracker` overrides the methods."""

    def log(self, metrics: dict, step: int | None = None) -> None:
        pass

    def images(self, name: str, images, step: int | None = None) -> None:
        """images: (N, 3, H, W) in [0, 1] (de-normalised); at most 16 are logged."""

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


class WandbTracker(Tracker):
    def __init__(self, cfg, run_config: dict, out_dir: Path):
        import wandb

        if cfg.mode not in ("online", "offline", "disabled"):
            raise ValueError(f"logger.mode must be online, offline or disabled, got {cfg.mode!r}")
        self._wandb = wandb
        self.run = wandb.init(project=cfg.project, entity=cfg.get("entity"), name=cfg.get("run_name"),
                              group=cfg.get("group"), tags=list(cfg.get("tags") or []), mode=cfg.mode,
                              dir=str(out_dir), config=run_config, reinit="create_new")  # fmt: skip

    def log(self, metrics: dict, step: int | None = None) -> None:
        self.run.log(metrics, step=step)

    def images(self, name: str, images, step: int | None = None) -> None:
        from torchvision.utils import make_grid

        grid = make_grid(images[:16].float().clamp(0, 1), nrow=4)
        self.run.log({name: self._wandb.Image(grid.permute(1, 2, 0).numpy())}, step=step)

    def summary(self, metrics: dict) -> None:
        self.run.summary.update(metrics)

    def close(self) -> None:
        self.run.finish()
