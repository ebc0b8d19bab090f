"""Compose every experiment x every bits option, and every job of every paper table: no compute, no data
(`scripts/check_configs.py`, `make check-configs`, tests/test_experiments.py).

A table command passes when each of its jobs composes and the table's own row matcher (`paper.select`, applied to
the metrics a run of the composed config writes) files the job under the row that produced it.
"""

from __future__ import annotations

import functools
import itertools
import shlex
from collections.abc import Callable
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Glob
from omegaconf import DictConfig, OmegaConf

from mimiq.config import CONF_DIR, compose
from mimiq.report import paper
from mimiq.report.methods import flatten, load_methods
from mimiq.report.tables import Table, paper_tables

Compose = Callable[[list[str]], DictConfig]


@functools.cache
def tables(conf_dir: Path = CONF_DIR) -> dict[str, Table]:
    """The paper tables by name, their rows from `conf_dir`/method/."""
    return paper_tables(load_methods(conf_dir))


def options(group: str, conf_dir: Path = CONF_DIR) -> list[str]:
    return sorted(p.stem for p in (conf_dir / group).glob("*.yaml"))


def expand(overrides: list[str], conf_dir: Path = CONF_DIR) -> list[list[str]]:
    """The jobs of a multirun: the Cartesian product of its sweeps (a,b,c and glob() over a group)."""
    axes = []
    for o in OverridesParser.create().parse_overrides(overrides):
        key = o.get_key_element()
        if isinstance(o.value(), Glob):
            values = o.value().filter(options(o.key_or_group, conf_dir))
        elif o.is_sweep_override():
            values = list(o.sweep_string_iterator())
        else:
            values = [o.get_value_element_as_str()]
        axes.append([f"{key}={v}" for v in values])
    return [list(job) for job in itertools.product(*axes)]


def record_from_cfg(cfg: DictConfig) -> dict:
    """The metrics.json keys tables select on, as a run of `cfg` writes them, plus cfg.* (as make_tables)."""
    rec = {
        "experiment": cfg.get("experiment_name") or "default",
        "model": cfg.model.name,
        "data": cfg.data.name,
        "w_bits": cfg.quant.w_bits,
        "a_bits": cfg.quant.a_bits,
        "generator": cfg.generator.name,
        "distill": cfg.distill.name,
        "seed": cfg.seed,
        "num_images": cfg.generator.num_images,
    }
    rec["bits"] = paper.bits_label(rec["w_bits"], rec["a_bits"])
    c = OmegaConf.to_container(cfg, resolve=False)  # hydra:* interpolations cannot resolve outside a run ...
    c.update({g: OmegaConf.to_container(cfg[g], resolve=True) for g in ("generator", "distill")})  # ... these can
    return {**rec, **flatten(c, "cfg")}


def check_experiments(compose_fn: Compose = compose, conf_dir: Path = CONF_DIR) -> tuple[int, list[str]]:
    """Every experiment x every bits option composes, the bits option wins over the experiment, and a paper
    experiment (tag `paper`) runs the paper budget (conf/budget/paper.yaml). Returns (configs, errors)."""
    errors, n = [], 0
    bits = {b: OmegaConf.load(conf_dir / "bits" / f"{b}.yaml") for b in options("bits", conf_dir)}
    for exp, (b, want) in itertools.product(options("experiment", conf_dir), bits.items()):
        n += 1
        try:
            cfg = compose_fn([f"experiment={exp}", f"bits={b}"])
        except Exception as e:  # report every failure, not only the first
            errors.append(f"experiment={exp} bits={b}: {type(e).__name__}: {e}")
            continue
        if (cfg.quant.w_bits, cfg.quant.a_bits) != (want.w_bits, want.a_bits):
            errors.append(f"experiment={exp} bits={b}: quant is W{cfg.quant.w_bits}/A{cfg.quant.a_bits}")
        if "paper" in cfg.get("tags", []) and cfg.get("budget_name") != "paper":
            errors.append(f"experiment={exp} bits={b}: a paper experiment on budget {cfg.get('budget_name')}")
    return n, errors


def check_table(
    name: str,
    compose_fn: Compose = compose,
    seeds: str = "0,1,2",
    launch: str = "",
    extra: str = "",
    rows: str = "",
    conf_dir: Path = CONF_DIR,
    first_only: bool = False,
) -> tuple[list[tuple[str, int]], list[str]]:
    """Composes the jobs of table `name`; returns ([(command, jobs)], errors). first_only: one job per row."""
    table, out, errors = tables(conf_dir)[name], [], []
    for row, overrides in paper.row_overrides(table, seeds, launch, extra, rows):
        jobs = expand(overrides, conf_dir)
        out.append((shlex.join(["python", "train.py", "-m", *overrides]), len(jobs)))
        distinct = {}  # composition does not depend on seed and bits (checked above) or on launcher overrides
        for job in jobs:
            keep = [o for o in job if not o.startswith(("seed=", "bits=", "hydra/launcher=", "hydra."))]
            distinct.setdefault(tuple(keep), job)
        for job in list(distinct.values())[: 1 if first_only else None]:
            what = f"{name} / {row.label}: {' '.join(job)}"
            try:
                cfg = compose_fn([o for o in job if not o.startswith(("hydra/", "hydra."))])
            except Exception as e:
                errors.append(f"{what}: {type(e).__name__}: {e}")
                continue
            got, _ = paper.select([record_from_cfg(cfg)], table)
            if not got or got[0]["method"] != row.label:
                errors.append(f"{what}: table {name} would file this run under {got[0]['method'] if got else None}")
    return out, errors


def check_launch(launch: str) -> str:
    """The launcher overrides compose; returns the launcher's _target_."""
    cfg = compose(launch.split(), return_hydra_config=True)
    return str(OmegaConf.select(cfg, "hydra.launcher._target_"))
