"""The measurements of the speed report, each a function returning plain data (JSON-able) for `mimiq.perf.report`.

steps      every step (generators, the teacher's bare pass, QAT, FP passes, FP fine-tuning) eager and
           compiled, at each precision, interleaved in one run; compile warm-ups apart
threads    the eager MimiQ generation and QAT steps at 1 and 2 threads per process, interleaved
sweep      `train.py -m bits=...` (one process, Hydra's basic launcher) against its runs' own generation and
           QAT times
converged  one MimiQ set at the iterations that converge it, eager and compiled: CPU seconds per image and the
           set's label agreement (needs the project's trained teacher)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import DictConfig

from mimiq.config import ROOT, compose
from mimiq.perf import steps as S
from mimiq.perf.timing import interleaved, ops_table, top_ops

STEP_NAMES = ("bare", "qat", "fp_passes", "finetune")  # besides "gen:<generator>"
GEMMS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")  # matrix products: what compile leaves as it is


def base_cfg(model: str, device: torch.device, overrides: list[str]) -> DictConfig:
    """The run config the steps are built from: the mini budget on the CPU, the paper's on CUDA."""
    budget = "paper" if device.type == "cuda" else "mini"
    return compose(
        [f"model={model}", f"budget={budget}", "model.pretrained=false", f"device={device.type}", *overrides]
    )


def gen_cfgs(cfg: DictConfig, generators: list[str], overrides: list[str]) -> dict[str, DictConfig]:
    """The generator node of each generator, composed with the same budget and overrides."""
    model, budget = cfg.model.name, cfg.budget_name
    return {
        g: compose([f"model={model}", f"budget={budget}", f"generator={g}", *overrides]).generator for g in generators
    }


def measure_steps(
    cfg: DictConfig,
    device: torch.device,
    generators: list[str],
    compiles: list[bool],
    precisions: list[str],
    reps: int,
    overrides: list[str],
    profile: bool = False,
) -> dict:
    """Medians (s) of every step x precision x compile, interleaved in one run, and their first calls.

    Keys are "<step>|<precision>|<eager|compiled>"; a step is "gen:<generator>" (batch = generator.batch_size),
    "bare" (the teacher's forward + CE + backward at the generation batch), "qat" (`qat_step`, W/A of cfg.bits,
    qat.batch_size), "fp_passes" (`qat_step` on an FP copy, no optimiser step) or "finetune" (FP, CE, SGD step).
    """
    m = S.build_models(cfg, device)
    gcfgs = gen_cfgs(cfg, generators, overrides)
    batch = cfg.generator.batch_size
    fns = {}
    for precision in precisions:
        for c in compiles:
            tag = f"{precision}|{'compiled' if c else 'eager'}"
            for g, gcfg in gcfgs.items():
                fns[f"gen:{g}|{tag}"] = S.generation(m, gcfg, gcfg.batch_size, c, precision)
            fns[f"bare|{tag}"] = S.bare(m, batch, c, precision)
            fns[f"qat|{tag}"] = S.qat(m, c, precision)
            fns[f"fp_passes|{tag}"] = S.qat(m, c, precision, fp=True)
            fns[f"finetune|{tag}"] = S.finetune(m, c, precision)
    t0 = time.perf_counter()
    timings = interleaved(fns, reps, device)
    out = {
        "median_s": {k: t.median for k, t in timings.items()},
        "median_wall_s": {k: t.median_wall for k, t in timings.items()},
        "warmup_s": {k: t.warmup_s for k, t in timings.items()},
        "reps": reps,
        "wall_s": time.perf_counter() - t0,
        "gen_batch": {g: c.batch_size for g, c in gcfgs.items()},
        "qat_batch": cfg.qat.batch_size,
        "bits": f"W{cfg.quant.w_bits}/A{cfg.quant.a_bits}",
        "clock": "CPU time" if device.type == "cpu" else "wall time, synchronised",
    }
    if profile:
        first = precisions[0]
        out["profile"], out["gemm_share"] = {}, {}
        for name in (f"gen:{generators[0]}", "qat"):
            for c in compiles:
                key = f"{name}|{first}|{'compiled' if c else 'eager'}"
                ops, total = top_ops(fns[key], rows=10_000)
                out["profile"][key] = ops_table(key.replace("|", ", "), ops[:12], total)
                out["gemm_share"][key] = sum(pct for op, _, pct, _ in ops if op in GEMMS) / 100
    return out


def measure_threads(cfg: DictConfig, device: torch.device, threads: list[int], reps: int) -> dict:
    """Wall medians (s) of the eager MimiQ generation and QAT steps at each thread count, interleaved."""
    m = S.build_models(cfg, device)
    gcfg = gen_cfgs(cfg, ["mimiq"], [])["mimiq"]

    def at(n: int, f):
        def run() -> None:
            torch.set_num_threads(n)
            f()

        return run

    fns = {}
    for n in threads:
        fns[f"gen:mimiq|{n}"] = at(n, S.generation(m, gcfg, gcfg.batch_size, False))
        fns[f"qat|{n}"] = at(n, S.qat(m, False))
    before = torch.get_num_threads()
    try:
        timings = interleaved(fns, reps, device)
    finally:
        torch.set_num_threads(before)
    return {"median_wall_s": {k: t.median_wall for k, t in timings.items()}, "reps": reps, "cores": os.cpu_count()}


def _one_thread_env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return {**env, "WANDB_MODE": "disabled", "PYTHONPATH": str(ROOT / "src")}


def measure_sweep(bits: str, overrides: list[str]) -> dict:
    """`train.py -m bits=<bits>` (mini budget, random-init teacher, a temporary cache, QAT evaluated once, at its
    end): its wall time against one generation + the QATs, both from its runs' metrics.json. The rest is fixed
    cost: the process, the teacher stage (once: train.py keeps it between the jobs), and per run calibration, the
    PTQ and final evaluations, the set's loading and the run's files (`rest_s` per run)."""
    tmp = Path(tempfile.mkdtemp(prefix="mimiq-speed-sweep-"))
    args = ["-m", f"bits={bits}", "logger=none", "model.train_teacher=false", "qat.eval_every=1000", *overrides]
    try:
        cmd = [sys.executable, str(ROOT / "train.py"), *args]
        cmd += [f"paths.cache_dir={tmp / 'cache'}", f"hydra.sweep.dir={tmp / 'sweep'}"]
        t0 = time.perf_counter()
        done = subprocess.run(cmd, cwd=ROOT, env=_one_thread_env(), capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if done.returncode:
            raise RuntimeError(f"bits sweep failed ({done.returncode}):\n{done.stderr[-3000:]}")
        runs = [json.loads(p.read_text()) for p in sorted((tmp / "sweep").glob("*/metrics.json"))]
        if len(runs) != len(bits.split(",")):
            raise RuntimeError(f"bits sweep: expected {len(bits.split(','))} metrics.json, found {len(runs)}")
        per_run = {
            f"W{r['w_bits']}/A{r['a_bits']}": {
                "total_s": r["time_total_s"],
                "generate_s": r["time_generate_s"],
                "qat_s": r["time_qat_s"],
                "rest_s": r["time_total_s"] - r["time_generate_s"] - r["time_qat_s"],
            }
            for r in runs
        }
        return {
            "command": " ".join(["python train.py", *args]),
            "wall_s": wall,
            "generate_s": sum(r["time_generate_s"] for r in runs),
            "qat_s": sum(r["time_qat_s"] for r in runs),
            "process_s": wall - sum(r["time_total_s"] for r in runs),
            "runs": per_run,
            "reused": [r["synth_reused"] for r in runs],
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def measure_converged(
    cache: Path, device: torch.device, iterations: int, images: int, compiles: list[bool], precisions: list[str]
) -> dict:
    """One MimiQ set of `images` images x `iterations` iterations from the project's trained mini ViT teacher
    (under `cache`, read only) per (precision, compile): process CPU seconds of `synthesize_or_load` (warm-up and
    the set's quality check included), per image, and the set's label agreement."""
    from mimiq.models.attention import swap_attention
    from mimiq.models.teacher import load_or_train_teacher, teacher_dir
    from mimiq.synth.generate import synthesize_or_load

    cfg = compose(["model=vit_mini", f"paths.cache_dir={cache}", f"device={device.type}"])
    if not (teacher_dir(cfg) / "teacher.pt").is_file():
        raise FileNotFoundError(f"no trained mini teacher at {teacher_dir(cfg)}: run `python train.py` once")
    teacher, _ = load_or_train_teacher(cfg, device)
    swap_attention(teacher)
    out = {}
    with tempfile.TemporaryDirectory(prefix="mimiq-speed-set-") as tmp:
        for precision in precisions:
            for c in compiles:
                name = f"{precision}, {'compiled' if c else 'eager'}"
                run = compose(
                    [
                        "model=vit_mini",
                        f"paths.cache_dir={tmp}/{precision}-{int(c)}",
                        f"device={device.type}",
                        f"generator.iterations={iterations}",
                        f"generator.num_images={images}",
                        f"compile={'on' if c else 'off'}",
                        f"precision={precision}",
                    ]
                )
                c0, t0 = time.process_time(), time.perf_counter()
                meta = synthesize_or_load(teacher, run, device).meta
                cpu = time.process_time() - c0
                out[name] = {
                    "cpu_s": cpu,
                    "wall_s": time.perf_counter() - t0,
                    "generate_s": meta["time_s"],
                    "cpu_s_per_image": cpu / images,
                    "label_agreement": meta["synth_label_agreement"],
                }
    return {"iterations": iterations, "images": images, "batch": cfg.generator.batch_size, "sets": out}
