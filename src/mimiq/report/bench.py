"""The mini benchmark's machinery (scripts/bench.py is its command line): the cell grid, its worker shards, the
runs and their read-back, the teacher gates and the attention analysis of the grid's sets.

A cell is (teacher instance, method id, bits option, seed). Its rows are the methods of conf/method/ whose
`method.bench.grids` name the grid (mimiq.report.methods), in their `order`; every run goes through
`mimiq.config.compose` and `mimiq.pipeline.run`, as `python train.py` does, so a method added through conf/method/
joins the grid with no change here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from mimiq import pipeline
from mimiq.config import ROOT, compose
from mimiq.distill.augment import augments
from mimiq.report import attention
from mimiq.report.methods import BLOCK, LEGACY_LABEL_KEY, Generator, Method, ours, with_role
from mimiq.report.targets import set_name
from mimiq.synth import generate
from mimiq.synth.invariance import format_report, invariance_report
from mimiq.task import TeacherStage, make_task

OUT = ROOT / "results" / "mini"
RUNS = ROOT / "logs" / "bench"
BITS = ["w4a4", "w5a5", "w4a8", "w3a3", "w2a4"]  # the paper's columns, then its open question 1 (W2/A4)
# a teacher instance: "<model>" or "<model>.t<k>" (teacher.seed=k: another training run of the same recipe)
TEACHER_CONFIGS = {"vit_mini": ["model=vit_mini"], "swin_mini": ["experiment=mini_swin"]}
DEFAULT_TEACHERS = ("vit_mini", "vit_mini.t1", "swin_mini")
# bench-quick only: a smaller synthetic set and QAT (the full bench uses the mini defaults of conf/budget/mini.yaml)
QUICK_BUDGET = (
    "generator.num_images=64",
    "generator.batch_size=64",
    "generator.iterations=48",
    "qat.epochs=8",
    "qat.eval_every=8",
)
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
Cell = tuple[str, str, str, int]  # (teacher instance, method id, bits option, seed)


def rows(methods: dict[str, Method], grid: str, chosen: Sequence[str] | None = None) -> list[Method]:
    """The grid's rows (methods whose `bench.grids` name it), in their order; `chosen`: only these ids (each must
    be a row of some grid)."""
    known = [m.id for m in methods.values() if m.grids]
    if unknown := sorted(set(chosen or ()) - set(known)):
        raise ValueError(f"unknown bench rows {unknown}; rows: {', '.join(known)}")
    return [m for m in methods.values() if grid in m.grids and (chosen is None or m.id in chosen)]


def teacher_overrides(instance: str) -> list[str]:
    """Hydra overrides of a teacher instance, e.g. "vit_mini.t1" -> ["model=vit_mini", "teacher.seed=1"]."""
    name, _, k = instance.partition(".t")
    if name not in TEACHER_CONFIGS or (k and not k.isdigit()):
        raise ValueError(f"unknown teacher instance {instance!r}: <{'|'.join(TEACHER_CONFIGS)}>[.t<seed>]")
    return [*TEACHER_CONFIGS[name], *([f"teacher.seed={k}"] if k else [])]


def grid_cells(
    teachers: list[str],
    methods: Sequence[Method],
    bits: list[str],
    seeds: list[int],
    full: bool,
    headline: str,
    seeds_after_first: int | None = None,
) -> list[Cell]:
    """(teacher instance, method id, bits, seed) cells to run.

    full: every combination. Otherwise the default plan: every seed at the `headline` bits for the first teacher
    instance (mean ± std over seeds), its first seed at the other bit widths; the instances after the first at the
    headline on their first `seeds_after_first` seeds (None: every seed); the rows marked `bench.first_only` on the
    first instance's first seed only.
    """
    cells = []
    for i, t in enumerate(teachers):
        for m in methods:
            if not full and m.first_only:
                cells += [(t, m.id, b, seeds[0]) for b in bits] if i == 0 else []
                continue
            for b in bits:
                if full or (i == 0 and b == headline):
                    cells += [(t, m.id, b, s) for s in seeds]
                elif b == headline:
                    cells += [(t, m.id, b, s) for s in seeds[:seeds_after_first]]
                elif i == 0:
                    cells.append((t, m.id, b, seeds[0]))
    return cells


EVAL_AFTER_LAST_EPOCH = "qat.eval_every=${qat.epochs}"  # the test split once, after QAT: the final-epoch number only


def cell_overrides(teacher: str, method: str, bits: str, seed: int) -> list[str]:
    """A cell's run: the set is regenerated per seed (synth_seed = seed), so seeds vary the set and the QAT. The
    test split is evaluated after the last epoch only (eval_every = epochs): the bench reports the final epoch."""
    return [
        *teacher_overrides(teacher),
        f"method={method}",
        f"bits={bits}",
        f"seed={seed}",
        f"synth_seed={seed}",
        "logger=none",
        EVAL_AFTER_LAST_EPOCH,
    ]


def outcome(cfg: DictConfig) -> dict:
    """The config without the keys that cannot change a run's final numbers: how often QAT evaluates, the QAT
    augmentation's settings when the run does not augment (and its `synthetic` switch, folded into that), the method's
    identity block (runs made with generator=/distill= before the method group have none, older ones a bare
    label) and the generator's facts (no image depends on them)."""
    c = OmegaConf.to_container(cfg, resolve=True)
    c.get("qat", {}).pop("eval_every", None)
    if "augment" in c.get("qat", {}):  # the augmentation the run applies: its settings matter only when it is on
        c["qat"]["augment"].pop("synthetic", None)
        if not augments(cfg):
            c["qat"]["augment"] = {"enabled": False}
    c.get("generator", {}).pop("facts", None)
    c.pop(BLOCK, None)
    c.pop(LEGACY_LABEL_KEY, None)
    return c


def run_cell(overrides: list[str], run_dir: Path, memo: dict, extra: Sequence[str] = ()) -> dict:
    """metrics.json of one train.py-equivalent run (`extra` overrides first). A finished run is read back, not
    recomputed, and an interrupted one resumes, but only if its saved config equals this one (`outcome`): a run
    left by another config (bench-quick, an older recipe: the teacher's key is part of the config) is deleted and
    rerun."""
    cfg = compose([*extra, *overrides])
    saved = run_dir / "config_resolved.yaml"
    if run_dir.exists() and not (saved.is_file() and outcome(OmegaConf.load(saved)) == outcome(cfg)):
        print(f"{run_dir} holds a run of another config: rerunning it")
        shutil.rmtree(run_dir)
    done = run_dir / "metrics.json"
    if done.is_file():
        return json.loads(done.read_text())
    return pipeline.run(cfg, run_dir, memo)


def accuracy_grid(
    cells: list[Cell], memo: dict, methods: dict[str, Method], runs: Path = RUNS, extra: Sequence[str] = ()
) -> list[dict]:
    """Runs (or reads back) every cell; returns one record per run, then one FP record per teacher instance."""
    teachers = list(dict.fromkeys(c[0] for c in cells))
    records, t0 = [], time.time()
    for k, (teacher, mid, b, seed) in enumerate(cells, 1):
        m = run_cell(cell_overrides(teacher, mid, b, seed), runs / teacher / mid / b / f"seed{seed}", memo, extra)
        records.append(
            {
                "method": mid,
                "teacher": teacher,
                "w_bits": m["w_bits"],
                "a_bits": m["a_bits"],
                "seed": seed,
                "generator": methods[mid].generator,
                "distill": methods[mid].distill,
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


def shard_cells(cells: list[Cell], k: int, n: int, methods: dict[str, Method]) -> list[Cell]:
    """Worker k of n: the cells of every n-th (teacher, seed, set) group, so that the runs sharing a synthetic set
    (the same teacher, generator values (targets.set_name) and seed) stay in one process and each set is generated
    once, while the rows of one teacher and seed spread over the workers."""

    def group(c: Cell) -> tuple:
        return c[0], c[3], set_name(methods[c[1]])

    groups = list(dict.fromkeys(map(group, cells)))
    mine = set(groups[k::n])
    return [c for c in cells if group(c) in mine]


def shared_teachers(cells: list[Cell], jobs: int, methods: dict[str, Method]) -> list[str]:
    """The teacher instances whose cells land in more than one worker's shard: each would train it on its own."""
    workers = Counter(t for k in range(jobs) for t in {c[0] for c in shard_cells(cells, k, jobs, methods)})
    return [t for t in dict.fromkeys(c[0] for c in cells) if workers[t] > 1]


def run_workers(command: list[str], jobs: int, runs: Path = RUNS) -> None:
    """`jobs` copies of `command` (the bench's own command line) with `--shard k/jobs` appended, one thread each,
    side by side; each worker's output goes to `runs`/worker<k>.log."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    logs = [runs / f"worker{k}.log" for k in range(jobs)]
    runs.mkdir(parents=True, exist_ok=True)
    procs = [
        subprocess.Popen(
            [*command, "--shard", f"{k}/{jobs}"],
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


def bench_command(argv: list[str], script: str) -> list[str]:
    """The command line of a worker: this interpreter, the bench script and its arguments."""
    return [sys.executable, script, *argv]


# ------------------------------------------------------------------------------- sets and teachers, analysed


def precision_line(precision: str) -> str:
    """What a bench says before it computes: the precision its runs use and what that costs (the mini budget's
    `${native_precision:}`: bf16 where the device computes it natively, else fp32, ~3x slower on the mini task)."""
    why = "this device computes bf16 natively" if precision == "bf16" else "this device has no native bf16"
    return (
        f"bench: runs in {precision} ({why}); a finished run of another precision is a run of another config and "
        "is rerun (results/mini/README.md names the precision of the invocation that wrote it)"
    )


def teacher_stage(teacher: str, memo: dict, extra: Sequence[str] = ()) -> TeacherStage:
    """The teacher instance, trained or read from the cache, on the CPU (kept in `memo`)."""
    cfg = compose([*extra, *teacher_overrides(teacher), "logger=none"])
    return make_task(cfg).teacher_stage(torch.device("cpu"), memo)


def synthetic_set(teacher: str, gen: str, memo: dict, extra: Sequence[str] = ()):
    """(teacher stage, SyntheticSet) of the grid's seed-0 set for (teacher, generator): cached after the grid."""
    cfg = compose([*extra, *teacher_overrides(teacher), f"generator={gen}", "seed=0", "synth_seed=0", "logger=none"])
    stage = make_task(cfg).teacher_stage(torch.device("cpu"), memo)
    return stage, generate.synthesize_or_load(stage.teacher, cfg, torch.device("cpu"))


def similarity_sources(generators: dict[str, Generator], used: set[str]) -> list[str]:
    """The generators whose sets the attention analysis measures, in their order: those the rows use, and those that
    optimise nothing (cheap references: noise, real)."""
    return [g.name for g in generators.values() if g.name in used or not g.optimises_pixels]


def map_panels(methods: dict[str, Method]) -> list[str]:
    """The generators of attention_maps.png, one row each: the first upper bound's (real data), the first
    baseline's, ours."""
    firsts = [*with_role(methods, "upper_bound")[:1], *with_role(methods, "baseline")[:1], ours(methods)]
    return list(dict.fromkeys(m.generator for m in firsts))


def attention_analysis(
    teachers: list[str], sources: list[str], panels: Sequence[str], memo: dict, out: Path = OUT, extra=()
) -> list[dict]:
    """attention_similarity rows of the teachers' sets (and out/grids/), and out/attention_maps.png: the first
    teacher's sets of `panels`."""
    sets = [(t, s, synthetic_set(t, s, memo, extra)[1]) for t in teachers for s in sources]
    sim = [attention.similarity_row(t, s, synth, out / "grids") for t, s, synth in sets]
    maps = []
    for src in panels:
        stage, synth = synthetic_set(teachers[0], src, memo, extra)
        maps.append((src, stage.teacher, synth.images, stage.data_config))
    attention.plot_attention_maps(teachers[0], maps, out / "attention_maps.png")
    return sim


def teacher_gates(teachers: list[str], generators: Sequence[str], memo: dict, extra: Sequence[str] = ()) -> dict:
    """Each teacher instance's top-1 on (every 2nd) real test image under each of `generators`' transforms."""
    out = {}
    for t in teachers:
        stage = teacher_stage(t, memo, extra)
        xs, ys = zip(*(stage.eval_loader.dataset[i] for i in range(0, len(stage.eval_loader.dataset), 2)), strict=True)
        gens = {g: compose([*extra, *teacher_overrides(t), f"generator={g}"]).generator for g in generators}
        out[t] = invariance_report(stage.teacher, torch.stack(xs), torch.tensor(ys), gens)
        print(f"{t}: {format_report(out[t])}", flush=True)
    return out
