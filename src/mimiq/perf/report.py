"""The speed report (results/mini/speed.md) from the measurements of `mimiq.perf.suite`, every ratio against its
target, met or not."""

from __future__ import annotations

import os
from pathlib import Path

# ratio -> (comparison, bound); the ratios are of median step times measured side by side in one run
TARGETS = {
    "gen_vs_bare": ("<=", 1.3),  # MimiQ generation step / the teacher's bare forward + backward, same batch
    "qat_vs_fp": ("<=", 1.3),  # QAT step / FP passes (FP student forward + backward, teacher no-grad forward)
    "qat_vs_finetune": ("<=", 1.6),  # QAT step / FP fine-tuning step (CE)
    "gen_compile": (">=", 1.5),  # eager / compiled, MimiQ generation step
    "qat_compile": (">=", 1.3),  # eager / compiled, QAT step
    "sweep": ("<=", 1.1),  # bits-sweep wall / (one generation + the sweep's QATs)
}
LABELS = {
    "gen_vs_bare": "generation step (MimiQ) / the teacher's bare forward + backward, same batch",
    "qat_vs_fp": "QAT step / (FP student forward + backward + teacher no-grad forward)",
    "qat_vs_finetune": "QAT step / FP fine-tuning step (CE)",
    "gen_compile": "compile speed-up of the generation step (MimiQ): eager / compiled",
    "qat_compile": "compile speed-up of the QAT step: eager / compiled",
    "sweep": "bits sweep wall / (one generation + its QATs)",
}
OLD_COMMIT = """## Old code (4c262bf) against the tree before the step functions

Recorded once (the tool that measured it, which rebuilt commit 4c262bf in a worktree, is gone): the same steps,
batch sizes (128 images / 16) and random-init mini ViT, each tree's own code in a worker process, driven in turn
(wall-clock medians of 15 steps, 2 cores shared). Generation step 1222.2 ms (4c262bf) vs 956.1 ms, speed-up
1.28; QAT step 254.1 ms vs 201.2 ms, speed-up 1.26; target >= 2: **not met**. The generation step cannot beat
the teacher's forward + backward it contains: the old step was about 1.93x the bare pass, so removing every
other cost would give at most that speed-up."""


def verdict(value: float, op: str, bound: float) -> str:
    """Met or not, judged on the value as the report shows it (2 decimals)."""
    value = round(value, 2)
    return "met" if (value <= bound if op == "<=" else value >= bound) else "**not met**"


def _fmt(v: float | None, digits: int = 2) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def ratios(steps: dict, precision: str = "fp32") -> dict[str, dict[str, float | None]]:
    """name -> {"eager": value, "compiled": value}, from the step medians (None where not measured)."""
    med = steps["median_s"]

    def get(step: str, mode: str) -> float | None:
        return med.get(f"{step}|{precision}|{mode}")

    def div(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b is not None else None

    out = {}
    for name, (num, den) in {
        "gen_vs_bare": ("gen:mimiq", "bare"),
        "qat_vs_fp": ("qat", "fp_passes"),
        "qat_vs_finetune": ("qat", "finetune"),
    }.items():
        out[name] = {m: div(get(num, m), get(den, m)) for m in ("eager", "compiled")}
    for name, step in (("gen_compile", "gen:mimiq"), ("qat_compile", "qat")):
        out[name] = {"eager": div(get(step, "eager"), get(step, "compiled")), "compiled": None}
    return out


def break_even(steps: dict, step: str, precision: str = "fp32") -> float | None:
    """Steps after which compiling `step` has paid its warm-up (warm-up / per-step saving), None if it never does."""
    med, warm = steps["median_s"], steps["warmup_s"]
    eager, comp = med.get(f"{step}|{precision}|eager"), med.get(f"{step}|{precision}|compiled")
    if eager is None or comp is None or comp >= eager:
        return None
    return warm[f"{step}|{precision}|compiled"] / (eager - comp)


def targets_table(data: dict) -> list[str]:
    rows = ["| ratio | eager | compiled | target | eager: met? | compiled: met? |", "|---|---:|---:|---|---|---|"]
    if "steps" in data:
        for name, vals in ratios(data["steps"]).items():
            op, bound = TARGETS[name]
            cells = [_fmt(vals["eager"]), _fmt(vals["compiled"])]
            ok = [verdict(v, op, bound) if v is not None else "" for v in (vals["eager"], vals["compiled"])]
            rows.append(f"| {LABELS[name]} | {' | '.join(cells)} | {op} {bound:g} | {ok[0]} | {ok[1]} |")
    if "sweep" in data:
        s = data["sweep"]
        value = s["wall_s"] / (s["generate_s"] + s["qat_s"])
        op, bound = TARGETS["sweep"]
        rows.append(f"| {LABELS['sweep']} | {value:.2f} | | {op} {bound:g} | {verdict(value, op, bound)} | |")
    return rows


def steps_table(steps: dict, precision: str) -> list[str]:
    med, warm = steps["median_s"], steps["warmup_s"]
    names = sorted({k.split("|")[0] for k in med if k.split("|")[1] == precision}, key=_order)
    rows = [
        "| step | batch | eager (ms) | compiled (ms) | eager / compiled | compile warm-up (s) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in names:
        e, c = med.get(f"{name}|{precision}|eager"), med.get(f"{name}|{precision}|compiled")
        batch = steps["gen_batch"][name[4:]] if name.startswith("gen:") else steps["qat_batch"]
        if name == "bare":
            batch = steps["gen_batch"].get("mimiq", next(iter(steps["gen_batch"].values())))
        w = warm.get(f"{name}|{precision}|compiled")
        speed = e / c if e is not None and c is not None else None
        rows.append(
            f"| {name} | {batch} | {_fmt(e and e * 1e3, 1)} | {_fmt(c and c * 1e3, 1)} | {_fmt(speed)} | {_fmt(w, 1)} |"
        )
    return rows


def _order(name: str) -> tuple[int, str]:
    return (0 if name.startswith("gen:") else 1 + ["bare", "qat", "fp_passes", "finetune"].index(name), name)


def precision_table(steps: dict) -> list[str]:
    med = steps["median_s"]
    names = sorted({k.split("|")[0] for k in med}, key=_order)
    rows = [
        "| step | fp32 eager (ms) | bf16 eager (ms) | fp32 eager / bf16 eager | bf16 compiled (ms) | "
        "fp32 eager / bf16 compiled |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for n in names:
        f, b, bc = (med.get(f"{n}|{p}") for p in ("fp32|eager", "bf16|eager", "bf16|compiled"))
        rows.append(
            f"| {n} | {_fmt(f and f * 1e3, 1)} | {_fmt(b and b * 1e3, 1)} | {_fmt(f / b if f and b else None)} | "
            f"{_fmt(bc and bc * 1e3, 1)} | {_fmt(f / bc if f and bc else None)} |"
        )
    return rows


def markdown(data: dict, gpu_report: Path | None = None) -> str:
    """The whole report from the stored measurements (any section may be missing: it says so). `gpu_report`:
    where the GPU report would be (a CPU report links it when it exists)."""
    device = data.get("steps", {}).get("device", "cpu")
    md = [f"# Speed ({'mini task, CPU' if device == 'cpu' else 'GPU'})", ""]
    md += [
        "Regenerated by `scripts/speed.py` (`make speed`); each section names the command that measured it. The "
        "steps are the functions the loops call (`mimiq.perf`). The machine was shared with other work: every "
        "comparison is side by side in one run (steps interleaved), on the CPU timed by the process's CPU time "
        "at one thread, so other load changes absolute numbers far more than ratios.",
        "",
        "## Targets",
        "",
        *targets_table(data),
        "",
    ]
    if "steps" in data:
        s = data["steps"]
        md += [
            f"## Steps, eager and compiled ({s['device']})",
            "",
            f"`{s['command']}`: {s['machine']}; {s['reps']} interleaved repetitions per step, {s['clock']}, "
            f"{s['bits']}; compile warm-up = first call minus a timed call (wall), compiled in the process "
            f"(inductor's compile_threads=1), from {'an empty' if s.get('cold_cache') else 'a kept'} inductor cache "
            f"({'cold' if s.get('cold_cache') else 'warm'}).",
            "",
        ]
        for p in s["precisions"]:
            md += [f"**{p}**", "", *steps_table(s, p), ""]
        if "bf16" in s["precisions"] and "fp32" in s["precisions"]:
            md += ["**bf16 autocast against fp32 (eager)**", "", *precision_table(s), ""]
        md += _compile_notes(s)
        for table in s.get("profile", {}).values():
            md += [table, ""]
    else:
        md += ["## Steps", "", "Not measured yet: `python scripts/speed.py`.", ""]
    md += _threads(data.get("threads")) + _sweep(data.get("sweep")) + _converged(data.get("converged"))
    if device == "cpu":
        md += [OLD_COMMIT, "", *_gpu(gpu_report)]
    return "\n".join(md) + "\n"


def _compile_notes(s: dict) -> list[str]:
    lines = []
    for step in ("gen:mimiq", "qat"):
        n = break_even(s, step)
        if n is not None or f"{step}|fp32|compiled" in s["median_s"]:
            say = f"{n:,.0f} steps" if n is not None else "never (no per-step saving)"
            lines.append(f"- `{step}`: compiling pays its warm-up after {say}.")
    if lines:
        lines = ["`compile: auto` weighs this break-even (warm-up / per-step saving, fp32):", "", *lines, ""]
    share = s.get("gemm_share", {})
    for step in ("gen:mimiq", "qat"):
        e, c = share.get(f"{step}|fp32|eager"), share.get(f"{step}|fp32|compiled")
        if e is not None:
            lines.append(
                f"`{step}`: matrix products (mm, addmm, bmm) take {100 * e:.0f} % of the eager step's self CPU time "
                f"under the profiler{f' and {100 * c:.0f} % of the compiled one' if c is not None else ''}. Compile "
                "fuses the other ops into few kernels but runs the products through the same BLAS calls, so fusing "
                f"alone cannot make this step more than {1 / e:.2f}x faster on this CPU (if every other op vanished)."
            )
            lines.append("")
    return lines


def _threads(t: dict | None) -> list[str]:
    if not t:
        return ["## Threads per worker", "", "Not measured yet: `python scripts/speed.py --threads 1,2`.", ""]
    med = t["median_wall_s"]
    counts = sorted({int(k.split("|")[1]) for k in med})
    rows = ["| step | " + " | ".join(f"{n} thread(s) (ms, wall)" for n in counts) + " | speed-up |", "|---|"]
    rows[1] += "---:|" * (len(counts) + 1)
    for step in ("gen:mimiq", "qat"):
        vals = [med[f"{step}|{n}"] for n in counts]
        rows.append(f"| {step} | " + " | ".join(f"{v * 1e3:.1f}" for v in vals) + f" | {vals[0] / vals[-1]:.2f} |")
    return [
        "## Threads per worker",
        "",
        f"`{t['command']}`: eager fp32, wall-clock medians of {t['reps']} interleaved repetitions on "
        f"{t['cores']} cores shared with other work (a second thread competes with them).",
        "",
        *rows,
        "",
    ]


def _sweep(s: dict | None) -> list[str]:
    if not s:
        return ["## Bits sweep", "", "Not measured yet: `python scripts/speed.py --sweep`.", ""]
    fixed = s["wall_s"] - s["generate_s"] - s["qat_s"]
    rows = ["| run | whole (s) | generation (s) | QAT (s) | rest (s) |", "|---|---:|---:|---:|---:|"]
    rows += [
        f"| {k} | {v['total_s']:.0f} | {v['generate_s']:.0f} | {v['qat_s']:.0f} | {v['rest_s']:.0f} |"
        for k, v in s["runs"].items()
    ]
    return [
        "## Bits sweep",
        "",
        f"`{s['command']}` (one process, Hydra's basic launcher, a temporary cache, a random-init teacher, wall "
        f"clock): {s['wall_s']:.0f} s in all, of which generation {s['generate_s']:.0f} s (the set is reused by the "
        f"later runs: {s['reused']}) and QAT {s['qat_s']:.0f} s; fixed cost {fixed:.0f} s: the process's start and "
        f"Hydra ({s['process_s']:.0f} s outside the runs), and per run (`rest`) the teacher stage (the first run "
        "only: `train.py` keeps the loaded and evaluated teacher between jobs), calibration, the PTQ and final "
        "evaluations (2,000 images each) and the run's files. The QAT runs evaluate only at their end "
        "(`qat.eval_every=1000`): each evaluation during QAT (8 per run at the mini budget's `eval_every: 4`) "
        "costs about as much as the final one.",
        "",
        *rows,
        "",
    ]


def _converged(c: dict | None) -> list[str]:
    if not c:
        return ["## A converged MimiQ set", "", "Not measured yet: `python scripts/speed.py --converged`.", ""]
    rows = [
        "| variant | CPU s | CPU s / image | label agreement (%) |",
        "|---|---:|---:|---:|",
    ]
    for name, v in c["sets"].items():
        rows.append(f"| {name} | {v['cpu_s']:.0f} | {v['cpu_s_per_image']:.2f} | {v['label_agreement']:.1f} |")
    return [
        "## A converged MimiQ set",
        "",
        f"`{c['command']}`: {c['images']} images x {c['iterations']} iterations (batch {c['batch']}) from the "
        "project's trained mini ViT teacher; CPU seconds of the whole `synthesize_or_load` call (compile warm-up, "
        "the set's quality check and its files included), one thread.",
        "",
        *rows,
        "",
    ]


def _gpu(gpu_report: Path | None) -> list[str]:
    if gpu_report is not None and gpu_report.is_file():
        return ["## GPU", "", f"Measured: [{gpu_report.name}]({gpu_report.name}).", ""]
    return [
        "## GPU",
        "",
        "**Not measured**: no GPU was lent to the session that wrote this. The prepared commands (one GPU):",
        "",
        "```bash",
        "python scripts/speed.py --device cuda --precision fp32,bf16   # DeiT-S 224 px, paper batches, eager and "
        "compiled",
        "make gpu-mini    # budget=gpu_mini: MimiQ, PSAQ-ViT + KD, noise + KD on the mini task (one -m sweep)",
        "```",
        "",
    ]


def machine(device) -> str:
    import torch

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    where = torch.cuda.get_device_name(device) + ", " if device.type == "cuda" else ""
    return (
        f"{where}{os.cpu_count()} CPU core(s) (1-min load average {load:.1f} at the end), torch {torch.__version__}, "
        f"{torch.get_num_threads()} CPU thread(s)"
    )
