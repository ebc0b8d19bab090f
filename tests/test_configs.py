"""Every option of every config group composes, and every experiment composes."""

from pathlib import Path

import pytest
from conftest import CONF_DIR, compose_cfg
from omegaconf import OmegaConf

GROUPS = sorted(p.name for p in Path(CONF_DIR).iterdir() if p.is_dir() and p.name not in ("hydra", "local"))


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in _options(g)], ids=lambda v: str(v))
def test_group_option_composes(group, option):
    cfg = compose_cfg([f"{group}={option}"])
    OmegaConf.resolve(cfg)  # every interpolation resolves
    assert cfg.model.name and cfg.data.name


def test_groups_are_not_empty():
    for g in GROUPS:
        assert _options(g), f"config group {g} has no option"
    assert {"model", "data", "teacher", "experiment", "debug", "logger", "paths"} <= set(GROUPS)


def test_default_is_the_mini_task():
    cfg = compose_cfg()
    assert cfg.model.name == "vit_mini" and cfg.data.name == "mini" and cfg.model.train_teacher


def test_arch_fields_override_from_cli():
    cfg = compose_cfg(["model.arch.depth=3", "model.arch.num_heads=4"])
    assert cfg.model.arch.depth == 3 and cfg.model.arch.num_heads == 4


def test_numbers_in_conf_carry_comments():
    """Style rule: every number in a conf file has a trailing comment with its meaning/unit."""
    bare = []
    for path in Path(CONF_DIR).rglob("*.yaml"):
        if "experiment" in path.parts or "hydra" in path.parts:
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            s = line.split("#")[0].strip()
            if ":" in s and "#" not in line:
                value = s.split(":", 1)[1].strip()
                try:
                    float(value)
                except ValueError:
                    continue
                bare.append(f"{path.relative_to(CONF_DIR)}:{i}: {line.strip()}")
    assert not bare, "numbers without a unit/meaning comment:\n" + "\n".join(bare)
