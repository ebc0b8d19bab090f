"""The paper's tables as data: which experiments feed each, its rows, layout and metric.

A row is a label (the paper's name, as in results/paper/<table>.csv), the record values that select its runs and
the overrides that `make tab-<table>` appends to the table's sweep to produce them. A method row takes both from
its conf/method/ file (`method_row`), so a row is defined once, in the method group.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mimiq.report.methods import Method

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


def method_rows(
    rows: Sequence[tuple[str, Method] | tuple[str, Method, dict, tuple[str, ...]]],
) -> tuple[Row, ...]:
    """Rows that are methods: (label, method[, more record values, more overrides]). A row matches its method's
    generator and distill, and every setting any method of the table makes (e.g. generator.w_interhead) at this
    method's value; its command adds `method=<id>` (nothing for BASE_METHOD, the experiments' own)."""
    keys = sorted({k for r in rows for k in r[1].settings})
    out = []
    for label, m, *more in rows:
        match, extra = more if more else ({}, ())
        own = () if m.id == BASE_METHOD else (f"method={m.id}",)
        out.append(Row(label, {**m.match(keys), **match}, (*own, *extra)))
    return tuple(out)


def _dense_table(methods: dict[str, Method], name: str, title: str, experiments: str, task: str, metric: str) -> Table:
    """Dense tables: one MimiQ recipe (HSAD + task-level QAT), three sources of synthetic images."""
    backbone, classifier = {"cfg.task.synth.source": "backbone"}, {"cfg.task.synth.source": "classifier"}
    rows = method_rows(
        [
            ("MimiQ (backbone-made images)", methods["mimiq"], backbone, ()),
            ("MimiQ (classifier-made images)", methods["mimiq"], classifier, ("task.synth.source=classifier",)),
            ("Gaussian noise", methods["noise_hsad"]),
        ]
    )
    return Table(
        title=title,
        experiments=experiments,
        rows=rows,
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


def paper_tables(methods: dict[str, Method]) -> dict[str, Table]:
    """Every paper table; `methods`: conf/method/ (mimiq.report.methods.load_methods)."""
    m = methods
    imagenet = [
        ("MimiQ", m["mimiq"]),
        ("PSAQ-ViT", m["psaq"]),
        ("PSAQ-ViT V2", m["psaq_v2"]),
        ("Gaussian noise + KD", m["noise_kd"]),
        ("Real data + KD", m["real_kd"]),
        ("Real data + HSAD", m["real_hsad"]),
    ]
    components = [
        ("MimiQ", m["mimiq"]),
        ("w/o inter-head", m["mimiq_no_interhead"]),
        ("w/o HSAD", m["mimiq_kd"]),
        ("w/o inter-head, w/o HSAD", m["mimiq_no_interhead_kd"]),
    ]
    tables = {
        "imagenet": Table(
            title="Paper Tab. 2 (arXiv 2407.20021): ImageNet top-1 (%) of data-free quantized ViTs",
            experiments="tab2_*",
            rows=method_rows(imagenet),
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
            rows=method_rows(components),
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
