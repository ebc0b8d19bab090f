"""`make demo`'s table: FP, noise + KD, PSAQ-ViT + KD and MimiQ on one teacher, and MimiQ's closure over PSAQ-ViT.

The closure counts what a user would pick from PSAQ-ViT: its better student, calibration only (PTQ) or after QAT,

    closure = (MimiQ's QAT top-1 − max(PSAQ-ViT PTQ, PSAQ-ViT QAT)) / (FP − that max)

the share of the gap to FP that MimiQ closes over the best PSAQ-ViT student (negative: MimiQ is below it).

`run_methods` runs the demo's configs through `mimiq.pipeline.run`: one after the other in this process, or on CPU
side by side in worker processes that share the teacher stage loaded here (the bench's cells run the same way: one
thread per worker on 2 cores).
"""

from __future__ import annotations

import io
import logging
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from mimiq import pipeline
from mimiq.budget import budget_summary
from mimiq.report.bench import EVAL_AFTER_LAST_EPOCH
from mimiq.task import make_task
from mimiq.utils.seed import resolve_device

DEMO_METHODS = ("mimiq", "psaq", "noise_kd")  # conf/method/ ids, in the order the demo runs them (one process)
COSTLIEST_FIRST = ("psaq", "mimiq", "noise_kd")  # the order workers take them: PSAQ-ViT's set costs the most
TABLE_ORDER = ("noise_kd", "psaq", "mimiq")  # rows under the FP teacher
BASELINE, OURS = "psaq", "mimiq"
# before the user's overrides: the demo reports the final epoch only, so the test split is evaluated after the last
# epoch, not every `qat.eval_every` (8 evaluations of 2,000 images at the mini budget, about a minute per run on one
# thread); the numbers are those of the same run evaluating every 4 epochs (as the bench's cells)
DEMO_OVERRIDES = (EVAL_AFTER_LAST_EPOCH,)


def closure(fp: float, baseline: float, ours: float) -> float | None:
    """(ours − baseline) / (fp − baseline) in %; None when the baseline is not below FP (no gap to close)."""
    gap = fp - baseline
    return None if gap <= 0 else 100.0 * (ours - baseline) / gap


def demo_table(runs: dict[str, dict], labels: dict[str, str]) -> str:
    """Markdown table of the demo's runs and a closure line.

    runs: method id -> its metrics.json (`model`, `w_bits`, `a_bits`, `fp_top1`, `top1` (final QAT epoch),
    `ptq_top1`, `synth_label_agreement`), for every id of TABLE_ORDER; labels: method id -> row label.
    """
    missing = [m for m in TABLE_ORDER if m not in runs]
    if missing:
        raise KeyError(f"demo table: no run of {', '.join(missing)}")
    ours, base = runs[OURS], runs[BASELINE]
    fp = ours["fp_top1"]
    lines = [
        f"| {ours['model']} W{ours['w_bits']}/A{ours['a_bits']} | top-1 after QAT (%) | PTQ top-1 (%) "
        "| synthetic-set label agreement (%) |",
        "|---|---|---|---|",
        f"| FP teacher | {fp:.2f} | | |",
    ]
    for m in TABLE_ORDER:
        r = runs[m]
        agree = r.get("synth_label_agreement")
        lines.append(
            f"| {labels[m]} | {r['top1']:.2f} | {r['ptq_top1']:.2f} | {'' if agree is None else f'{agree:.1f}'} |"
        )
    best_kind = "PTQ" if base["ptq_top1"] > base["top1"] else "QAT"
    best = max(base["ptq_top1"], base["top1"])
    c = closure(fp, best, ours["top1"])
    value = (
        f"{c:.1f} % = ({ours['top1']:.2f} − {best:.2f}) / ({fp:.2f} − {best:.2f}) of the gap to FP"
        if c is not None
        else "undefined (that student is not below FP)"
    )
    lines += [
        "",
        f"Closure of {labels[OURS]} over {labels[BASELINE]}'s best student (its {best_kind}, {best:.2f} %): {value}.",
    ]
    return "\n".join(lines)


_MEMO: dict = {}  # a worker's copy of the parent's teacher stage (set by _init_worker)


def _init_worker(memo: bytes, threads: int) -> None:
    torch.set_num_threads(threads)
    _MEMO.update(torch.load(io.BytesIO(memo), weights_only=False))  # our own bytes, from the parent


def _run_in_worker(cfg: DictConfig, out_dir: Path) -> dict:
    """One `pipeline.run` in a worker; its console (logging, progress bars) goes to out_dir/console.log."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "console.log", "w") as f:
        sys.stdout = sys.stderr = f
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=f, force=True)
        try:
            return pipeline.run(cfg, out_dir, _MEMO)
        finally:
            sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__


def run_methods(cfgs: dict[str, DictConfig], out: Path, labels: dict[str, str], jobs: int = 2) -> dict[str, dict]:
    """Runs each method's config (method id -> composed config, one teacher) into out/<id>/; returns id -> metrics.

    jobs 1, or a run on a GPU: one after the other in this process. jobs > 1 on the CPU: the teacher stage is loaded
    and evaluated once here, then `jobs` spawned workers of torch.get_num_threads() // jobs threads (at least 1) take
    the runs, costliest first (COSTLIEST_FIRST); each run's console goes to out/<id>/console.log, and this process
    prints a line when each starts and ends. A run's numbers do not depend on which worker takes it.
    """
    first = next(iter(cfgs.values()))
    memo: dict = {}  # one teacher for every run
    if jobs <= 1 or resolve_device(first.device).type != "cpu":
        runs = {}
        for m, cfg in cfgs.items():
            print(f"\n=== {labels[m]} -> {out / m}", flush=True)
            runs[m] = pipeline.run(cfg, out / m, memo)
        return runs
    print(budget_summary(first), flush=True)
    make_task(first).teacher_stage(torch.device("cpu"), memo)  # the FP teacher, loaded and evaluated once
    threads = max(1, torch.get_num_threads() // jobs)
    order = [m for m in COSTLIEST_FIRST if m in cfgs] + [m for m in cfgs if m not in COSTLIEST_FIRST]
    resolved = {m: OmegaConf.create(OmegaConf.to_container(cfgs[m], resolve=True)) for m in order}
    print(f"\n{len(order)} runs on {jobs} worker processes of {threads} thread(s) each", flush=True)
    t0, runs, futures = time.time(), {}, {}
    ctx = multiprocessing.get_context("spawn")  # no fork of a process that holds torch's thread pools
    buf = io.BytesIO()
    torch.save(memo, buf)  # as bytes: torch's multiprocessing would pass tensors through /dev/shm, often tiny
    init = {"initializer": _init_worker, "initargs": (buf.getvalue(), threads)}
    with ProcessPoolExecutor(jobs, mp_context=ctx, **init) as pool:
        for m in order:
            print(f"=== {labels[m]} -> {out / m} (console: {out / m / 'console.log'})", flush=True)
            futures[pool.submit(_run_in_worker, resolved[m], out / m)] = m
        for future in as_completed(futures):  # in the order they finish
            m = futures[future]
            try:
                runs[m] = r = future.result()
            except Exception as e:
                raise RuntimeError(f"demo run {m} failed ({e!r}); its console: {out / m / 'console.log'}") from e
            print(
                f"{labels[m]}: QAT top-1 {r['top1']:.2f} %, PTQ {r['ptq_top1']:.2f} % "
                f"(done {time.time() - t0:.0f} s after the workers started)",
                flush=True,
            )
    return {m: runs[m] for m in cfgs}
