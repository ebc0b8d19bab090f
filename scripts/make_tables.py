"""Paper tables from runs: every `metrics.json` under --runs -> results/<table>.csv and .md, beside the paper.

A table is a small definition (TABLES below): which experiments feed it, its rows (a method label, what a run
must match to be that row, and the overrides that produce such runs), its layout and its metric. The same
definition gives the commands that run the table (`--commands`, `make tab-<table>`), so what is run and what
is tabulated cannot drift apart (scripts/check_configs.py composes every such command).

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
match on any config value, e.g. `cfg.generator.w_interhead`).
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import json
import shlex
import statistics
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PAPER_DIR = ROOT / "results" / "paper"
FP = "FP"  # method label of the full-precision row

# Column order and short names of the paper (timm registry names as run keys).
MODELS = {
    "vit_tiny_patch16_224": "ViT-T",
    "vit_small_patch16_224": "ViT-S",
    "vit_base_patch16_224": "ViT-B",
    "deit_tiny_patch16_224": "DeiT-T",
    "deit_small_patch16_224": "DeiT-S",
    "deit_base_patch16_224": "DeiT-B",
    "swin_tiny_patch4_window7_224": "Swin-T",
    "swin_small_patch4_window7_224": "Swin-S",
    "swin_base_patch4_window7_224": "Swin-B",
}
# Dense-task models (issue 9): our run names (`task.model_name`) -> column headers, in the tables' order.
DENSE_MODELS = {
    "mask_rcnn_swin_t": "Mask R-CNN Swin-T",
    "mask_rcnn_swin_s": "Mask R-CNN Swin-S",
    "cascade_mask_rcnn_swin_t": "Cascade Mask R-CNN Swin-T",
    "cascade_mask_rcnn_swin_s": "Cascade Mask R-CNN Swin-S",
    "upernet_swin_t": "UperNet Swin-T",
    "upernet_swin_s": "UperNet Swin-S",
    "upernet_deit_s": "UperNet DeiT-S",
}
BITS_ORDER = ["FP", "W3/A3", "W4/A4", "W5/A5", "W4/A8", "W8/A8", "W2/A4"]  # the paper's row groups first


@dataclass(frozen=True)
class Row:
    """One method row: `label` as in results/paper/<table>.csv, the record values that select its runs, and
    the overrides that `make tab-<table>` appends to the table's sweep to produce them."""

    label: str
    match: dict[str, Any]
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class Table:
    title: str
    experiments: str  # fnmatch pattern on the run's `experiment`; also the experiment= sweep of its commands
    rows: tuple[Row, ...] = ()  # empty: one row per (generator, distill) found, label "generator+distill"
    sweep: tuple[str, ...] = ()  # overrides common to every row's command (besides experiment and seed)
    row_keys: tuple[str, ...] = ("method",)
    col_keys: tuple[str, ...] = ("model", "bits")
    metric: str = "top1"  # final QAT epoch: the test set selects nothing
    # Secondary column: best evaluated epoch = model selection on the test set (what the paper code reports, spec
    # §1); None: the runs report no such value (dense tasks evaluate once, after QAT).
    best: str | None = "top1_best"
    match: dict[str, Any] = field(default_factory=dict)  # every run of the table must match this too
    fp_row: bool = False  # add the teacher's FP metric (metrics.json `fp_metric`) as row "FP", bits "FP"
    paper: str | None = None  # results/paper/<file>; None: no paper numbers
    fp_metric: str = "fp_top1"  # metrics.json key of the FP model's value of `metric`
    paper_column: str = "top1"  # the value column of the paper CSV


def _imagenet_rows() -> tuple[Row, ...]:
    kd = ("distill=kd",)
    return (
        Row("MimiQ", {"generator": "mimiq", "distill": "mimiq"}),
        Row("PSAQ-ViT", {"generator": "psaq", "distill": "kd"}, ("generator=psaq", *kd)),
        Row("PSAQ-ViT V2", {"generator": "psaq_v2", "distill": "kd"}, ("generator=psaq_v2", *kd)),
        Row("Gaussian noise + KD", {"generator": "noise", "distill": "kd"}, ("generator=noise", *kd)),
        Row("Real data + KD", {"generator": "real", "distill": "kd"}, ("generator=real", *kd)),
        Row("Real data + HSAD", {"generator": "real", "distill": "mimiq"}, ("generator=real",)),
    )


def _dense_rows() -> tuple[Row, ...]:
    """Dense tables: one MimiQ recipe (HSAD + task-level QAT), three sources of synthetic images."""
    backbone, classifier = {"cfg.task.synth.source": "backbone"}, {"cfg.task.synth.source": "classifier"}
    return (
        Row("MimiQ (backbone-made images)", {"generator": "mimiq", "distill": "mimiq", **backbone}),
        Row(
            "MimiQ (classifier-made images)",
            {"generator": "mimiq", "distill": "mimiq", **classifier},
            ("task.synth.source=classifier",),
        ),
        Row("Gaussian noise", {"generator": "noise", "distill": "mimiq"}, ("generator=noise",)),
    )


def _dense_table(title: str, experiments: str, task: str, metric: str, paper: str) -> Table:
    return Table(
        title=title,
        experiments=experiments,
        rows=_dense_rows(),
        sweep=("bits=w4a4,w4a8,w8a8",),
        row_keys=("bits", "method"),
        col_keys=("model",),
        metric=metric,
        match={"cfg.task.name": task, "cfg.task.quantize": "backbone"},
        best=None,
        fp_row=True,
        paper=paper,
        fp_metric=f"fp_{metric}",
        paper_column=metric,
    )


_IH, _NO_IH = {"cfg.generator.w_interhead": 1.0}, {"cfg.generator.w_interhead": 0.0}
TABLES: dict[str, Table] = {
    "imagenet": Table(
        title="Paper Tab. 2: ImageNet top-1 (%) of data-free quantized ViTs (spec §5.1)",
        experiments="tab2_*",
        rows=_imagenet_rows(),
        sweep=("bits=w4a4,w5a5,w4a8,w3a3",),
        row_keys=("bits", "method"),
        col_keys=("model",),
        match={"data": "imagenet"},
        fp_row=True,
        paper="imagenet.csv",
    ),
    "abl_components": Table(
        title="Ablation: inter-head similarity in generation x HSAD in QAT, ViT-B W4/A4 (spec §5.2)",
        experiments="abl_components_vit_b",
        rows=(
            Row("MimiQ", {**_IH, "distill": "mimiq"}),
            Row("w/o inter-head", {**_NO_IH, "distill": "mimiq"}, ("generator.w_interhead=0.0",)),
            Row("w/o HSAD", {**_IH, "distill": "kd"}, ("distill=kd",)),
            Row(
                "w/o inter-head, w/o HSAD",
                {**_NO_IH, "distill": "kd"},
                ("generator.w_interhead=0.0", "distill=kd"),
            ),
        ),
        match={"data": "imagenet", "generator": "mimiq"},
        paper="abl_components.csv",
    ),
    "abl_distance": Table(
        title="Ablation: HSAD distance, ViT-B W4/A4 (spec §4.1, §5.2)",
        experiments="abl_distance_vit_b",
        rows=tuple(
            Row(d, {"cfg.distill.distance": d}, (f"distill.distance={d}",)) for d in ("ssim", "mse", "l1", "kl")
        ),
        match={"data": "imagenet", "generator": "mimiq", "distill": "mimiq"},
        paper="abl_distance.csv",
    ),
    "abl_images": Table(
        title="Ablation: number of synthetic images, ViT-B W4/A4 (spec §2.2, §5.2)",
        experiments="abl_images_vit_b",
        rows=tuple(Row(f"{n} images", {"num_images": n}, (f"generator.num_images={n}",)) for n in (1000, 10000)),
        match={"data": "imagenet", "generator": "mimiq", "distill": "mimiq"},
        paper="abl_images.csv",
    ),
    # Dense tasks (issue 9). MimiQ's own dense table was not reachable (MIMIQ_SPEC.md §5.2): the paper column holds
    # the public FP checkpoints' numbers and PSAQ-ViT V2's abstract (DENSE_AND_PSAQ_V2.md §2.2, §4).
    "dense_coco": _dense_table(
        "Dense: COCO val2017 box AP (%), backbone quantized (issue 9)",
        "dense_*rcnn*",
        "detection",
        "box_ap",
        "dense_coco.csv",
    ),
    "dense_coco_mask": _dense_table(
        "Dense: COCO val2017 mask AP (%), backbone quantized (issue 9); the runs of make tab-dense_coco",
        "dense_*rcnn*",
        "detection",
        "mask_ap",
        "dense_coco_mask.csv",
    ),
    "dense_ade": _dense_table(
        "Dense: ADE20K val mIoU (%), single scale, backbone quantized (issue 9)",
        "dense_upernet_*",
        "segmentation",
        "miou",
        "dense_ade.csv",
    ),
}


# runs -> records
def flatten(d: Any, prefix: str) -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(flatten(v, f"{prefix}.{k}"))
    return out


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
        for name in (".hydra/config.yaml", "config_resolved.yaml"):
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
def summarize(records: Iterable[dict], row_keys: Sequence[str], col_keys: Sequence[str], metric: str) -> list[dict]:
    """Mean, sample std (None for one run) and count of `metric` per (row, column) cell.

    Returns one dict per cell: the row and column key values, then n, mean, std, seeds (sorted, ","-joined).
    Records without the metric or a key are skipped. Generic: the mini benchmark's tables reuse it.
    """
    groups: dict[tuple, list[dict]] = {}
    for rec in records:
        if rec.get(metric) is None or any(k not in rec for k in (*row_keys, *col_keys)):
            continue
        groups.setdefault(tuple(rec[k] for k in (*row_keys, *col_keys)), []).append(rec)
    cells = []
    for key, recs in groups.items():
        values = [float(r[metric]) for r in recs]
        seeds = sorted({str(r.get("seed")) for r in recs})
        cells.append(
            {
                **dict(zip((*row_keys, *col_keys), key, strict=True)),
                "n": len(values),
                "mean": statistics.fmean(values),
                "std": statistics.stdev(values) if len(values) > 1 else None,
                "seeds": ",".join(seeds),
            }
        )
    return cells


def load_paper(path: Path) -> dict[tuple, dict]:
    """results/paper/*.csv (method,model,w_bits,a_bits,top1,source), keyed by the first four."""
    with open(path, newline="") as f:
        return {(r["method"], r["model"], int(r["w_bits"]), int(r["a_bits"])): r for r in csv.DictReader(f)}


BEST_LABEL = "best epoch (test-set selection)"  # how the secondary column is named wherever it is shown
CSV_FIELDS = ["method", "model", "w_bits", "a_bits", "bits", "n", "mean", "std", "paper", "delta", "seeds"]
CSV_FIELDS += ["best_epoch_mean", "best_epoch_std", "source"]  # best_epoch_*: BEST_LABEL, over the same runs


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
            "the paper code reports it (spec §1). Same cells, runs and paper values as above.",
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
        *commands(name),
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


# commands
def row_overrides(name: str, seeds: str = "0,1,2", launch: str = "", extra: str = "", rows: str = "") -> list:
    """[(row, overrides of its `python train.py -m`)]: the experiments x the sweep x seeds x the row.

    `launch` and `extra` come last and replace any table override of the same key (e.g. extra="bits=w4a4").
    """
    table = TABLES[name]
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


def commands(name: str, seeds: str = "0,1,2", launch: str = "", extra: str = "", rows: str = "") -> list[str]:
    """One shell command per row of the table (see row_overrides)."""
    return [shlex.join(["python", "train.py", "-m", *o]) for _, o in row_overrides(name, seeds, launch, extra, rows)]


# main
def make_table(name: str, records: list[dict], out: Path, write_empty: bool = False) -> list[dict] | None:
    table = TABLES[name]
    runs, unmatched = select(records, table)
    if not runs and not write_empty:
        return None
    paper = load_paper(PAPER_DIR / table.paper) if table.paper else {}
    cells = table_cells(runs, table, paper)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(cells, out / f"{name}.csv")
    (out / f"{name}.md").write_text(to_markdown(name, table, cells, runs, unmatched))
    return cells


def log_wandb(tables: dict[str, list[dict]]) -> None:
    import wandb  # lazy: only with --wandb; WANDB_MODE=offline works without network

    with wandb.init(project="mimiq", job_type="tables", dir=str(ROOT / "logs")) as run:
        for name, cells in tables.items():
            data = [[c[k] for k in CSV_FIELDS] for c in cells]
            run.log({f"tables/{name}": wandb.Table(columns=CSV_FIELDS, data=data)})


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
        for _, overrides in row_overrides(args.commands, args.seeds, args.launch, args.extra, args.rows):
            print(("+ " if args.run else "") + shlex.join(["python", "train.py", "-m", *overrides]), flush=True)
            if args.run:  # the venv's python, whatever `python` is on PATH
                rc = subprocess.run([sys.executable, "train.py", "-m", *overrides], cwd=ROOT).returncode
                if rc:
                    print(f"make_tables: that command failed (exit {rc}); later rows not run", file=sys.stderr)
                    return rc
        return 0

    records = load_runs(args.runs)
    written = {}
    for name in (t.strip() for t in args.tables.split(",") if t.strip()):
        if name not in TABLES:
            ap.error(f"unknown table {name!r}; tables: {', '.join(TABLES)}")
        cells = make_table(name, records, args.out, write_empty=args.all)
        if cells is not None:
            written[name] = cells
            n = sum(c["n"] for c in cells if c["method"] != FP)
            print(f"{name}: {n} runs -> {args.out / name}.csv, .md")
    if not written:
        print(f"no run of any table under {args.runs} ({len(records)} metrics.json); --all writes them all")
    if args.wandb and written:
        log_wandb(written)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
