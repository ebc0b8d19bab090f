"""Shared fixtures: offline env, Hydra compose of the train config, a per-session cache dir."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # never touch the hub from tests
os.environ.setdefault("WANDB_MODE", "disabled")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from mimiq.config import compose  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = str(ROOT / "conf")


def compose_cfg(overrides: list[str] | None = None, return_hydra_config: bool = False):
    """`mimiq.config.compose` of conf/train.yaml with `overrides` (no run directory, no compute)."""
    return compose(overrides or (), return_hydra_config=return_hydra_config)


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
