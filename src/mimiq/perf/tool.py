"""What `scripts/speed.py` runs: the requested measurements, stored next to the report and the report rewritten.

The measurements live in `<out>.json` by section (steps, threads, sweep, converged); a run replaces the sections it
measured and keeps the others, then writes `<out>` (markdown) from all of them.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch._inductor.config as inductor_config
from torch._inductor.runtime.cache_dir_utils import temporary_cache_dir

from mimiq.config import ROOT
from mimiq.perf import report, suite
from mimiq.utils.io import atomic_save_json, atomic_write

DEFAULT_MODEL = {"cpu": "vit_mini", "cuda": "deit_small_patch16_224"}  # the mini task; the paper's DeiT-S
DEFAULT_OUT = {"cpu": ROOT / "results/mini/speed.md", "cuda": ROOT / "results/mini/gpu_speed.md"}
SWEEP_BITS = "w4a4,w5a5,w4a8"


@dataclass
class Options:
    device: str = "cpu"  # cpu | cuda
    compile: str = "both"  # off | on | both
    precision: str = "fp32"  # comma-separated: fp32, bf16
    threads: str = "1"  # comma-separated thread counts; two or more: the threads section too
    generators: str = "mimiq,psaq,psaq_v2"
    reps: int = 10  # interleaved timed calls per step
    steps: bool = True  # the steps section (eager and compiled, every precision)
    profile: bool = False  # torch.profiler tables of the first generator's and the QAT step
    sweep: bool = False  # the bits sweep at the mini budget
    converged: bool = False  # the converged MimiQ set, eager and compiled
    converged_iterations: int = 384  # generation iterations of the converged MimiQ set (mini ViT teacher)
    converged_images: int = 128  # images of that set (one batch of the mini budget)
    model: str | None = None  # conf/model name; default per device (DEFAULT_MODEL)
    overrides: list[str] = field(default_factory=list)  # Hydra overrides of the steps' config
    out: Path | None = None  # the report; default per device (DEFAULT_OUT)
    warm_cache: bool = False  # keep inductor's on-disk cache (default: an empty one, warm-ups as on a new machine)
    cache: Path = Path(os.environ.get("MIMIQ_CACHE", ROOT / ".cache"))  # the trained teacher (converged set)

    def command(self, section: str) -> str:
        parts = ["python scripts/speed.py"]
        if self.device != "cpu":
            parts.append(f"--device {self.device}")
        if section == "steps":
            parts += [f"--compile {self.compile}", f"--precision {self.precision}", f"--reps {self.reps}"]
            parts += ["--profile"] if self.profile else []
        elif section == "threads":
            parts.append(f"--threads {self.threads} --reps {self.reps}")
        elif section == "converged":
            parts += [f"--compile {self.compile}", f"--precision {self.precision}", "--converged"]
        else:
            parts.append(f"--{section}")
        return " ".join(parts + list(self.overrides))


def check(opts: Options) -> None:
    """One clear error for a bad option, before anything is built."""
    if opts.device not in ("cpu", "cuda"):
        raise ValueError(f"--device must be cpu or cuda, got {opts.device!r}")
    if opts.compile not in ("off", "on", "both"):
        raise ValueError(f"--compile must be off, on or both, got {opts.compile!r}")
    if not set(opts.precision.split(",")) <= {"fp32", "bf16"}:
        raise ValueError(f"--precision takes fp32 and/or bf16, comma-separated; got {opts.precision!r}")
    if opts.reps < 1 or any(int(n) < 1 for n in opts.threads.split(",")):
        raise ValueError("--reps and every --threads count must be >= 1")


def run(opts: Options) -> str:
    """Measures what `opts` asks for; after each section, stores it and rewrites the report (a run cut short
    keeps what it measured). Returns the report's markdown."""
    check(opts)
    device = torch.device(opts.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: CUDA is not available on this machine; run this command on a GPU machine")
    out = opts.out or DEFAULT_OUT[device.type]
    store = out.with_suffix(".json")
    data = json.loads(store.read_text()) if store.is_file() else {}
    text = [report.markdown(data)]

    def save(name: str, section: dict) -> None:
        data[name] = section
        text[0] = report.markdown(data, gpu_report=DEFAULT_OUT["cuda"] if device.type == "cpu" else None)
        atomic_save_json(data, store)
        atomic_write(out, lambda f: f.write(text[0].encode()))

    threads = [int(n) for n in opts.threads.split(",")]
    torch.set_num_threads(threads[0])
    inductor_config.compile_threads = 1  # compile in this process: its CPU time counts with the steps'
    with tempfile.TemporaryDirectory(prefix="mimiq-inductor-") as tmp:
        if opts.warm_cache:
            _measure(opts, device, threads, save)
        else:  # an empty inductor cache: the warm-ups a first run pays
            with temporary_cache_dir(tmp):
                _measure(opts, device, threads, save)
    return text[0]


def _measure(opts: Options, device: torch.device, threads: list[int], save: Callable[[str, dict], None]) -> None:
    model = opts.model or DEFAULT_MODEL[device.type]
    cfg = suite.base_cfg(model, device, list(opts.overrides))
    compiles = {"off": [False], "on": [True], "both": [False, True]}[opts.compile]
    precisions = opts.precision.split(",")
    if opts.steps:
        gens = opts.generators.split(",")
        steps = suite.measure_steps(
            cfg, device, gens, compiles, precisions, opts.reps, list(opts.overrides), opts.profile
        )
        steps.update(command=opts.command("steps"), machine=report.machine(device), device=str(device))
        save("steps", {**steps, "precisions": precisions, "model": model, "cold_cache": not opts.warm_cache})
    if len(threads) > 1:
        save("threads", {**suite.measure_threads(cfg, device, threads, opts.reps), "command": opts.command("threads")})
    if opts.converged:
        c = suite.measure_converged(
            opts.cache, device, opts.converged_iterations, opts.converged_images, compiles, precisions
        )
        save("converged", {**c, "command": opts.command("converged")})
    if opts.sweep:
        save("sweep", suite.measure_sweep(SWEEP_BITS, [f"device={device.type}"]))
