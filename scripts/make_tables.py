"""Paper tables from runs: every `metrics.json` under --runs -> results/<table>.csv and .md, beside the paper.

A table is a small definition (mimiq.report.tables): which experiments feed it, its rows (the paper's label, a
method of conf/method/ that lists the table in its `method.tables`, or a parameter value, which gives both what a
run must match to be that row and the overrides that produce such runs), its layout and its metric. The same
definition gives the commands that run the table (`--commands`, `make tab-<table>`), so what is run and what is
tabulated cannot drift apart (scripts/check_configs.py composes every such command).

    python scripts/make_tables.py                # logs/ -> results/<table>.csv|md (the tables that have runs)
    python scripts/make_tables.py --runs logs --tables imagenet --all --wandb
    python scripts/make_tables.py --commands imagenet --launch hydra/launcher=slurm  # one command per row
    python scripts/make_tables.py --commands imagenet --run --rows MimiQ --extra data.root=/data/imagenet

The metric is the final QAT epoch's (`top1`): no model selection on the test set. The best evaluated epoch
(`top1_best`: selected on the test set, as the paper code reports) is a secondary column, labelled as such.

CSV: one line per cell (method, model, w_bits, a_bits, bits, n, mean, std, paper, delta, seeds, best_epoch_mean,
best_epoch_std, source); mean and std (sample, n-1; empty for one run) over runs, normally seeds. MD: the paper's
layout, cell "ours ± std (runs) / paper / delta", then the same layout for the best epoch. A run record is its
metrics.json plus `method`, `bits` and `cfg.<dotted key>` read from the run's `.hydra/config.yaml` (so a row can
match on any config value, e.g. `cfg.generator.w_interhead`). The machinery is mimiq.report.paper.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mimiq.config import ROOT
from mimiq.report import paper
from mimiq.report.tables import paper_tables

TABLES = paper_tables()  # the rows' methods: conf/method/ (`method.tables`)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=Path, default=ROOT / "logs", help="folder searched for **/metrics.json")
    ap.add_argument("--out", type=Path, default=ROOT / "results", help="where <table>.csv|md are written")
    ap.add_argument("--tables", default=",".join(TABLES), help="comma-separated table names")
    ap.add_argument("--all", action="store_true", help="also write tables without runs (paper numbers only)")
    ap.add_argument("--wandb", action="store_true", help="log each table as a wandb.Table")
    ap.add_argument("--commands", metavar="TABLE", help="print the table's commands, one per row, and stop")
    ap.add_argument("--run", action="store_true", help="with --commands: run them in order, in the foreground")
    ap.add_argument("--seeds", default="0,1,2", help="seed sweep of --commands")
    ap.add_argument("--launch", default="", help="launcher override(s) of --commands: hydra/launcher=slurm")
    ap.add_argument("--extra", default="", help="more overrides of --commands, e.g. data.root=/data/imagenet")
    ap.add_argument("--rows", default="", help="with --commands: only these row labels (comma-separated)")
    args = ap.parse_args(argv)

    if args.commands:
        if args.commands not in TABLES:
            ap.error(f"unknown table {args.commands!r}; tables: {', '.join(TABLES)}")
        table, sweep = TABLES[args.commands], (args.seeds, args.launch, args.extra, args.rows)
        if args.run:
            return paper.run_commands(table, *sweep)
        print("\n".join(paper.commands(table, *sweep)))
        return 0
    try:
        written = paper.tabulate(
            TABLES, [t.strip() for t in args.tables.split(",") if t.strip()], args.runs, args.out, all_=args.all
        )
    except ValueError as e:
        ap.error(str(e))
    if args.wandb and written:
        paper.log_wandb(written)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
