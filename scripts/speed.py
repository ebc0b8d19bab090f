"""Speed benchmark of the mini task (the cost of a step): every ratio measured side by side in one run, on the CPU.

    python scripts/speed.py [--quick] [--out results/mini/speed.md]

Prints and writes a markdown report with
  (a) where the time goes: the top ops by self CPU time of one MimiQ generation step and one QAT step
      (torch.profiler, `scripts/profile_steps.py`'s step definitions);
  (b) the step-cost ratios with their targets, met / not met:
        generation step (mini ViT, 128 images) / bare teacher forward + backward (CE only) of the same batch <= 1.3;
        QAT step (W4/A4, KD + HSAD, the mini budget's batch) / (FP student fwd + bwd + teacher no-grad fwd) <= 1.3,
        and / FP fine-tuning step (CE) <= 1.6;
        wall time of `train.py -m bits=w4a4,w5a5,w4a8` (basic launcher, tiny budget, a temporary cache) <= 1.1 x
        (one generation + three QATs, from the sweep's own metrics.json);
  (c) old vs new: the same generation and QAT steps run by the code of commit 4c262bf (a git worktree under
      the temp dir, imported through PYTHONPATH by the same venv python) and by this tree, each in its own
      worker process, the two driven in turn step by step; speed-up old / new per step, target >= 2;
  (d) the GPU section: not measured here, with the command that measures it (`scripts/gpu_speed.py`).

Every model is the mini ViT architecture (conf/model/vit_mini.yaml, 32x32 inputs) at random init: timing does not
depend on the weights, so no trained teacher is needed (the sweep copies the cached one in if there is one, else
runs on a random-init teacher). Every process computes on one thread (`torch.set_num_threads(1)`,
OMP_NUM_THREADS=1), and every ratio is a median over steps run in turn (a, b, a, b, ...), so a machine loaded by
other work slows both sides alike; absolute times are for orientation only. `make bench` calls `run(quick)`.
Default ~5 min on 2 idle cores, --quick < 2 min.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OLD_COMMIT = "4c262bf"
WORKTREE = Path(tempfile.gettempdir()) / f"mimiq-{OLD_COMMIT}"
GEN_BATCH = 128  # images of a generation step (conf/budget/mini.yaml generator.batch_size)
TARGETS = {"gen": 1.3, "qat_fp": 1.3, "qat_finetune": 1.6, "sweep": 1.1, "speedup": 2.0}
SWEEP_BITS = "w4a4,w5a5,w4a8"
SWEEP_BUDGET = {  # tiny budgets of the bits sweep (--quick also a random-init teacher and a 200-image eval split)
    False: ["generator.num_images=64", "generator.iterations=24", "qat.epochs=2"],
    True: [
        "generator.num_images=32",
        "generator.iterations=8",
        "qat.epochs=1",
        "model.train_teacher=false",
        "data.test_per_class=20",
    ],
}
REPS = {False: 15, True: 5}  # interleaved repetitions per step (after 2 warm-ups)
PROFILE_RUNS = {False: 3, True: 1}

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
if str(ROOT / "scripts") not in sys.path:  # profile_steps, also when imported (make bench)
    sys.path.insert(0, str(ROOT / "scripts"))


def _one_thread_env(**extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "disabled",
        **extra,
    }


def _compose(tree: Path, overrides: list[str]):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(tree / "conf"), version_base="1.3"):
        return compose("train", overrides=overrides)


def _mini_models(cfg, calib_batch: int):
    """Random-init mini ViT teacher (frozen, our attention), its W4/A4 student and the steps' batch."""
    import profile_steps as ps
    import torch

    from mimiq.models.attention import swap_attention
    from mimiq.models.registry import create_model
    from mimiq.quant import QuantSpec
    from mimiq.quant.convert import build_student

    torch.manual_seed(0)
    size = cfg.model.arch.img_size
    teacher = ps.frozen(create_model(cfg.model, num_classes=10))
    swap_attention(teacher)
    student, _ = build_student(teacher, QuantSpec.from_cfg(cfg.quant), torch.randn(calib_batch, 3, size, size))
    return teacher, student


# ------------------------------------------------------------------------------------ (a) + (b): this process


def step_ratios(quick: bool) -> dict:
    """Medians (s) of the generation, bare, QAT, FP fwd+bwd and fine-tuning steps, interleaved; op tables."""
    import profile_steps as ps
    import torch

    cfg = _compose(ROOT, ["model=vit_mini", "bits=w4a4"])
    size, qb = cfg.model.arch.img_size, cfg.qat.batch_size
    teacher, student = _mini_models(cfg, cfg.qat.calib_size)
    x, y = torch.randn(qb, 3, size, size), torch.randint(0, 10, (qb,))
    steps = {
        "gen": ps.gen_step(teacher, cfg, GEN_BATCH),
        "bare": ps.bare_step(teacher, GEN_BATCH, size),
        "qat": ps.qat_step(student, teacher, cfg, x, y),
        "fp_fb": ps.qat_step(ps.trainable(teacher), teacher, cfg, x, y, opt_step=False),
        "finetune": ps.finetune_step(ps.trainable(teacher), cfg, x, y),
    }
    t0 = time.perf_counter()
    med = ps.interleaved(steps, REPS[quick])
    wall = time.perf_counter() - t0
    runs = PROFILE_RUNS[quick]
    prof = {k: ps.top_ops(steps[k], runs=runs) for k in ("gen", "qat")}
    return {"med": med, "wall": wall, "prof": prof, "qat_batch": qb}


# ------------------------------------------------------------------------------------------ (c): old vs new


def worker(tree: Path) -> None:
    """Serves step timings of one source tree: reads "gen" / "qat" / "quit" lines, answers "@@ <seconds>".

    Imports `mimiq` from PYTHONPATH (the tree's src) and composes the tree's own conf, with the model architecture
    given by --arch (this tree's vit_mini: 4c262bf's had 4 blocks, not 6); the steps are
    `scripts/profile_steps.py`'s, which use only APIs both trees have.
    """
    import torch

    torch.set_num_threads(1)
    import profile_steps as ps

    import mimiq

    if not Path(mimiq.__file__).resolve().is_relative_to((tree / "src").resolve()):
        raise SystemExit(f"worker for {tree} imported mimiq from {mimiq.__file__}: set PYTHONPATH={tree}/src")
    arch = json.loads(sys.argv[sys.argv.index("--arch") + 1])  # this tree's: vit_mini's depth changed since
    cfg = _compose(tree, ["model=vit_mini", "bits=w4a4", *[f"model.arch.{k}={v}" for k, v in arch.items()]])
    if {k: cfg.model.arch[k] for k in arch} != arch or set(cfg.model.arch) != set(arch):
        raise SystemExit(f"worker for {tree}: architecture {dict(cfg.model.arch)} is not {arch}")
    qb = int(sys.argv[sys.argv.index("--qat-batch") + 1])
    size = cfg.model.arch.img_size
    teacher, student = _mini_models(cfg, cfg.qat.calib_size)
    x, y = torch.randn(qb, 3, size, size), torch.randint(0, 10, (qb,))
    steps = {"gen": ps.gen_step(teacher, cfg, GEN_BATCH), "qat": ps.qat_step(student, teacher, cfg, x, y)}
    own = _compose(tree, ["model=vit_mini"]).model.arch  # the tree's own vit_mini, for the report
    print(f"@@ ready {json.dumps({'mimiq': mimiq.__file__, 'own_depth': own.depth})}", flush=True)
    for line in sys.stdin:
        name = line.strip()
        if name == "quit":
            break
        t0 = time.perf_counter()
        steps[name]()
        print(f"@@ {time.perf_counter() - t0}", flush=True)


class _Worker:
    def __init__(self, tree: Path, qat_batch: int, arch: dict):
        self.tree = tree
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--worker",
            str(tree),
            "--qat-batch",
            str(qat_batch),
            "--arch",
            json.dumps(arch),
        ]
        env = _one_thread_env(PYTHONPATH=os.pathsep.join([str(tree / "src"), str(ROOT / "scripts")]))
        self.proc = subprocess.Popen(cmd, cwd=tree, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def _answer(self) -> str:
        for line in self.proc.stdout:
            if line.startswith("@@ "):
                return line[3:].strip()
        raise RuntimeError(f"the step worker of {self.tree} exited with {self.proc.wait()}")

    def ready(self) -> dict:
        return json.loads(self._answer().removeprefix("ready "))

    def time(self, step: str) -> float:
        self.proc.stdin.write(step + "\n")
        self.proc.stdin.flush()
        return float(self._answer())

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
        self.proc.wait(timeout=60)


def old_tree() -> Path:
    """A git worktree of OLD_COMMIT under the temp dir (created once, reused)."""
    if not (WORKTREE / "src" / "mimiq").is_dir():
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(WORKTREE), OLD_COMMIT],
            cwd=ROOT,
            check=True,
            stdout=subprocess.DEVNULL,
        )
    return WORKTREE


def old_vs_new(quick: bool, qat_batch: int) -> dict:
    """Medians (s) of the generation and QAT steps of OLD_COMMIT's code and of this tree's, interleaved."""
    from omegaconf import OmegaConf

    arch = OmegaConf.to_container(_compose(ROOT, ["model=vit_mini"]).model.arch, resolve=True)
    workers = {"old": _Worker(old_tree(), qat_batch, arch), "new": _Worker(ROOT, qat_batch, arch)}
    try:
        origin = {k: w.ready() for k, w in workers.items()}
        times: dict[tuple[str, str], list[float]] = {(s, k): [] for s in ("gen", "qat") for k in workers}
        for rep in range(REPS[quick] + 2):  # 2 warm-ups
            for step in ("gen", "qat"):
                for k, w in workers.items():
                    t = w.time(step)
                    if rep >= 2:
                        times[step, k].append(t)
    finally:
        for w in workers.values():
            w.close()
    return {"med": {key: statistics.median(v) for key, v in times.items()}, "origin": origin, "arch": arch}


# ------------------------------------------------------------------------------------------- (b): bits sweep


def sweep_cost(quick: bool) -> dict:
    """`train.py -m bits=w4a4,w5a5,w4a8` into a temporary cache: wall time against one generation + three QATs."""
    from mimiq.models.teacher import teacher_dir

    tmp = Path(tempfile.mkdtemp(prefix="mimiq-speed-sweep-"))
    try:
        cache = tmp / "cache"
        cache.mkdir()
        if (ROOT / ".cache" / "data").is_dir():  # the mini dataset, else the sweep builds it (seconds)
            shutil.copytree(ROOT / ".cache" / "data", cache / "data")
        src = teacher_dir(_compose(ROOT, ["model=vit_mini", f"paths.cache_dir={ROOT / '.cache'}"]))
        budget, extra = SWEEP_BUDGET[quick], []
        if "model.train_teacher=false" in budget:
            teacher = "a random-init teacher"
        elif (src / "teacher.pt").is_file():
            shutil.copytree(src, cache / "teachers" / src.name)
            teacher = f"the cached trained teacher ({src.name}) copied in"
        else:
            teacher, extra = "a random-init teacher (no trained one cached)", ["model.train_teacher=false"]
        cmd = [
            sys.executable,
            str(ROOT / "train.py"),
            "-m",
            f"bits={SWEEP_BITS}",
            f"paths.cache_dir={cache}",
            f"hydra.sweep.dir={tmp / 'sweep'}",
            "logger=none",
            "qat.eval_every=1000",
            *budget,
            *extra,
        ]
        t0 = time.perf_counter()
        done = subprocess.run(
            cmd, cwd=ROOT, env=_one_thread_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        wall = time.perf_counter() - t0
        if done.returncode:
            raise RuntimeError(f"bits sweep failed ({done.returncode}):\n{done.stderr[-3000:]}")
        runs = [json.loads(p.read_text()) for p in sorted((tmp / "sweep").glob("*/metrics.json"))]
        if len(runs) != 3:
            raise RuntimeError(f"bits sweep: expected 3 metrics.json, found {len(runs)}")
        gen = sum(r["time_generate_s"] for r in runs)
        qat = sum(r["time_qat_s"] for r in runs)
        return {
            "wall": wall,
            "gen": gen,
            "qat": qat,
            "budget": budget,
            "extra": extra,
            "teacher": teacher,
            "reused": [r["synth_reused"] for r in runs],
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------------------------------------------- report


def _verdict(value: float, op: str, bound: float) -> str:
    return "met" if (value <= bound if op == "<=" else value >= bound) else "**not met**"


def markdown(quick: bool, steps: dict, old_new: dict, sweep: dict, total_s: float) -> str:
    import torch
    from profile_steps import ops_table

    m, qb = steps["med"], steps["qat_batch"]
    o = old_new["med"]
    gen_ratio = m["gen"] / m["bare"]
    rows = [
        (
            f"generation step, MimiQ, {GEN_BATCH} images / bare teacher fwd + bwd (CE only), same batch size",
            gen_ratio,
            "<=",
            TARGETS["gen"],
        ),
        (
            f"QAT step, W4/A4 + KD + HSAD, batch {qb} / (FP student fwd + bwd + teacher no-grad fwd)",
            m["qat"] / m["fp_fb"],
            "<=",
            TARGETS["qat_fp"],
        ),
        (
            f"QAT step, W4/A4 + KD + HSAD, batch {qb} / FP fine-tuning step (CE)",
            m["qat"] / m["finetune"],
            "<=",
            TARGETS["qat_finetune"],
        ),
        (
            f"bits sweep `train.py -m bits={SWEEP_BITS}` wall time / (one generation + three QATs)",
            sweep["wall"] / (sweep["gen"] + sweep["qat"]),
            "<=",
            TARGETS["sweep"],
        ),
        (
            f"generation step speed-up, {OLD_COMMIT} / this tree",
            o["gen", "old"] / o["gen", "new"],
            ">=",
            TARGETS["speedup"],
        ),
        (f"QAT step speed-up, {OLD_COMMIT} / this tree", o["qat", "old"] / o["qat", "new"], ">=", TARGETS["speedup"]),
    ]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    md = [
        "# Speed (mini task, CPU)",
        "",
        f"`python scripts/speed.py{' --quick' if quick else ''}`: {os.cpu_count()} CPU core(s) (1-min load average "
        f"{load:.1f} at the end), torch {torch.__version__}, 1 thread per process, fp32; mini ViT architecture "
        f"(conf/model/vit_mini.yaml, 32x32 inputs) at random init; {REPS[quick]} interleaved repetitions per step "
        f"after 2 warm-ups; {total_s:.0f} s in all. Ratios are medians of steps run in turn, so other load slows "
        "both sides alike; absolute times are for orientation only.",
        "",
        "## Targets",
        "",
        "| ratio | value | target | |",
        "|---|---:|---|---|",
        *[f"| {what} | {v:.2f} | {op} {b:g} | {_verdict(v, op, b)} |" for what, v, op, b in rows],
        "",
        "The generation step is the loop body of `mimiq.synth.generate.mimiq_batch` (roll, flip, annealed noise, "
        "colour jitter; teacher forward capturing `matmul_qk`; inter-head loss + CE + TV; backward to the pixels; "
        "AdamW; clamp); the QAT step is `train_qat`'s without the data augmentation (teacher no-grad forward, "
        "student forward, KD + HSAD, backward, SGD step). Definitions: `scripts/profile_steps.py`.",
        "",
        "Step medians (ms): " + ", ".join(f"{k} {v * 1e3:.1f}" for k, v in m.items()),
        "",
        f"## Old ({OLD_COMMIT}) vs new (this tree)",
        "",
        f"The same steps, batch sizes ({GEN_BATCH} images / {qb}) and random-init architecture (this tree's "
        f"vit_mini: {old_new['arch']}; {OLD_COMMIT}'s own had depth {old_new['origin']['old']['own_depth']}), run by "
        "each tree's own code and conf "
        f"in a worker process each (old: a git worktree at `{WORKTREE}`, PYTHONPATH to its src), "
        "one step of one, then one of the other.",
        "",
        f"| step | {OLD_COMMIT} (ms) | this tree (ms) | speed-up old / new | target |",
        "|---|---:|---:|---:|---|",
        *[
            f"| {s} | {o[s, 'old'] * 1e3:.1f} | {o[s, 'new'] * 1e3:.1f} | {o[s, 'old'] / o[s, 'new']:.2f} | "
            f">= {TARGETS['speedup']:g} ({_verdict(o[s, 'old'] / o[s, 'new'], '>=', TARGETS['speedup'])}) |"
            for s in ("gen", "qat")
        ],
        "",
        f"A generation step cannot be faster than the teacher's forward + backward it contains: with the old "
        f"step at about {o['gen', 'old'] / m['bare']:.2f}x the bare pass (the old worker's median over the bare "
        "step's, both measured in this run), removing every other cost would give at most that speed-up; the "
        "QAT step's cost beyond its FP passes is the fake-quant and distillation code (not changed here).",
        "",
        "## Bits sweep",
        "",
        f"`train.py -m bits={SWEEP_BITS} logger=none qat.eval_every=1000 "
        f"{' '.join(sweep['budget'] + sweep['extra'])}` on the basic launcher into a temporary cache, with "
        f"{sweep['teacher']}: wall {sweep['wall']:.1f} s; generation {sweep['gen']:.1f} s (the set reused by the "
        f"later runs: {sweep['reused']}); QAT {sweep['qat']:.1f} s over the three runs; the rest, "
        f"{sweep['wall'] - sweep['gen'] - sweep['qat']:.1f} s, is the process start-up and what every run does "
        "besides generating and training (teacher evaluation once, then per bit width: calibration, PTQ "
        "evaluation, final evaluation, set quality). At this tiny budget those fixed costs weigh far more than at "
        "the mini budget's (256 images x 96 steps, 32 epochs of 16 steps).",
        "",
        "## Where the time goes (torch.profiler, self CPU time)",
        "",
        ops_table(f"Generation step, {GEN_BATCH} images", *steps["prof"]["gen"]),
        "",
        ops_table(f"QAT step, W4/A4 + KD + HSAD, batch {qb}", *steps["prof"]["qat"]),
        "",
        "## GPU",
        "",
        "DeiT-S 224 px (random init): generation images x iterations / s and QAT images / s, fp32 and bf16 "
        "autocast, with and without torch.compile, next to the teacher's bare forward + backward: **not "
        "measured** — no GPU was lent to the session that ran this benchmark. On a GPU machine (< 10 min):",
        "",
        "```bash",
        "python scripts/gpu_speed.py --out results/mini/gpu_speed.md",
        "```",
    ]
    return "\n".join(md) + "\n"


def run(quick: bool) -> str:
    """Measures everything (CPU, this process and its workers) and returns the markdown report."""
    import torch

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    steps = step_ratios(quick)
    old_new = old_vs_new(quick, steps["qat_batch"])
    sweep = sweep_cost(quick)
    return markdown(quick, steps, old_new, sweep, time.perf_counter() - t0)


def main() -> None:
    if "--worker" in sys.argv:
        worker(Path(sys.argv[sys.argv.index("--worker") + 1]))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions, a smaller sweep (< 2 min)")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "mini" / "speed.md")
    args = ap.parse_args()
    text = run(args.quick)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
