"""Compose every experiment x every bits option, and every job of every paper table: no compute, no data.

Prints what `make tab-<table> LAUNCH=...` would submit (one command per row, its job count) and fails (exit 1)
on any config that does not compose, on a bits option that does not take effect, and on a table command whose
runs its own table would not pick up (make_tables' row matcher applied to the composed config).

    python scripts/check_configs.py                                   # what `make check-configs` runs
    python scripts/check_configs.py --tables imagenet --launch hydra/launcher=slurm --seeds 0,1,2

Bits and seed sweeps are covered by the experiment x bits pass; each table job is composed once per value of
its other sweeps (experiment, row overrides), with the first bits value.
"""

from __future__ import annotations

import argparse
import itertools
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Glob
from omegaconf import DictConfig, OmegaConf

from mimiq.report import paper
from mimiq.report.methods import flatten

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_tables  # noqa: E402

CONF_DIR = make_tables.ROOT / "conf"
Compose = Callable[[list[str]], DictConfig]


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
    return {**rec, **flatten(OmegaConf.to_container(cfg, resolve=False), "cfg")}


def check_experiments(compose_fn: Compose, conf_dir: Path = CONF_DIR) -> tuple[int, list[str]]:
    """Every experiment x every bits option composes, the bits option wins over the experiment, and a paper
    experiment (tag `paper`) runs the paper budget (conf/budget/paper.yaml)."""
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
    compose_fn: Compose,
    seeds: str = "0,1,2",
    launch: str = "",
    extra: str = "",
    rows: str = "",
    conf_dir: Path = CONF_DIR,
    first_only: bool = False,
) -> tuple[list, list]:
    """Composes the table's jobs; returns ([(command, jobs)], errors). first_only: one job per row."""
    table, out, errors = make_tables.TABLES[name], [], []
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


def check_launch(launch: str, compose_fn_hydra: Callable[[list[str]], DictConfig]) -> str:
    """The launcher overrides compose; returns the launcher's _target_."""
    cfg = compose_fn_hydra(launch.split())
    return str(OmegaConf.select(cfg, "hydra.launcher._target_"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tables", default=",".join(make_tables.TABLES), help="comma-separated table names")
    ap.add_argument("--seeds", default="0,1,2", help="seed sweep of the table commands")
    ap.add_argument("--launch", default="", help="launcher override(s), e.g. hydra/launcher=slurm")
    ap.add_argument("--extra", default="", help="more overrides, e.g. data.root=/data/imagenet")
    ap.add_argument("--rows", default="", help="only these row labels of each table (comma-separated)")
    args = ap.parse_args(argv)

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):

        def compose_fn(overrides: list[str]) -> DictConfig:
            return compose("train", overrides=overrides)

        n, errors = check_experiments(compose_fn)
        print(f"experiment x bits: {n} configs composed, {len(errors)} failed")
        if args.launch:
            target = check_launch(args.launch, lambda o: compose("train", overrides=o, return_hydra_config=True))
            print(f"launcher ({args.launch}): {target}")
        for name in (t.strip() for t in args.tables.split(",") if t.strip()):
            cmds, errs = check_table(name, compose_fn, args.seeds, args.launch, args.extra, args.rows)
            errors += errs
            failed = f"; {len(errs)} failed" if errs else ""
            print(
                f"\nmake tab-{name}: {sum(j for _, j in cmds)} jobs in {len(cmds)} commands, run in order "
                f"(each blocks until its jobs end){failed}"
            )
            for cmd, jobs in cmds:
                print(f"  [{jobs:4d} jobs] {cmd}")
    for e in errors:
        print(f"FAIL {e}", file=sys.stderr)
    print(f"\n{'FAILED: ' + str(len(errors)) + ' problems' if errors else 'all configs compose'}")
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
