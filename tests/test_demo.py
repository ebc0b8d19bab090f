"""`make demo` (scripts/demo.py, mimiq.report.demo): four rows against FP and MimiQ's closure over PSAQ-ViT."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mimiq.report.demo import COSTLIEST_FIRST, DEMO_METHODS, TABLE_ORDER, closure, demo_table, run_methods

ROOT = Path(__file__).resolve().parents[1]
LABELS = {"noise_kd": "Noise + KD", "psaq": "PSAQ-ViT", "mimiq": "MimiQ (generation + HSAD)"}


def _m(top1, ptq, agree=None, fp=90.0):
    return {
        "model": "vit_mini",
        "w_bits": 4,
        "a_bits": 4,
        "fp_top1": fp,
        "top1": top1,
        "ptq_top1": ptq,
        "synth_label_agreement": agree,
    }


def test_the_table_shows_fp_three_rows_and_the_closure_over_psaq_vits_better_student():
    runs = {"mimiq": _m(85.0, 70.25, 91.0), "psaq": _m(70.0, 80.0, 35.5), "noise_kd": _m(60.0, 40.0, 10.5)}
    lines = demo_table(runs, LABELS).splitlines()
    assert (
        lines[0].startswith("| vit_mini W4/A4 | top-1 after QAT (%) | PTQ top-1 (%) |") and lines[1] == "|---" * 4 + "|"
    )
    assert lines[2] == "| FP teacher | 90.00 | | |"
    assert lines[3:6] == [
        "| Noise + KD | 60.00 | 40.00 | 10.5 |",
        "| PSAQ-ViT | 70.00 | 80.00 | 35.5 |",
        "| MimiQ (generation + HSAD) | 85.00 | 70.25 | 91.0 |",
    ]
    # PSAQ-ViT's PTQ (80) beats its QAT (70): the closure counts from 80, (85 - 80) / (90 - 80) = 50 %
    assert lines[6] == "" and lines[7] == (
        "Closure of MimiQ (generation + HSAD) over PSAQ-ViT's best student (its PTQ, 80.00 %): "
        "50.0 % = (85.00 − 80.00) / (90.00 − 80.00) of the gap to FP."
    )
    assert len(lines) == 8


def test_the_closure_counts_from_psaq_vits_qat_when_it_is_the_better_student_and_can_be_negative():
    runs = {"mimiq": _m(70.0, 60.0), "psaq": _m(80.0, 75.0), "noise_kd": _m(50.0, 40.0)}
    last = demo_table(runs, LABELS).splitlines()[-1]
    assert "(its QAT, 80.00 %): -100.0 % = (70.00 − 80.00) / (90.00 − 80.00)" in last
    assert "| Noise + KD | 50.00 | 40.00 |  |" in demo_table(runs, LABELS)  # no agreement recorded: empty cell
    assert closure(90.0, 70.0, 85.0) == pytest.approx(75.0) and closure(90.0, 90.0, 95.0) is None


def test_a_missing_run_is_named():
    with pytest.raises(KeyError, match="psaq"):
        demo_table({"mimiq": _m(1, 1), "noise_kd": _m(1, 1)}, LABELS)


@pytest.mark.slow  # scripts/demo.py in a subprocess: three debug=tiny runs (tens of seconds)
def test_demo_script_runs_the_four_rows_on_a_tiny_config(tmp_path, cache_dir):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    cmd = [sys.executable, str(ROOT / "scripts" / "demo.py"), "--out", str(tmp_path), "debug=tiny"]
    cmd += ["generator.iterations=4"]  # PSAQ-ViT splits its iterations over 2 rounds
    out = subprocess.run(
        [*cmd, f"paths.cache_dir={cache_dir}"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    runs = {m: json.loads((tmp_path / m / "metrics.json").read_text()) for m in DEMO_METHODS}
    assert [runs[m]["generator"] for m in DEMO_METHODS] == ["mimiq", "psaq", "noise"]
    table = out.stdout[out.stdout.index("| vit_test W4/A4 |") :].splitlines()
    assert len(table) == 8 and table[2] == f"| FP teacher | {runs['mimiq']['fp_top1']:.2f} | | |"
    for line, m in zip(table[3:6], TABLE_ORDER, strict=True):
        r = runs[m]
        assert line.startswith(f"| {LABELS[m]} | {r['top1']:.2f} | {r['ptq_top1']:.2f} | ")
    assert table[7].startswith("Closure of MimiQ (generation + HSAD) over PSAQ-ViT's best student")
    assert (out.stdout + out.stderr).count("FP top-1:") == 1  # one teacher evaluation for the three runs
    for m in DEMO_METHODS:  # debug=tiny evaluates every epoch; the demo after the last one only (DEMO_OVERRIDES)
        history = json.loads((tmp_path / m / "qat_history.json").read_text())
        assert [h["top1"] is not None for h in history] == [False, True], m


@pytest.mark.slow  # six debug=tiny runs (about a minute)
def test_worker_processes_give_the_numbers_of_runs_in_this_process(tiny_cfg, tmp_path, monkeypatch, capsys):
    """The demo's workers (spawned, one thread each) share the teacher loaded here and reproduce, bit for bit, what
    the same configs give one after the other in this process at one thread; the costliest run is handed out first."""
    import torch

    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # 2 cores: one thread per worker, whatever the machine
    cfgs = {m: tiny_cfg(f"method={m}", "generator.iterations=4", "logger=none") for m in DEMO_METHODS}
    workers = run_methods(cfgs, tmp_path / "workers", LABELS, jobs=2)
    printed = capsys.readouterr().out
    monkeypatch.undo()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        here = run_methods(cfgs, tmp_path / "here", LABELS, jobs=1)
    finally:
        torch.set_num_threads(threads)
    keys = ("top1", "ptq_top1", "synth_label_agreement", "fp_top1")
    assert list(workers) == list(DEMO_METHODS)
    for m in DEMO_METHODS:
        assert {k: workers[m][k] for k in keys} == {k: here[m][k] for k in keys}, m
        console = (tmp_path / "workers" / m / "console.log").read_text()
        assert "Reusing teacher" in console and "FP top-1:" not in console  # no second teacher evaluation
    starts = [line.split(" -> ")[0][4:] for line in printed.splitlines() if line.startswith("=== ")]
    assert starts == [LABELS[m] for m in COSTLIEST_FIRST]


def test_the_demo_refuses_a_worker_count_below_one():
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo.py"), "--jobs", "0"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 2 and "--jobs 0: need at least 1" in out.stderr
