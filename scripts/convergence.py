"""Convergence curves of the synthetic sets: each generator's set measured at several generation budgets.

    python scripts/convergence.py                                  # ViT mini, every generator, default budgets
    python scripts/convergence.py --teachers vit_mini,swin_mini --generators mimiq,psaq --iterations 48,96,192
    python scripts/convergence.py --budgets psaq_v2=48,96,192          # a generator's own budgets
    python scripts/convergence.py --num-images 128 --seed 0 generator.lr=0.05   # extra Hydra overrides last
    python scripts/convergence.py --plot                               # redraw the png from the csv only
    python scripts/convergence.py --jobs 2                             # points side by side, one thread each

One set of `--num-images` images (one batch of the mini budget's 128) per (teacher, generator, budget), generated
through the set cache, so a rerun reads the finished points back (`mimiq.synth.convergence`). Writes
`<out>/convergence.csv` (points of other teachers, generators or budgets already there are kept) and
`<out>/convergence.png`, and prints the budget each curve gives under the cost cap
(`--cap`). The sets without optimisation (noise, real) are one point each, the reference lines of the plot.
Every point is generated from scratch, so with `--jobs N` the points run in N worker processes (one thread each),
the costliest first, and this process alone writes the csv as each point finishes.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import torch  # noqa: E402

from mimiq.config import compose  # noqa: E402
from mimiq.report.bench import teacher_overrides  # noqa: E402
from mimiq.report.targets import load_targets  # noqa: E402
from mimiq.synth.convergence import (  # noqa: E402
    choose_iterations,
    convergence_curve,
    merge_rows,
    plot_convergence,
    point_tasks,
    read_csv,
    write_csv,
)
from mimiq.task.classification import teacher_stage  # noqa: E402

GENERATORS = ("real", "noise", "psaq", "psaq_v2", "mimiq")
SETS = load_targets().sets  # the curve's budgets and the cost cap (conf/targets/mini.yaml, `sets`)
_MEMO: dict = {}  # this process's teacher stages (the memo of mimiq.task.classification.teacher_stage)


def run_point(teacher: str, gen: str, iterations: list[int], base: list[str], size: list[str]) -> list[dict]:
    """The rows of one (teacher, generator) at the budgets `iterations`, in this process (a pool worker or the
    script itself); the teacher stage is built once per process."""
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    # the teacher is composed with the default generator: overrides of generator keys wait for the generator's own
    # config (`generator.w_pse=0` exists only once generator=psaq is chosen)
    teacher_cfg = compose([o for o in base if not o.lstrip("+~").startswith("generator.")])
    stage = teacher_stage(teacher_cfg, torch.device("cpu"), _MEMO)
    cfg = compose([*base, f"generator={gen}", *size])
    return convergence_curve(stage.teacher, cfg, torch.device("cpu"), iterations, teacher)


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teachers", default="vit_mini", help="comma list of teacher instances, e.g. vit_mini.t1")
    ap.add_argument("--generators", default=",".join(GENERATORS), help="comma list")
    ap.add_argument("--iterations", default=",".join(map(str, SETS.curve_iterations)), help="comma list of budgets")
    ap.add_argument(
        "--budgets", action="append", default=[], metavar="GEN=LIST", help="budgets of one generator (repeatable)"
    )
    ap.add_argument("--num-images", type=int, default=128, help="images per set (one batch)")
    ap.add_argument("--seed", type=int, default=0, help="synth_seed of every set")
    ap.add_argument("--cap", type=int, default=SETS.iteration_cap, help="the most iterations a chosen budget may take")
    ap.add_argument("--tag", default="", help="appended to the generator's name in the rows, e.g. 'w_ih 1'")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "mini", help="folder of the csv and png")
    ap.add_argument("--plot", action="store_true", help="redraw <out>/convergence.png from its csv; run nothing")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes, one thread each (1: run here)")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides applied to every set")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.plot:
        rows = read_csv(args.out / "convergence.csv")
        plot_convergence(rows, args.out / "convergence.png")
        return rows
    iterations = {g: [int(v) for v in args.iterations.split(",")] for g in args.generators.split(",")}
    for item in args.budgets:
        gen, _, values = item.partition("=")
        iterations[gen] = [int(v) for v in values.split(",")]
    size = [f"generator.num_images={args.num_images}", f"generator.batch_size={args.num_images}"]
    csv_path = args.out / "convergence.csv"
    if args.jobs < 1:
        raise SystemExit(f"--jobs must be at least 1, got {args.jobs}")
    teachers, gens = args.teachers.split(","), args.generators.split(",")
    bases = {t: [*teacher_overrides(t), "logger=none", f"synth_seed={args.seed}", *args.overrides] for t in teachers}
    rows: list[dict] = []
    order = {(t, g): i for i, (t, g) in enumerate((t, g) for t in teachers for g in gens)}

    def keep(teacher: str, gen: str, curve: list[dict]) -> None:  # after every point: a kill keeps what is done
        rows.extend({**r, "generator": f"{gen} {args.tag}".strip(), "_order": order[teacher, gen]} for r in curve)
        rows.sort(key=lambda r: (r["_order"], r["iterations"]))  # the csv in curve order, whatever ends first
        args.out.mkdir(parents=True, exist_ok=True)
        write_csv(merge_rows(read_csv(csv_path), rows), csv_path)
        print(f"convergence: {teacher} {gen} {[r['iterations'] for r in curve]} done", flush=True)

    todo = point_tasks(teachers, gens, iterations)
    if args.jobs == 1:
        for teacher, gen, its in todo:
            keep(teacher, gen, run_point(teacher, gen, its, bases[teacher], size))
    else:
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(run_point, t, g, its, bases[t], size): (t, g) for t, g, its in todo}
            for f in as_completed(futures):
                keep(*futures[f], f.result())
    plot_convergence(read_csv(csv_path), args.out / "convergence.png")
    for teacher in teachers:
        for gen in gens:
            name = f"{gen} {args.tag}".strip()
            pts = [r for r in rows if r["teacher"] == teacher and r["generator"] == name and r["iterations"]]
            if any(int(r["iterations"]) <= args.cap for r in pts):
                n, why = choose_iterations(pts, args.cap)
                print(f"{teacher} {name}: {n} iterations ({why}, cap {args.cap})")
            elif pts:
                print(f"{teacher} {name}: no budget chosen (every point run here is above the cap {args.cap})")
    return rows


if __name__ == "__main__":
    main()
