"""Shared fixtures: offline env, Hydra compose of the train config, a per-session cache dir."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # never touch the hub from tests
os.environ.setdefault("WANDB_MODE", "disabled")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")
ROOT = Path(__file__).resolve().parents[1]


def compose_cfg(overrides: list[str] | None = None, return_hydra_config: bool = False):
    """Compose conf/train.yaml with `overrides` (no run directory, no compute)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("train", overrides=overrides or [], return_hydra_config=return_hydra_config)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One cache (mini dataset, tiny teachers) shared by the whole session."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def tiny_cfg(cache_dir):
    """debug=tiny config with the session cache; call with extra overrides."""

    def make(*overrides: str):
        return compose_cfg(["debug=tiny", f"paths.cache_dir={cache_dir}", *overrides])

    return make
