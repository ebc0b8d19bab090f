"""The one Hydra compose of `conf/train.yaml` for scripts and tests (`python train.py` composes through @hydra.main).

    cfg = compose(["model=swin_mini", "bits=w4a8"])

No run directory is created and nothing is computed; `return_hydra_config=True` keeps `cfg.hydra` (e.g.
`hydra.runtime.choices`, the group options used).
"""

from __future__ import annotations

from pathlib import Path

from hydra import compose as _compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

ROOT = Path(__file__).resolve().parents[2]  # the repository (src/mimiq/config.py)
CONF_DIR = ROOT / "conf"


def compose(
    overrides: list[str] | tuple[str, ...] = (), config_name: str = "train", return_hydra_config: bool = False
) -> DictConfig:
    """`conf/<config_name>.yaml` composed with `overrides` (Hydra override syntax)."""
    if not (CONF_DIR / f"{config_name}.yaml").is_file():
        raise FileNotFoundError(f"no config {config_name!r} in {CONF_DIR}: run from a checkout of the repository")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return _compose(config_name, overrides=list(overrides), return_hydra_config=return_hydra_config)


def load(group: str, option: str) -> DictConfig:
    """`conf/<group>/<option>.yaml` read as a file, not composed: a group no run selects (e.g. the targets)."""
    path = CONF_DIR / group / f"{option}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"no {group} option {option!r} ({path}): run from a checkout of the repository")
    return OmegaConf.load(path)
