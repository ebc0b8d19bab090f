"""Compose every experiment x every bits option, and every job of every paper table: no compute, no data.

Prints what `make tab-<table> LAUNCH=...` would submit (one command per row, its job count) and fails (exit 1)
on any config that does not compose, on a bits option that does not take effect, and on a table command whose
runs its own table would not pick up (`mimiq.report.configs`).

    python scripts/check_configs.py                                   # what `make check-configs` runs
    python scripts/check_configs.py --tables imagenet --launch hydra/launcher=slurm --seeds 0,1,2

Bits and seed sweeps are covered by the experiment x bits pass; each table job is composed once per value of
its other sweeps (experiment, row overrides), with the first bits value.
"""

from __future__ import annotations

import argparse
import sys

from mimiq.report import configs


def main(argv: list[str] | None = None) -> int:
    tables = configs.tables()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tables", default=",".join(tables), help="comma-separated table names")
    ap.add_argument("--seeds", default="0,1,2", help="seed sweep of the table commands")
    ap.add_argument("--launch", default="", help="launcher override(s), e.g. hydra/launcher=slurm")
    ap.add_argument("--extra", default="", help="more overrides, e.g. data.root=/data/imagenet")
    ap.add_argument("--rows", default="", help="only these row labels of each table (comma-separated)")
    args = ap.parse_args(argv)

    n, errors = configs.check_experiments()
    print(f"experiment x bits: {n} configs composed, {len(errors)} failed")
    if args.launch:
        print(f"launcher ({args.launch}): {configs.check_launch(args.launch)}")
    for name in (t.strip() for t in args.tables.split(",") if t.strip()):
        cmds, errs = configs.check_table(name, seeds=args.seeds, launch=args.launch, extra=args.extra, rows=args.rows)
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
