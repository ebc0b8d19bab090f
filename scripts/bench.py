"""Mini benchmark: the paper's claims at small scale, measured side by side in one run.

    python scripts/bench.py            # make bench: 7 QAT rows; ViT mini x 5 bits, Swin mini W4/A4 (see grid_cells)
    python scripts/bench.py --quick    # make bench-quick: ViT mini, W4/A4, one seed, fewer rows

Every run goes through the same Hydra configs and `mimiq.pipeline.run` as `python train.py` (the mini
defaults: conf/budget/mini.yaml), in one process that keeps each teacher loaded; a row is a method of
conf/method/ (`method=<id>`). Seeds vary the synthetic set and the QAT (student init batch, data order,
augmentation): each seed regenerates the set (`synth_seed = seed`), shared by the bit widths through the
synthetic-set cache. Each run keeps its directory under logs/bench/, so an interrupted bench resumes where it
stopped. Tables, figures and targets come from mimiq.report. Writes results/mini/ (see README there):
accuracy.csv|md, accuracy_vs_bits.png, attention_similarity.csv|png, attention_maps.png, grids/, speed.md,
README.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from mimiq import pipeline  # noqa: E402
from mimiq.report import attention, figures, mini, stats  # noqa: E402
from mimiq.report.methods import LABEL_KEY, load_methods  # noqa: E402
from mimiq.report.targets import targets  # noqa: E402
from mimiq.synth import generate  # noqa: E402
from mimiq.synth.invariance import format_report, invariance_report  # noqa: E402
from mimiq.task import TeacherStage, make_task  # noqa: E402

OUT = ROOT / "results" / "mini"
RUNS = ROOT / "logs" / "bench"
METHODS = load_methods(ROOT / "conf")  # id -> Method (label, generator, distill): conf/method/
# The bench's rows, in table order; FP comes from the teacher's own evaluation.
ROWS = ("noise_kd", "psaq", "psaq_v2", "mimiq_kd", "mimiq", "real_kd", "real_hsad")
BITS = ["w4a4", "w5a5", "w4a8", "w3a3", "w2a4"]  # the paper's columns, then its open question 1 (W2/A4)
SOURCES = ["real", "noise", "psaq", "psaq_v2", "mimiq"]  # attention_similarity.csv rows
# bench-quick only: a smaller synthetic set and QAT (the full bench uses the mini defaults of conf/budget/mini.yaml)
QUICK_BUDGET = [
    "generator.num_images=64",
    "generator.batch_size=64",
    "generator.iterations=48",
    "qat.epochs=8",
    "qat.eval_every=8",
]
QUICK_METHODS = ("noise_kd", "psaq", "mimiq_kd", "mimiq", "real_kd")
EXTRA: list[str] = []  # overrides added to every run of this bench (QUICK_BUDGET under --quick)


def compose_cfg(overrides: list[str]) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=[*EXTRA, *overrides])


def _outcome(cfg: DictConfig) -> dict:
    """The config without the keys that cannot change a run's final numbers: how often QAT evaluates, and the
    method's label (a name; runs made with generator=/distill= before the method group have none)."""
    c = OmegaConf.to_container(cfg, resolve=True)
    c.get("qat", {}).pop("eval_every", None)
    c.pop(LABEL_KEY, None)
    return c


def run_cell(overrides: list[str], run_dir: Path, memo: dict) -> dict:
    """metrics.json of one train.py-equivalent run. A finished run is read back, not recomputed, and an interrupted
    one resumes, but only if its saved config equals this one: a run left by another config (bench-quick, an older
    recipe: the teacher's key is part of the config) is deleted and rerun."""
    cfg = compose_cfg(overrides)
    saved = run_dir / "config_resolved.yaml"
    if run_dir.exists() and not (saved.is_file() and _outcome(OmegaConf.load(saved)) == _outcome(cfg)):
        print(f"{run_dir} holds a run of another config: rerunning it")
        shutil.rmtree(run_dir)
    done = run_dir / "metrics.json"
    if done.is_file():
        return json.loads(done.read_text())
    return pipeline.run(cfg, run_dir, memo)


# ---------------------------------------------------------------------------------------------------- grid

# rows the 90-min plan runs only on the first teacher instance's first seed: PSAQ-ViT V2's set costs ~5x MimiQ's (a
# sample step and a student step per iteration)
SECOND_TEACHER_SKIP = ("psaq_v2",)
# a teacher instance: "<model>" or "<model>.t<k>" (teacher.seed=k: another training run of the same recipe)
TEACHER_CONFIGS = {"vit_mini": ["model=vit_mini"], "swin_mini": ["experiment=mini_swin"]}
DEFAULT_TEACHERS = ("vit_mini", "vit_mini.t1", "swin_mini")


def teacher_overrides(instance: str) -> list[str]:
    """Hydra overrides of a teacher instance, e.g. "vit_mini.t1" -> ["model=vit_mini", "teacher.seed=1"]."""
    name, _, k = instance.partition(".t")
    if name not in TEACHER_CONFIGS or (k and not k.isdigit()):
        raise ValueError(f"unknown teacher instance {instance!r}: <{'|'.join(TEACHER_CONFIGS)}>[.t<seed>]")
    return [*TEACHER_CONFIGS[name], *([f"teacher.seed={k}"] if k else [])]


def grid_cells(
    teachers: list[str], methods: list[str], bits: list[str], seeds: list[int], full: bool, seeds_after_first: int = 1
) -> list[tuple]:
    """(teacher instance, method id, bits, seed) cells to run.

    full: every combination. Otherwise the 90-minute plan: every seed at W4/A4 for the first teacher instance (the
    headline, mean ± std over seeds), its first seed at the other bit widths; the instances after the first at W4/A4
    on their first `seeds_after_first` seeds; the SECOND_TEACHER_SKIP rows on the first instance's first seed only.
    """
    cells = []
    for i, t in enumerate(teachers):
        for m in methods:
            if not full and m in SECOND_TEACHER_SKIP:
                cells += [(t, m, b, seeds[0]) for b in bits] if i == 0 else []
                continue
            for b in bits:
                if full or (i == 0 and b == stats.HEADLINE):
                    cells += [(t, m, b, s) for s in seeds]
                elif b == stats.HEADLINE:
                    cells += [(t, m, b, s) for s in seeds[:seeds_after_first]]
                elif i == 0:
                    cells.append((t, m, b, seeds[0]))
    return cells


EVAL_EVERY = 1000  # the bench reports the final epoch: one test-split evaluation per run (2 cores: each costs ~20 s)
RECORD_KEYS = (
    "top1",
    "top1_best",
    "ptq_top1",
    "qat_steps",
    "fp_top1",
    "synth_label_agreement",
    "synth_class_entropy",
    "synth_max_class_share",
    "synth_classes_predicted",
    "time_generate_s",
    "time_qat_s",
    "time_total_s",
)


def cell_overrides(teacher: str, method: str, bits: str, seed: int) -> list[str]:
    """A cell's run: the set is regenerated per seed (synth_seed = seed), so seeds vary the set and the QAT."""
    return [
        *teacher_overrides(teacher),
        f"method={method}",
        f"bits={bits}",
        f"seed={seed}",
        f"synth_seed={seed}",
        "logger=none",
        f"qat.eval_every={EVAL_EVERY}",
    ]


def accuracy_grid(cells: list[tuple], memo: dict) -> list[dict]:
    """Runs every (teacher, method, bits, seed) cell; returns one record per run (FP rows included)."""
    teachers = list(dict.fromkeys(c[0] for c in cells))
    records, t0 = [], time.time()
    for k, (teacher, mid, b, seed) in enumerate(cells, 1):
        m = run_cell(cell_overrides(teacher, mid, b, seed), RUNS / teacher / mid / b / f"seed{seed}", memo)
        records.append(
            {
                "method": mid,
                "teacher": teacher,
                "w_bits": m["w_bits"],
                "a_bits": m["a_bits"],
                "seed": seed,
                "generator": METHODS[mid].generator,
                "distill": METHODS[mid].distill,
                **{key: m.get(key) for key in RECORD_KEYS},
            }
        )
        print(
            f"[bench {k}/{len(cells)}, {time.time() - t0:.0f} s] {teacher} {mid} {b} seed {seed}: "
            f"top-1 {m['top1']:.2f} % (PTQ {m['ptq_top1']:.2f}, FP {m['fp_top1']:.2f} %)",
            flush=True,
        )
    for teacher in teachers:
        fp = next(r["fp_top1"] for r in records if r["teacher"] == teacher)
        records.append(
            {
                "method": "fp",
                "teacher": teacher,
                "w_bits": 32,
                "a_bits": 32,
                "seed": 0,
                "top1": fp,
                "fp_top1": fp,
                "generator": "",
                "distill": "",
            }
        )
    return records


def shard_cells(cells: list[tuple], k: int, n: int) -> list[tuple]:
    """Worker k of n: the cells of every n-th (teacher, seed, generator) group, so that the runs sharing a synthetic
    set (the same teacher, generator and seed) stay in one process and each set is generated once, while the rows
    of one teacher and seed spread over the workers."""

    def group(c: tuple) -> tuple:
        return c[0], c[3], METHODS[c[1]].generator

    groups = list(dict.fromkeys(map(group, cells)))
    mine = set(groups[k::n])
    return [c for c in cells if group(c) in mine]


def shared_teachers(cells: list[tuple], jobs: int) -> list[str]:
    """The teacher instances whose cells land in more than one worker's shard: each would train it on its own."""
    workers = Counter(t for k in range(jobs) for t in {c[0] for c in shard_cells(cells, k, jobs)})
    return [t for t in dict.fromkeys(c[0] for c in cells) if workers[t] > 1]


def run_workers(argv: list[str], jobs: int) -> None:
    """`jobs` copies of this script on disjoint shards of the grid, one thread each, side by side."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    logs = [RUNS / f"worker{k}.log" for k in range(jobs)]
    RUNS.mkdir(parents=True, exist_ok=True)
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, *argv, "--shard", f"{k}/{jobs}"],
            env=env,
            cwd=ROOT,
            stdout=open(log, "w"),  # noqa: SIM115 (the worker owns the file; closed when it exits)
            stderr=subprocess.STDOUT,
        )
        for k, log in enumerate(logs)
    ]
    print(f"bench: {jobs} workers on the grid, logs {', '.join(map(str, logs))}", flush=True)
    for p, log in zip(procs, logs, strict=True):
        if p.wait():
            print(f"bench: worker {log} exited with {p.returncode}; its missing runs are redone here", flush=True)


# ------------------------------------------------------------------------------- sets and teachers, analysed


def teacher_stage(cfg: DictConfig, memo: dict) -> TeacherStage:
    return make_task(cfg).teacher_stage(torch.device("cpu"), memo)


def synthetic_set(teacher_name: str, gen: str, memo: dict):
    """(teacher stage, SyntheticSet) of the grid's seed-0 set for (teacher, generator): cached after the grid."""
    cfg = compose_cfg([*teacher_overrides(teacher_name), f"generator={gen}", "seed=0", "synth_seed=0", "logger=none"])
    stage = teacher_stage(cfg, memo)
    return stage, generate.synthesize_or_load(stage.teacher, cfg, torch.device("cpu"))


def attention_analysis(teachers: list[str], gens: set[str], memo: dict) -> list[dict]:
    """attention_similarity rows of the first teacher's sets (and grids/), and attention_maps.png."""
    sources = [s for s in SOURCES if s in gens or s in ("real", "noise")]
    sets = [(t, s, synthetic_set(t, s, memo)[1]) for t in teachers for s in sources]
    sim = [attention.similarity_row(t, s, synth, OUT / "grids") for t, s, synth in sets]
    panels = []
    for src in ("real", "psaq", "mimiq"):
        stage, synth = synthetic_set(teachers[0], src, memo)
        panels.append((src, stage.teacher, synth.images, stage.data_config))
    attention.plot_attention_maps(teachers[0], panels, OUT / "attention_maps.png")
    return sim


def teacher_gates(teachers: list[str], memo: dict) -> dict[str, dict]:
    """Each teacher instance's top-1 on (every 2nd) real test image under every generator's transform."""
    out = {}
    for t in teachers:
        cfg = compose_cfg([*teacher_overrides(t), "logger=none"])
        stage = teacher_stage(cfg, memo)
        xs, ys = zip(*(stage.eval_loader.dataset[i] for i in range(0, len(stage.eval_loader.dataset), 2)), strict=True)
        gens = {g: compose_cfg([*teacher_overrides(t), f"generator={g}"]).generator for g in ("mimiq", "psaq")}
        out[t] = invariance_report(stage.teacher, torch.stack(xs), torch.tensor(ys), gens)
        print(f"{t}: {format_report(out[t])}", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="ViT mini, W4/A4, seed 0, fewer rows (<= 10 min)")
    ap.add_argument(
        "--teachers",
        default=None,
        help=f"comma list of teacher instances <model>[.t<seed>] (default: {','.join(DEFAULT_TEACHERS)}; "
        "quick: vit_mini)",
    )
    ap.add_argument("--bits", default=None, help=f"comma list (default: w4a4; any of {','.join(BITS)})")
    ap.add_argument("--seeds", default=None, help="comma list (default: 0,1,2; quick: 0)")
    ap.add_argument("--methods", default=None, help=f"comma list of rows (default: all of {','.join(ROWS)})")
    ap.add_argument("--seeds-after-first", type=int, default=1, help="W4/A4 seeds of the instances after the first")
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
    t0 = time.time()
    quick = args.quick
    EXTRA[:] = QUICK_BUDGET if quick else []
    teachers = (args.teachers or ("vit_mini" if quick else ",".join(DEFAULT_TEACHERS))).split(",")
    bits = (args.bits or "w4a4").split(",")
    seeds = [int(s) for s in (args.seeds or ("0" if quick else "0,1,2")).split(",")]
    chosen = args.methods.split(",") if args.methods else list(ROWS)
    if unknown := set(chosen) - set(ROWS):
        ap.error(f"unknown --methods {sorted(unknown)}")
    rows = [m for m in ROWS if m in chosen and (not quick or m in QUICK_METHODS)]
    methods = [METHODS[m] for m in rows]
    for t, b in [(t, b) for t in teachers for b in bits]:  # bad input fails here, before compute
        compose_cfg([*teacher_overrides(t), f"bits={b}"])
    (OUT / "grids").mkdir(parents=True, exist_ok=True)
    memo: dict = {}

    cells = grid_cells(teachers, rows, bits, seeds, args.full_grid, args.seeds_after_first)
    if args.shard:  # a worker: its share of the grid's runs, then exit (the parent tabulates)
        k, n = (int(v) for v in args.shard.split("/"))
        accuracy_grid(shard_cells(cells, k, n), memo)
        return 0
    if args.jobs > 1:
        for t in shared_teachers(cells, args.jobs):  # trained (cached) once, before the workers start
            teacher_stage(compose_cfg([*teacher_overrides(t), "logger=none"]), memo)
        run_workers(argv if argv is not None else sys.argv[1:], args.jobs)
    records = accuracy_grid(cells, memo)  # reads the workers' runs back (and runs any that failed)
    gates = teacher_gates(teachers, memo)
    (OUT / "teacher_gate.json").write_text(json.dumps(gates, indent=1))
    # the attention analysis reads the grid's seed-0 sets: no set of its own
    sim = attention_analysis(teachers[:1], {m.generator for m in methods}, memo)
    if not args.no_speed:  # scripts/speed.py: its own targets, met / not met, in speed.md
        import speed

        (OUT / "speed.md").write_text(speed.run(quick))

    acc, ptq = stats.summary(records), stats.summary(records, "ptq_top1")
    mini.write_csv(records, OUT / "accuracy.csv")
    acc_md = mini.accuracy_markdown(acc, ptq, teachers, methods, bits)
    (OUT / "accuracy.md").write_text(acc_md)
    figures.plot_accuracy(acc, teachers, methods, bits, OUT / "accuracy_vs_bits.png")
    mini.write_csv(sim, OUT / "attention_similarity.csv")
    attention.plot_similarity(sim, teachers[:1], OUT / "attention_similarity.png")
    quality = stats.set_quality_table(records)
    pair = stats.paired(records, acc, teachers)
    spread_rows = stats.spread(acc, records, teachers, methods)
    labels = {m: METHODS[m].label for m in ROWS}
    tgt = targets(acc, sim, teachers, labels, quality, gates, pair)
    total = time.time() - t0
    runs_s = sum(r.get("time_total_s") or 0.0 for r in records)
    mode = "quick" if quick else "full"
    qmd = mini.quality_markdown(quality)
    (OUT / "README.md").write_text(mini.readme(tgt, acc_md, sim, total, mode, runs_s, qmd, spread_rows, pair))
    print(acc_md)
    for t, m, ok in tgt:
        print(f"{'MET    ' if ok else 'NOT MET'}  {t}: {m}")
    print(f"bench total: {total:.0f} s ({total / 60:.1f} min) -> {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
