"""The paper's tables as data: which experiments feed each, its rows, layout and metric.

A row is a label (the paper's name, as in results/paper/<table>.csv), the record values that select its runs and
the overrides that `make tab-<table>` appends to the table's sweep to produce them. A method row is declared in its
conf/method/ file (`method.tables.<row set>`: position, label, and any extra match/overrides) and takes its match
and overrides from there (`method_rows`), so a row is defined once, in the method group; a new method file with a
`tables` entry joins the table without any change here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mimiq.config import CONF_DIR
from mimiq.report.methods import Method, load_methods

FP = "FP"  # method label of the full-precision row
BASE_METHOD = "mimiq"  # the method every paper experiment selects (`override /method: mimiq`): no override needed

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
# Dense-task models: our run names (`task.model_name`) -> column headers, in the tables' order.
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
    """One row: `label` as in results/paper/<table>.csv, the record values that select its runs, and the overrides
    that `make tab-<table>` appends to the table's sweep to produce them."""

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
    # Secondary column: best evaluated epoch = model selection on the test set (what the paper's code, its
    # trainer.py, reports); None: the runs report no such value (dense tasks evaluate once, after QAT).
    best: str | None = "top1_best"
    match: dict[str, Any] = field(default_factory=dict)  # every run of the table must match this too
    fp_row: bool = False  # add the teacher's FP metric (metrics.json `fp_metric`) as row "FP", bits "FP"
    paper: str | None = None  # results/paper/<file>; None: no paper numbers
    fp_metric: str = "fp_top1"  # metrics.json key of the FP model's value of `metric`
    paper_column: str = "top1"  # the value column of the paper CSV


def method_rows(methods: dict[str, Method], row_set: str) -> tuple[Row, ...]:
    """The rows of `row_set` (mimiq.report.methods.ROW_SETS) declared by the methods, in their `position` order.

    A row matches its method's generator and distill, every setting any method of the row set makes (e.g.
    generator.w_interhead) at this method's value, and the row's own `match`; its command adds `method=<id>`
    (nothing for BASE_METHOD, the experiments' own) and the row's own `overrides`.
    """
    entries = sorted(
        ((r.position, m.order, m.id, m, r) for m in methods.values() for r in m.tables.get(row_set, ())),
        key=lambda e: e[:3],
    )
    keys = sorted({k for *_, m, _ in entries for k in m.settings})
    out = []
    for *_, m, r in entries:
        own = () if m.id == BASE_METHOD else (f"method={m.id}",)
        out.append(Row(r.label, {**m.match(keys), **r.match}, (*own, *r.overrides)))
    return tuple(out)


def _dense_table(methods: dict[str, Method], name: str, title: str, experiments: str, task: str, metric: str) -> Table:
    """Dense tables: one MimiQ recipe (HSAD + task-level QAT), its sources of synthetic images (row set `dense`)."""
    return Table(
        title=title,
        experiments=experiments,
        rows=method_rows(methods, "dense"),
        sweep=("bits=w4a4,w4a8,w8a8",),
        row_keys=("bits", "method"),
        col_keys=("model",),
        metric=metric,
        match={"cfg.task.name": task, "cfg.task.quantize": "backbone"},
        best=None,
        fp_row=True,
        paper=f"{name}.csv",
        fp_metric=f"fp_{metric}",
        paper_column=metric,
    )


def paper_tables(methods: dict[str, Method] | None = None) -> dict[str, Table]:
    """Every paper table; `methods`: the registry (mimiq.report.methods.load_methods; default: conf/method/)."""
    methods = load_methods(Path(CONF_DIR)) if methods is None else methods
    tables = {
        "imagenet": Table(
            title="Paper Tab. 2 (arXiv 2407.20021): ImageNet top-1 (%) of data-free quantized ViTs",
            experiments="tab2_*",
            rows=method_rows(methods, "imagenet"),
            sweep=("bits=w4a4,w5a5,w4a8,w3a3",),
            row_keys=("bits", "method"),
            col_keys=("model",),
            match={"data": "imagenet"},
            fp_row=True,
            paper="imagenet.csv",
        ),
        "abl_components": Table(
            title="Ablation: inter-head similarity in generation x HSAD in QAT, ViT-B W4/A4",
            experiments="abl_components_vit_b",
            rows=method_rows(methods, "abl_components"),
            match={"data": "imagenet", "generator": "mimiq"},
            paper="abl_components.csv",
        ),
        # Parameter sweeps of MimiQ's own row (the experiments' method), not methods: one row per value.
        "abl_distance": Table(
            title="Ablation: HSAD distance (the paper code's --head_dist_distance), ViT-B W4/A4",
            experiments="abl_distance_vit_b",
            rows=tuple(
                Row(d, {"cfg.distill.distance": d}, (f"distill.distance={d}",)) for d in ("ssim", "mse", "l1", "kl")
            ),
            match={"data": "imagenet", "generator": "mimiq", "distill": "mimiq"},
            paper="abl_distance.csv",
        ),
        "abl_images": Table(
            title="Ablation: number of synthetic images (the paper code's default: 10k), ViT-B W4/A4",
            experiments="abl_images_vit_b",
            rows=tuple(Row(f"{n} images", {"num_images": n}, (f"generator.num_images={n}",)) for n in (1000, 10000)),
            match={"data": "imagenet", "generator": "mimiq", "distill": "mimiq"},
            paper="abl_images.csv",
        ),
    }
    # Dense tasks. MimiQ's own dense table was not reachable: the paper column holds the public FP checkpoints'
    # numbers and PSAQ-ViT V2's (results/paper/dense_*.csv, their `source` column).
    dense = [
        ("dense_coco", "Dense: COCO val2017 box AP (%), backbone quantized", "dense_*rcnn*", "detection", "box_ap"),
        (
            "dense_coco_mask",
            "Dense: COCO val2017 mask AP (%), backbone quantized; the runs of make tab-dense_coco",
            "dense_*rcnn*",
            "detection",
            "mask_ap",
        ),
        (
            "dense_ade",
            "Dense: ADE20K val mIoU (%), single scale, backbone quantized",
            "dense_upernet_*",
            "segmentation",
            "miou",
        ),
    ]
    for name, title, experiments, task, metric in dense:
        tables[name] = _dense_table(methods, name, title, experiments, task, metric)
    return tables
