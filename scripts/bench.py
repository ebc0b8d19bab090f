"""Mini benchmark: the paper's claims at small scale, measured side by side in one run.

    python scripts/bench.py            # make bench: the full grid's rows; 3 teacher instances x 3 seeds at W4/A4
    python scripts/bench.py --quick    # make bench-quick: ViT mini, W4/A4, one seed, the quick grid's rows
    python scripts/bench.py --render   # re-render results/mini/ from its accuracy.csv, attention_similarity.csv and
                                       # teacher_gate.json: no run (README.md keeps the invocation it reports)

Every run goes through the same Hydra configs and `mimiq.pipeline.run` as `python train.py` (the mini defaults:
conf/budget/mini.yaml), in one process that keeps each teacher loaded; a row is a method of conf/method/ whose
`method.bench.grids` names the grid (`method=<id>`), its targets are conf/targets/mini.yaml. Seeds vary the synthetic
set and the QAT (student init batch, data order, augmentation): each seed regenerates the set (`synth_seed = seed`),
shared by the bit widths through the synthetic-set cache. Each run keeps its directory under logs/bench/, so an
interrupted bench resumes where it stopped. The machinery is mimiq.report.bench; tables, figures and targets come
from mimiq.report. Writes results/mini/ (see README there): accuracy.csv|md, accuracy_vs_bits.png,
attention_similarity.csv|png, attention_maps.png, grids/, speed.md, teacher_gate.json, README.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

from mimiq.config import CONF_DIR, compose  # noqa: E402
from mimiq.report import bench, mini  # noqa: E402
from mimiq.report.methods import load_generators, load_methods  # noqa: E402
from mimiq.report.targets import load_targets  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    methods, generators, spec = load_methods(CONF_DIR), load_generators(CONF_DIR), load_targets()
    full_rows = [m.id for m in bench.rows(methods, "full")]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="ViT mini, W4/A4, seed 0, fewer rows (<= 10 min)")
    ap.add_argument("--render", action="store_true", help="re-render results/mini/ from its files; run nothing")
    ap.add_argument(
        "--teachers",
        default=None,
        help=f"comma list of teacher instances <model>[.t<seed>] (default: {','.join(bench.DEFAULT_TEACHERS)}; "
        "quick: vit_mini)",
    )
    ap.add_argument(
        "--bits", default=None, help=f"comma list (default: {spec.headline}; any of {','.join(bench.BITS)})"
    )
    ap.add_argument("--seeds", default=None, help="comma list (default: 0,1,2; quick: 0)")
    ap.add_argument("--methods", default=None, help=f"comma list of rows (default: all of {','.join(full_rows)})")
    ap.add_argument(
        "--seeds-after-first",
        type=int,
        default=None,
        help="headline seeds of the instances after the first (default: all of --seeds)",
    )
    ap.add_argument("--full-grid", action="store_true", help="every seed at every bit width for every teacher")
    ap.add_argument("--no-speed", action="store_true", help="skip scripts/speed.py (speed.md is left as it is)")
    ap.add_argument(
        "--jobs",
        type=int,
        default=2,
        help="processes running the grid's (teacher, seed) groups side by side, one thread each "
        "(2 cores: 2 single-thread processes use them better than one 2-thread process)",
    )
    ap.add_argument("--shard", default=None, help=argparse.SUPPRESS)  # k/n: a --jobs worker's share of the grid
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the pipeline's results go through logging
    t0, mode = time.time(), "quick" if args.quick else "full"
    if args.render:  # README.md keeps the invocation it reported (a bench's time, mode and cores)
        records, sim, gates = mini.read_results(bench.OUT)
        was = mini.invocation(bench.OUT) or {"mode": mode, "total_s": 0.0, "cores": None, "precision": None}
        acc_md, tgt = mini.render(records, sim, gates, methods, generators, spec, bench.OUT, **was)
        return report(acc_md, tgt, t0)
    extra = list(bench.QUICK_BUDGET) if args.quick else []
    teachers = (args.teachers or ("vit_mini" if args.quick else ",".join(bench.DEFAULT_TEACHERS))).split(",")
    bits = (args.bits or spec.headline).split(",")
    seeds = [int(s) for s in (args.seeds or ("0" if args.quick else "0,1,2")).split(",")]
    try:
        rows = bench.rows(methods, mode, args.methods.split(",") if args.methods else None)
    except ValueError as e:
        ap.error(str(e))
    if not rows:
        ap.error(f"no row of the {mode} grid among --methods {args.methods}")
    for t, b in [(t, b) for t in teachers for b in bits]:  # bad input fails here, before compute
        cfg = compose([*extra, *bench.teacher_overrides(t), f"bits={b}"])
    print(bench.precision_line(cfg.precision), flush=True)
    (bench.OUT / "grids").mkdir(parents=True, exist_ok=True)
    memo: dict = {}

    cells = bench.grid_cells(teachers, rows, bits, seeds, args.full_grid, spec.headline, args.seeds_after_first)
    if args.shard:  # a worker: its share of the grid's runs, then exit (the parent tabulates)
        k, n = (int(v) for v in args.shard.split("/"))
        bench.accuracy_grid(bench.shard_cells(cells, k, n, methods), memo, methods, extra=extra)
        return 0
    if args.jobs > 1:
        for t in bench.shared_teachers(cells, args.jobs, methods):  # trained (cached) once, before the workers start
            bench.teacher_stage(t, memo, extra)
        argv = argv if argv is not None else sys.argv[1:]
        bench.run_workers(bench.bench_command(argv, __file__), args.jobs)
    records = bench.accuracy_grid(cells, memo, methods, extra=extra)  # reads the workers' runs back (and reruns)
    gates = bench.teacher_gates(teachers, spec.teacher.generators, memo, extra)
    # the attention analysis reads the grid's seed-0 sets: no set of its own
    sources = bench.similarity_sources(generators, {m.generator for m in rows})
    sim = bench.attention_analysis(teachers[:1], sources, bench.map_panels(methods), memo, extra=extra)
    if not args.no_speed:  # scripts/speed.py: its own targets, met / not met, in speed.md
        from mimiq.perf.tool import Options
        from mimiq.perf.tool import run as measure_speed  # what scripts/speed.py runs: its targets, met / not met

        quick = Options(reps=3, generators="mimiq", warm_cache=True)  # the MimiQ step only, 3 repetitions
        (bench.OUT / "speed.md").write_text(measure_speed(quick if args.quick else Options()))
    acc_md, tgt = mini.render(
        records, sim, gates, methods, generators, spec, bench.OUT, time.time() - t0, mode, bits, precision=cfg.precision
    )
    return report(acc_md, tgt, t0)


def report(acc_md: str, tgt: list[tuple], t0: float) -> int:
    print(acc_md)
    for t, m, ok in tgt:
        print(f"{'MET    ' if ok else 'NOT MET'}  {t}: {m}")
    total = time.time() - t0
    print(f"bench total: {total:.0f} s ({total / 60:.1f} min) -> {bench.OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
