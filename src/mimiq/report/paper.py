"""Paper tables from runs: metrics.json records -> cells joined with results/paper/*.csv -> CSV and markdown; and
the commands that run a table (`make tab-<table>`), from the same definition (mimiq.report.tables).

A run record is its metrics.json plus `run_dir`, `bits` and `cfg.<dotted key>` read from the run's
`.hydra/config.yaml` (so a row can match on any config value, e.g. `cfg.generator.w_interhead`).
"""

from __future__ import annotations

import csv
import fnmatch
import json
import shlex
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from mimiq.config import ROOT
from mimiq.report.methods import flatten
from mimiq.report.stats import summarize
from mimiq.report.tables import BITS_ORDER, DENSE_MODELS, FP, MODELS, Row, Table

PAPER_DIR = ROOT / "results" / "paper"  # the paper's numbers, one CSV per table
BEST_LABEL = "best epoch (test-set selection)"  # how the secondary column is named wherever it is shown
CSV_FIELDS = ["method", "model", "w_bits", "a_bits", "bits", "n", "mean", "std", "paper", "delta", "seeds"]
CSV_FIELDS += ["best_epoch_mean", "best_epoch_std", "source"]  # best_epoch_*: BEST_LABEL, over the same runs


# runs -> records
def bits_label(w_bits: Any, a_bits: Any) -> str:
    return "FP" if int(w_bits) >= 32 and int(a_bits) >= 32 else f"W{int(w_bits)}/A{int(a_bits)}"


def load_runs(runs: Path) -> list[dict]:
    """Every `metrics.json` under `runs`, plus `run_dir`, `bits` and `cfg.*` (from .hydra/config.yaml)."""
    import yaml  # PyYAML comes with omegaconf

    records = []
    for path in sorted(Path(runs).rglob("metrics.json")):
        rec = json.loads(path.read_text())
        rec.setdefault("experiment", "default")
        rec["run_dir"] = str(path.parent)
        for name in ("config_resolved.yaml", ".hydra/config.yaml"):  # resolved first: budget-own values
            if (path.parent / name).is_file():
                rec.update(flatten(yaml.safe_load((path.parent / name).read_text()) or {}, "cfg"))
                break
        if "w_bits" in rec and "a_bits" in rec:
            rec["bits"] = bits_label(rec["w_bits"], rec["a_bits"])
        records.append(rec)
    return records


def _same(a: Any, b: Any) -> bool:
    if a == b:
        return True
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return str(a) == str(b)


def matches(rec: dict, want: dict[str, Any]) -> bool:
    return all(k in rec and _same(rec[k], v) for k, v in want.items())


def select(records: Iterable[dict], table: Table) -> tuple[list[dict], int]:
    """The table's runs, each with its row label as `method`; also how many of its runs fit no row."""
    chosen, unmatched = [], 0
    for rec in records:
        if not (fnmatch.fnmatchcase(str(rec.get("experiment")), table.experiments) and matches(rec, table.match)):
            continue
        if table.rows:
            label = next((r.label for r in table.rows if matches(rec, r.match)), None)
        else:
            label = f"{rec.get('generator')}+{rec.get('distill')}"
        if label is None:
            unmatched += 1
            continue
        chosen.append({**rec, "method": label})
    return chosen, unmatched


# records -> cells
def load_paper(path: Path) -> dict[tuple, dict]:
    """results/paper/*.csv (method,model,w_bits,a_bits,top1,source), keyed by the first four."""
    with open(path, newline="") as f:
        return {(r["method"], r["model"], int(r["w_bits"]), int(r["a_bits"])): r for r in csv.DictReader(f)}


def table_cells(records: Iterable[dict], table: Table, paper: dict[tuple, dict]) -> list[dict]:
    """The table's cells: ours and the paper's, joined on (method, model, w_bits, a_bits), paper's order.

    mean/std/n: `table.metric` (final epoch); best_epoch_mean/std: `table.best` (test-set selection) if any."""
    recs = list(records)
    if table.fp_row:
        recs += [
            {
                **r,
                "method": FP,
                "w_bits": 32,
                "a_bits": 32,
                "bits": "FP",
                **{m: r.get(table.fp_metric) for m in (table.metric, table.best) if m},
            }
            for r in recs
        ]
    keys = ("method", "model", "w_bits", "a_bits")
    labels = [FP, *(r.label for r in table.rows)]
    ours = {tuple(c[k] for k in keys): c for c in summarize(recs, keys, (), table.metric)}
    best = {tuple(c[k] for k in keys): c for c in summarize(recs, keys, (), table.best)} if table.best else {}
    ours = dict(sorted(ours.items(), key=lambda kv: labels.index(kv[0][0]) if kv[0][0] in labels else len(labels)))
    cells = []
    for key in dict.fromkeys([*paper, *ours, *best]):  # paper rows first, in the CSV's order
        c, p, b = ours.get(key), paper.get(key), best.get(key)
        top1 = float(p[table.paper_column]) if p else None
        cells.append(
            {
                **dict(zip(keys, key, strict=True)),
                "bits": bits_label(key[2], key[3]),
                "n": c["n"] if c else 0,
                "mean": c["mean"] if c else None,
                "std": c["std"] if c else None,
                "paper": top1,
                "delta": c["mean"] - top1 if c and p else None,
                "seeds": c["seeds"] if c else "",
                "best_epoch_mean": b["mean"] if b else None,
                "best_epoch_std": b["std"] if b else None,
                "best_epoch_n": b["n"] if b else 0,  # MD only
                "source": p["source"] if p else "",
            }
        )
    return cells


def _num(v: float | None, fmt: str = "{:.2f}") -> str:
    return "" if v is None else fmt.format(v)


def write_csv(cells: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, lineterminator="\n")
        w.writeheader()
        for c in cells:
            nums = ("mean", "std", "paper", "delta", "best_epoch_mean", "best_epoch_std")
            w.writerow({**{k: c[k] for k in CSV_FIELDS}, **{k: _num(c[k], "{:.4f}") for k in nums}})


# cells -> markdown
def cell_text(c: dict | None) -> str:
    if c is None:
        return ""
    ours = "—" if c["mean"] is None else f"{c['mean']:.2f}"
    ours += (f" ± {c['std']:.2f}" if c["std"] is not None else "") + (f" ({c['n']})" if c["n"] else "")
    if c["paper"] is None:
        return ours
    dagger = "†" if "†" in c["source"] else ""
    delta = "" if c["delta"] is None else f" / {c['delta']:+.2f}"
    return f"{ours} / {c['paper']:.2f}{dagger}{delta}"


def _rank(key: str, value: Any) -> tuple:
    """Paper order of models and bit widths; other values keep the cells' order (rank 0)."""
    order = [*MODELS, *DENSE_MODELS] if key == "model" else BITS_ORDER if key == "bits" else []
    return (order.index(value), "") if value in order else (len(order), "" if key == "method" else str(value))


def _header(key: str, value: Any) -> str:
    return {**MODELS, **DENSE_MODELS}.get(value, str(value)) if key == "model" else str(value)


def best_view(c: dict) -> dict:
    """A cell with its best-epoch (test-set selection) values in place of the final epoch's."""
    mean = c["best_epoch_mean"]
    delta = mean - c["paper"] if mean is not None and c["paper"] is not None else None
    return {**c, "mean": mean, "std": c["best_epoch_std"], "n": c["best_epoch_n"], "delta": delta}


def _grid(table: Table, cells: list[dict]) -> list[str]:
    """The paper's layout: one line per row key tuple, one column per column key tuple."""

    def ordered(keys: Sequence[str]) -> list[tuple]:  # stable: ties keep the cells' (paper's) order
        values = dict.fromkeys(tuple(c[k] for k in keys) for c in cells)
        return sorted(values, key=lambda v: tuple(_rank(k, x) for k, x in zip(keys, v, strict=True)))

    rows, cols = ordered(table.row_keys), ordered(table.col_keys)
    by_key = {(tuple(c[k] for k in table.row_keys), tuple(c[k] for k in table.col_keys)): c for c in cells}
    head = [k.replace("_", " ").capitalize() for k in table.row_keys]
    head += [" ".join(_header(k, v) for k, v in zip(table.col_keys, col, strict=True)) for col in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        texts = [cell_text(by_key.get((row, col))) for col in cols]
        lines.append("| " + " | ".join([*map(str, row), *texts]) + " |")
    return lines


def to_markdown(name: str, table: Table, cells: list[dict], runs: list[dict], unmatched: int) -> str:
    """The table at the final epoch (`table.metric`), then, if the runs report it, at the best epoch."""
    final = " (final QAT epoch)" if table.best else ""
    lines = [
        f"# {name}: {table.title}",
        "",
        f"Metric `{table.metric}`{final}. Cell: ours mean ± std over runs (runs) / paper / delta = ours - paper; "
        "— = not run; † = paper value reproduced by the MaskAQ authors with MimiQ's code (results/paper/).",
        "",
        *_grid(table, cells),
    ]
    if table.best and any(c["best_epoch_n"] for c in cells):
        lines += [
            "",
            f"## Secondary: {BEST_LABEL}, `{table.best}`",
            "",
            "The best evaluated QAT epoch, chosen on the test set itself: an optimistic number, shown because "
            "the paper's code (its trainer.py) reports it. Same cells, runs and paper values as above.",
            "",
            *_grid(table, [best_view(c) for c in cells]),
        ]
    shas = sorted({str(r.get("git_sha", "?"))[:10] for r in runs})
    lines += [
        "",
        f"Runs used: {len(runs)} (git {', '.join(shas) or '-'}); runs of its experiments matching no row: "
        f"{unmatched}. Commands (`make tab-{name}`):",
        "",
        "```",
        *commands(table),
        "```",
    ]
    if runs:
        lines += [
            "",
            "<details><summary>run directories</summary>",
            "",
            *sorted(f"- {r['run_dir']}" for r in runs),
            "",
            "</details>",
        ]
    return "\n".join(lines) + "\n"


def make_table(
    name: str, table: Table, records: list[dict], out: Path, paper_dir: Path, write_empty: bool = False
) -> list[dict] | None:
    """results/<name>.csv and .md from the records of its runs; None (nothing written) if it has no run."""
    runs, unmatched = select(records, table)
    if not runs and not write_empty:
        return None
    paper = load_paper(paper_dir / table.paper) if table.paper else {}
    cells = table_cells(runs, table, paper)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(cells, out / f"{name}.csv")
    (out / f"{name}.md").write_text(to_markdown(name, table, cells, runs, unmatched))
    return cells


# commands
def row_overrides(table: Table, seeds: str = "0,1,2", launch: str = "", extra: str = "", rows: str = "") -> list:
    """[(row, overrides of its `python train.py -m`)]: the experiments x the sweep x seeds x the row.

    `launch` and `extra` come last and replace any table override of the same key (e.g. extra="bits=w4a4").
    """
    exp = table.experiments
    sweep_exp = f"experiment=glob({exp})" if any(c in exp for c in "*?[") else f"experiment={exp}"
    tail = [*shlex.split(launch), *shlex.split(extra)]
    taken = {o.split("=", 1)[0] for o in tail}
    wanted = {r.strip() for r in rows.split(",") if r.strip()}
    out = []
    for row in table.rows or (Row("all", {}),):
        if not wanted or row.label in wanted:
            own = [
                o for o in (sweep_exp, *table.sweep, f"seed={seeds}", *row.overrides) if o.split("=")[0] not in taken
            ]
            out.append((row, [*own, *tail]))
    return out


def commands(table: Table, seeds: str = "0,1,2", launch: str = "", extra: str = "", rows: str = "") -> list[str]:
    """One shell command per row of the table (see row_overrides)."""
    return [shlex.join(["python", "train.py", "-m", *o]) for _, o in row_overrides(table, seeds, launch, extra, rows)]


def run_commands(table: Table, seeds: str = "0,1,2", launch: str = "", extra: str = "", rows: str = "") -> int:
    """Runs the table's commands (row_overrides) in order, in the foreground, with this interpreter; stops at the
    first that fails and returns its exit code (0: all ran)."""
    for _, overrides in row_overrides(table, seeds, launch, extra, rows):
        print("+ " + shlex.join(["python", "train.py", "-m", *overrides]), flush=True)
        rc = subprocess.run([sys.executable, "train.py", "-m", *overrides], cwd=ROOT).returncode
        if rc:
            print(f"make_tables: that command failed (exit {rc}); later rows not run", file=sys.stderr)
            return rc
    return 0


def tabulate(
    tables: dict[str, Table],
    names: Sequence[str],
    runs: Path,
    out: Path,
    paper_dir: Path = PAPER_DIR,
    all_: bool = False,
) -> dict[str, list[dict]]:
    """results/<name>.csv|md of each named table from the metrics.json under `runs`; a table without runs is
    skipped unless `all_` (paper numbers only). Returns the cells of the tables written. Unknown names: ValueError
    before anything is read."""
    if unknown := [n for n in names if n not in tables]:
        raise ValueError(f"unknown table(s) {unknown}; tables: {', '.join(tables)}")
    records = load_runs(runs)
    written = {}
    for name in names:
        cells = make_table(name, tables[name], records, out, paper_dir, write_empty=all_)
        if cells is not None:
            written[name] = cells
            n = sum(c["n"] for c in cells if c["method"] != FP)
            print(f"{name}: {n} runs -> {out / name}.csv, .md")
    if not written:
        print(f"no run of any table under {runs} ({len(records)} metrics.json); --all writes them all")
    return written


def log_wandb(tables: dict[str, list[dict]], log_dir: Path = ROOT / "logs") -> None:
    """Each table's cells as a wandb.Table (`tables/<name>`); WANDB_MODE=offline works without network."""
    import wandb  # lazy: only with --wandb

    with wandb.init(project="mimiq", job_type="tables", dir=str(log_dir)) as run:
        for name, cells in tables.items():
            data = [[c[k] for k in CSV_FIELDS] for c in cells]
            run.log({f"tables/{name}": wandb.Table(columns=CSV_FIELDS, data=data)})
