"""The paper tables (mimiq.report.paper, scripts/make_tables.py) on fixture run directories: mean, std, count and
delta vs paper land in the CSV; the metric is the final epoch's `top1`, the best epoch (`top1_best`, test-set
selection) a labelled secondary column."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from mimiq.config import ROOT
from mimiq.report import paper, stats
from mimiq.report.tables import DENSE_MODELS, MODELS, paper_tables

TABLES = paper_tables()


def tabulate(runs: Path, out: Path, names=tuple(TABLES), all_: bool = False) -> dict:
    return paper.tabulate(TABLES, list(names), runs, out, all_=all_)


DEIT_S, VIT_B = "deit_small_patch16_224", "vit_base_patch16_224"


def write_run(root: Path, name: str, cfg: dict | None = None, **metrics) -> None:
    """A fake Hydra run dir: metrics.json as pipeline.run writes it, and .hydra/config.yaml."""
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    rec = {
        "experiment": "tab2_deit_s",
        "model": DEIT_S,
        "data": "imagenet",
        "w_bits": 4,
        "a_bits": 4,
        "generator": "mimiq",
        "distill": "mimiq",
        "seed": 0,
        "fp_top1": 79.8,
        "top1": 1.0,
        "top1_best": 1.0,
        "num_images": 10000,
        "git_sha": "0123456789abcdef",
        **metrics,
    }
    (run / "metrics.json").write_text(json.dumps(rec))
    cfg = cfg or {
        "generator": {"name": rec["generator"], "w_interhead": 1.0},
        "distill": {"name": rec["distill"]},
    }
    (run / ".hydra" / "config.yaml").write_text(json.dumps(cfg))  # JSON is YAML


@pytest.fixture
def runs(tmp_path) -> Path:
    root = tmp_path / "logs"
    # top1 = final epoch (the metric); top1_best = best epoch (>= top1, the secondary column)
    write_run(root, "mimiq_s0", seed=0, top1=62.0, top1_best=63.0, fp_top1=79.0)
    write_run(root, "mimiq_s1", seed=1, top1=64.0, top1_best=66.0, fp_top1=80.0)
    write_run(root, "psaq_s0", generator="psaq", distill="kd", top1=5.0, top1_best=9.0, fp_top1=81.0)
    write_run(root, "w5a5", w_bits=5, a_bits=5, top1=70.5, top1_best=70.5)
    write_run(root, "no_row", distill="kd", top1=50.0, top1_best=50.0)  # mimiq + kd: no imagenet table row
    write_run(root, "mini", experiment="default", data="mini", model="vit_mini", top1=90.0, top1_best=90.0)
    gen = {"name": "mimiq", "w_interhead": 0.0}
    write_run(
        root,
        "abl_no_ih",
        {"generator": gen, "distill": {"name": "mimiq"}},
        experiment="abl_components_vit_b",
        model=VIT_B,
        top1=40.0,
        top1_best=45.0,
    )
    return root


def read_csv(path: Path) -> dict[tuple, dict]:
    with open(path, newline="") as f:
        return {(r["method"], r["model"], r["bits"]): r for r in csv.DictReader(f)}


def test_tables_from_fixture_runs(runs, tmp_path):
    out = tmp_path / "results"
    tabulate(runs, out)
    assert sorted(p.name for p in out.iterdir()) == [
        "abl_components.csv",
        "abl_components.md",
        "imagenet.csv",
        "imagenet.md",
    ]
    cells = read_csv(out / "imagenet.csv")
    mimiq = cells[("MimiQ", DEIT_S, "W4/A4")]
    assert (mimiq["n"], mimiq["mean"], mimiq["std"], mimiq["paper"], mimiq["delta"], mimiq["seeds"]) == (
        "2",
        "63.0000",
        "1.4142",
        "62.7200",
        "0.2800",
        "0,1",
    )
    assert (mimiq["best_epoch_mean"], mimiq["best_epoch_std"]) == ("64.5000", "2.1213")  # top1_best: secondary
    psaq = cells[("PSAQ-ViT", DEIT_S, "W4/A4")]
    assert (psaq["n"], psaq["mean"], psaq["std"], psaq["delta"]) == ("1", "5.0000", "", "-0.9000")
    assert (psaq["best_epoch_mean"], psaq["best_epoch_std"]) == ("9.0000", "")
    assert cells[("MimiQ", DEIT_S, "W5/A5")]["delta"] == "-2.0900"  # 70.50 - 72.59
    fp = cells[("FP", DEIT_S, "FP")]  # teacher top-1 of every run of the table
    assert (fp["n"], fp["mean"], fp["delta"], fp["best_epoch_mean"]) == ("4", "79.9500", "0.1000", "79.9500")
    gdfq = cells[("GDFQ", DEIT_S, "W4/A4")]  # paper-only row: kept, nothing measured
    assert (gdfq["n"], gdfq["mean"], gdfq["paper"], gdfq["best_epoch_mean"]) == ("0", "", "22.1200", "")
    assert "MaskAQ Tab.1" in mimiq["source"]
    assert not any(k[0] == "mimiq+kd" or k[1] == "vit_mini" for k in cells)

    md = (out / "imagenet.md").read_text()
    final, best = md.split("## Secondary: best epoch (test-set selection), `top1_best`")
    assert "Metric `top1` (final QAT epoch)" in final and "top1_best" not in final
    assert "| W4/A4 | MimiQ |" in final and "63.00 ± 1.41 (2) / 62.72 / +0.28" in final
    assert "64.50 ± 2.12 (2) / 62.72 / +1.78" in best and "63.00 ± 1.41" not in best
    assert "| Bits | Method | ViT-T | ViT-B | DeiT-T | DeiT-S |" in md  # the paper's column order
    assert "Runs used: 4" in md and "matching no row: 1" in md
    assert md.index("| W4/A4 | GDFQ |") < md.index("| W4/A4 | MimiQ |") < md.index("| W5/A5 | GDFQ |")

    abl = read_csv(out / "abl_components.csv")[("w/o inter-head", VIT_B, "W4/A4")]  # row from .hydra/config.yaml
    assert (abl["n"], abl["mean"], abl["paper"], abl["delta"]) == ("1", "40.0000", "37.8000", "2.2000")
    assert abl["best_epoch_mean"] == "45.0000"


def test_tables_report_the_final_epoch():
    """Classification tables: final-epoch top-1, best epoch only as the secondary column; dense tables (one
    evaluation after QAT) have no best epoch."""
    for name, table in TABLES.items():
        if name.startswith("dense"):
            assert table.best is None and table.metric in ("box_ap", "mask_ap", "miou"), name
        else:
            assert (table.metric, table.best) == ("top1", "top1_best"), name


def test_dense_table_has_empty_best_epoch_columns(tmp_path):
    root = tmp_path / "logs"
    cfg = {"task": {"name": "detection", "quantize": "backbone", "synth": {"source": "backbone"}}}
    write_run(
        root,
        "det",
        cfg,
        experiment="dense_mask_rcnn_swin_t",
        model="mask_rcnn_swin_t",
        data="coco",
        box_ap=40.0,
        fp_box_ap=46.0,
        w_bits=8,
        a_bits=8,
    )
    out = tmp_path / "results"
    tabulate(root, out, ["dense_coco"])
    cell = read_csv(out / "dense_coco.csv")[("MimiQ (backbone-made images)", "mask_rcnn_swin_t", "W8/A8")]
    assert (cell["mean"], cell["best_epoch_mean"]) == ("40.0000", "")
    assert "Secondary" not in (out / "dense_coco.md").read_text()


def test_no_runs_writes_nothing_unless_all(tmp_path):
    out = tmp_path / "results"
    assert tabulate(tmp_path / "none", out) == {}
    assert not out.exists()
    tabulate(tmp_path / "none", out, ["imagenet"], all_=True)
    assert read_csv(out / "imagenet.csv")[("MimiQ", VIT_B, "W4/A4")]["paper"] == "62.9100"


def test_summarize_is_generic():
    recs = [
        {"generator": g, "bits": b, "acc": a, "seed": s}
        for g, b, a, s in [
            ("mimiq", "W4/A4", 80, 0),
            ("mimiq", "W4/A4", 90, 1),
            ("noise", "W4/A4", 60, 0),
            ("noise", "W8/A8", 95, 0),
            ("noise", "W8/A8", None, 1),
        ]
    ]
    cells = {(c["generator"], c["bits"]): c for c in stats.summarize(recs, ["generator"], ["bits"], "acc")}
    assert cells[("mimiq", "W4/A4")] == {
        "generator": "mimiq",
        "bits": "W4/A4",
        "n": 2,
        "mean": 85.0,
        "std": pytest.approx(7.0710678),
        "seeds": "0,1",
    }
    assert (cells[("noise", "W8/A8")]["n"], cells[("noise", "W8/A8")]["std"]) == (1, None)


def test_paper_csvs_are_well_formed():
    columns = {t.paper: t.paper_column for t in TABLES.values() if t.paper}  # top1 | box_ap | ...
    models = {**MODELS, **DENSE_MODELS}
    for path in sorted((ROOT / "results" / "paper").glob("*.csv")):
        rows = list(csv.DictReader(path.open(newline="")))
        column = columns.get(path.name, "top1")
        assert rows and all(r["source"] and 0 <= float(r[column]) <= 100 for r in rows), path
        assert all(r["model"] in models for r in rows), path
        assert len(paper.load_paper(path)) == len(rows), f"{path}: duplicate (method, model, bits)"
    numbers = paper.load_paper(ROOT / "results" / "paper" / "imagenet.csv")
    assert numbers[("MimiQ", VIT_B, 4, 4)]["top1"] == "62.91" and numbers[("FP", DEIT_S, 32, 32)]["top1"] == "79.85"
    assert sum(k[0] == "MimiQ" for k in numbers) == 24  # 6 models x (W4/A4, W5/A5, W4/A8, W3/A3 dagger)
    for name, table in TABLES.items():
        assert table.paper is None or (ROOT / "results" / "paper" / table.paper).is_file(), name


def test_commands_one_per_row():
    imagenet = TABLES["imagenet"]
    cmds = paper.commands(imagenet, seeds="0,1")
    assert len(cmds) == len(imagenet.rows) == 6
    assert all(
        c.startswith("python train.py -m 'experiment=glob(tab2_*)' bits=w4a4,w5a5,w4a8,w3a3 seed=0,1") for c in cmds
    )
    assert cmds[1].endswith("seed=0,1 method=psaq")  # a row of conf/method/
    (cmd,) = paper.commands(imagenet, launch="hydra/launcher=slurm", extra="bits=w4a4", rows="MimiQ")
    assert cmd == "python train.py -m 'experiment=glob(tab2_*)' seed=0,1,2 hydra/launcher=slurm bits=w4a4"


def test_unknown_table_is_refused_before_reading_runs(tmp_path):
    with pytest.raises(ValueError, match=r"unknown table\(s\) \['imagenet2'\]"):
        tabulate(tmp_path / "none", tmp_path / "out", ["imagenet", "imagenet2"])


def test_the_script_prints_the_library_commands():
    """scripts/make_tables.py is argparse + calls: its --commands output is paper.commands'."""
    cmd = [sys.executable, str(ROOT / "scripts" / "make_tables.py"), "--commands", "abl_components", "--seeds", "0"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.splitlines() == paper.commands(TABLES["abl_components"], seeds="0")


def test_wandb_table(runs, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    paper.log_wandb(tabulate(runs, tmp_path / "r"), log_dir=tmp_path)
