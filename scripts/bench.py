"""Mini benchmark (issue 6): the paper's claims at small scale, measured side by side in one run.

    python scripts/bench.py            # make bench: 7 QAT rows; ViT mini x 5 bits, Swin mini W4/A4 (see grid_cells)
    python scripts/bench.py --quick    # make bench-quick: ViT mini, W4/A4, one seed, fewer rows

Every run goes through the same Hydra configs and `mimiq.pipeline.run` as `python train.py` (the mini
defaults: conf/budget/mini.yaml), in one process that keeps each teacher loaded. Seeds vary the QAT (student
init batch, data order, augmentation); the synthetic set of a (teacher, generator) is generated once with
`synth_seed=0` and shared by the seeds and bit widths (issue 4's cache) — the paper generates per seed, which
the mini budget cannot afford. Each run keeps its directory under logs/bench/, so an interrupted bench resumes
where it stopped. Writes results/mini/ (see README there): accuracy.csv|md, accuracy_vs_bits.png,
attention_similarity.csv|png, attention_maps.png, grids/, speed.md, README.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from mimiq import pipeline  # noqa: E402
from mimiq.evaluate.invariance import INVARIANCE_GATE, format_report, invariance_report  # noqa: E402
from mimiq.synth import generate  # noqa: E402
from mimiq.utils.hooks import capture  # noqa: E402

OUT = ROOT / "results" / "mini"
RUNS = ROOT / "logs" / "bench"
# (id, label, generator, distill): the paper's rows; FP comes from the teacher's own evaluation.
METHODS = [
    ("noise_kd", "Noise + KD", "noise", "kd"),
    ("psaq", "PSAQ-ViT", "psaq", "kd"),
    ("psaq_v2", "PSAQ-ViT V2", "psaq_v2", "kd"),
    ("mimiq_kd", "MimiQ generation + KD", "mimiq", "kd"),
    ("mimiq", "MimiQ (generation + HSAD)", "mimiq", "mimiq"),
    ("real_kd", "Real data + KD", "real", "kd"),
    ("real_hsad", "Real data + HSAD", "real", "mimiq"),
]
LABELS = {"fp": "FP", **{m: label for m, label, _, _ in METHODS}}
BITS = ["w4a4", "w5a5", "w4a8", "w3a3", "w2a4"]  # the paper's columns, then its open question 1 (W2/A4)
BASELINES = ("noise_kd", "psaq", "psaq_v2")  # the "best baseline generator" of the gap target
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
    """The config without the keys that cannot change a run's final numbers (how often QAT evaluates)."""
    c = OmegaConf.to_container(cfg, resolve=True)
    c.get("qat", {}).pop("eval_every", None)
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


# ------------------------------------------------------------------------------------------------ accuracy


HEADLINE = "w4a4"  # the paper's headline column: every seed, every teacher instance
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
    teachers: list[str], methods: list, bits: list[str], seeds: list[int], full: bool, seeds_after_first: int = 1
) -> list[tuple]:
    """(teacher instance, method, bits, seed) cells to run.

    full: every combination. Otherwise the 90-minute plan: every seed at W4/A4 for the first teacher instance (the
    headline, mean ± std over seeds), its first seed at the other bit widths; the instances after the first at W4/A4
    on their first `seeds_after_first` seeds; the SECOND_TEACHER_SKIP rows on the first instance's first seed only.
    """
    cells = []
    for i, t in enumerate(teachers):
        for m in methods:
            if not full and m[0] in SECOND_TEACHER_SKIP:
                cells += [(t, m, b, seeds[0]) for b in bits] if i == 0 else []
                continue
            for b in bits:
                if full or (i == 0 and b == HEADLINE):
                    cells += [(t, m, b, s) for s in seeds]
                elif b == HEADLINE:
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


def cell_overrides(teacher: str, gen: str, dist: str, bits: str, seed: int) -> list[str]:
    """A cell's run: the set is regenerated per seed (synth_seed = seed), so seeds vary the set and the QAT."""
    return [
        *teacher_overrides(teacher),
        f"generator={gen}",
        f"distill={dist}",
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
    for k, (teacher, (mid, _, gen, dist), b, seed) in enumerate(cells, 1):
        m = run_cell(cell_overrides(teacher, gen, dist, b, seed), RUNS / teacher / mid / b / f"seed{seed}", memo)
        records.append(
            {
                "method": mid,
                "teacher": teacher,
                "w_bits": m["w_bits"],
                "a_bits": m["a_bits"],
                "seed": seed,
                "generator": gen,
                "distill": dist,
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
    """Worker k of n: the cells of every n-th (teacher, seed) group, so that the runs sharing a synthetic set (the
    same teacher, generator and seed) stay in one process and each set is generated once."""
    groups = list(dict.fromkeys((c[0], c[3]) for c in cells))
    mine = set(groups[k::n])
    return [c for c in cells if (c[0], c[3]) in mine]


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


def bits_tag(w: int, a: int) -> str:
    return f"w{w}a{a}"


def summary(records: list[dict], key: str = "top1") -> dict[tuple[str, str, str], tuple[float, float, int]]:
    """(teacher, method, bits tag) -> (mean, sample std (0 for one run), runs) of `key` (top1 or ptq_top1)."""
    groups: dict[tuple, list[float]] = {}
    for r in records:
        if r.get(key) is not None:
            groups.setdefault((r["teacher"], r["method"], bits_tag(r["w_bits"], r["a_bits"])), []).append(r[key])
    return {k: (statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0, len(v)) for k, v in groups.items()}


def fmt_cell(c: tuple | None) -> str:
    """'82.00 ± 2.00 (n=3)', '82.00 (n=1)' or '–'."""
    if not c:
        return "–"
    return f"{c[0]:.2f} ± {c[1]:.2f} (n={c[2]})" if c[2] > 1 else f"{c[0]:.2f} (n=1)"


def accuracy_markdown(stats: dict, ptq: dict, teachers: list[str], methods: list, bits: list[str]) -> str:
    lines = []
    for teacher in teachers:
        fp = stats[(teacher, "fp", "w32a32")][0]
        head = " | ".join(f"{b.upper().replace('A', '/A')} QAT | PTQ" for b in bits)
        lines += [f"### {teacher} (FP {fp:.2f} %)", "", f"| Method | {head} |", "|---" * (2 * len(bits) + 1) + "|"]
        for mid, label, _, _ in methods:
            cells = [f"{fmt_cell(stats.get((teacher, mid, b)))} | {fmt_cell(ptq.get((teacher, mid, b)))}" for b in bits]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    lines.append(
        "Top-1 (%) on the mini test split, final QAT epoch, mean ± sample std over seeds (each seed "
        "regenerates the synthetic set and reruns QAT); PTQ = the same student right after calibration on its "
        "first `qat.calib_size` training images, before any QAT step. The best epoch (`top1_best`, chosen on "
        "the test split) is in accuracy.csv only."
    )
    return "\n".join(lines) + "\n"


METHOD_COLOURS = {
    "noise_kd": "tab:gray",
    "psaq": "tab:orange",
    "psaq_v2": "tab:brown",
    "mimiq_kd": "tab:cyan",
    "mimiq": "tab:blue",
    "real_kd": "tab:green",
    "real_hsad": "tab:olive",
}


def plot_accuracy(stats: dict, teachers: list[str], methods: list, bits: list[str], path: Path) -> None:
    """One panel per teacher instance; one fixed colour per method, markers (bit widths are categories), one legend."""
    fig, axes = plt.subplots(1, len(teachers), figsize=(4.5 * len(teachers), 3.8), squeeze=False, sharey=True)
    offsets = {m[0]: (i - (len(methods) - 1) / 2) * 0.08 for i, m in enumerate(methods)}
    for ax, teacher in zip(axes[0], teachers, strict=True):
        for mid, label, _, _ in methods:
            pts = [(i, stats[(teacher, mid, b)]) for i, b in enumerate(bits) if (teacher, mid, b) in stats]
            if pts:
                ax.errorbar(
                    [p[0] + offsets[mid] for p in pts],
                    [p[1][0] for p in pts],
                    [p[1][1] for p in pts],
                    marker="o",
                    ls="none",
                    color=METHOD_COLOURS.get(mid),
                    label=label,
                    capsize=3,
                )
        ax.axhline(stats[(teacher, "fp", "w32a32")][0], color="k", ls="--", lw=1, label="FP")
        ax.set_xticks(range(len(bits)), [b.upper().replace("A", "/A") for b in bits])
        ax.set_title(teacher)
        ax.set_ylabel("top-1 (%)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8)
    fig.tight_layout(rect=(0, 0.16, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def best_baseline(stats: dict, teacher: str, bits: str = HEADLINE) -> str | None:
    """The baseline row with the highest mean on this teacher instance (chosen once, not per seed)."""
    return max(
        (b for b in BASELINES if (teacher, b, bits) in stats), key=lambda b: stats[(teacher, b, bits)][0], default=None
    )


def paired(records: list[dict], stats: dict, teachers: list[str], bits: str = HEADLINE) -> dict:
    """MimiQ − best baseline per (teacher instance, seed): the differences, their mean and 95 % t-interval."""
    from scipy import stats as st

    by = {
        (r["teacher"], r["method"], r["seed"]): r["top1"] for r in records if bits_tag(r["w_bits"], r["a_bits"]) == bits
    }
    diffs = []
    for t in teachers:
        b = best_baseline(stats, t, bits)
        diffs += [
            (t, seed, b, by[(t, "mimiq", seed)] - by[(t, b, seed)])
            for (tt, m, seed) in by
            if tt == t and m == "mimiq" and (t, b, seed) in by
        ]
    d = [x[3] for x in diffs]
    if not d:
        return {"pairs": [], "mean": float("nan"), "ci": (float("nan"), float("nan"))}
    mean = statistics.mean(d)
    half = st.t.ppf(0.975, len(d) - 1) * statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else float("inf")
    return {"pairs": diffs, "mean": mean, "ci": (mean - half, mean + half)}


def spread(stats: dict, records: list[dict], teachers: list[str], methods: list, bits: str = HEADLINE) -> list[dict]:
    """Per method: the std over seeds (first instance, whose seeds regenerate the set) and over teacher instances
    (each instance's seed-0 run) at `bits`."""
    rows = []
    same_model = [t for t in teachers if t.partition(".t")[0] == teachers[0].partition(".t")[0]]
    at_bits = [r for r in records if bits_tag(r["w_bits"], r["a_bits"]) == bits and r["seed"] == 0]
    for mid, label, _, _ in methods:
        seeds = stats.get((teachers[0], mid, bits))
        first = [r["top1"] for t in same_model for r in at_bits if r["teacher"] == t and r["method"] == mid]
        rows.append(
            {
                "method": label,
                "seed_std": seeds[1] if seeds and seeds[2] > 1 else None,
                "seed_n": seeds[2] if seeds else 0,
                "teacher_n": len(first),
                "teacher_std": statistics.stdev(first) if len(first) > 1 else None,
            }
        )
    return rows


# ---------------------------------------------------------------------------------------- attention analysis


def synthetic_set(teacher_name: str, gen: str, memo: dict):
    """(cfg, teacher stage, SyntheticSet) of the bench's set for (teacher, generator): cached after the grid."""
    cfg = compose_cfg([*teacher_overrides(teacher_name), f"generator={gen}", "seed=0", "synth_seed=0", "logger=none"])
    stage = teacher_stage(cfg, memo)
    return cfg, stage, generate.synthesize_or_load(stage.teacher, cfg, torch.device("cpu"))


def teacher_stage(cfg: DictConfig, memo: dict) -> pipeline.TeacherStage:
    return pipeline.teacher_stage(cfg, torch.device("cpu"), memo)


def attention_similarity(teachers: list[str], sources: list[str], memo: dict) -> list[dict]:
    """One row per (teacher, source) set: the seed-0 sets of the accuracy grid."""
    rows = []
    for teacher in teachers:
        for src in sources:
            cfg, _, synth = synthetic_set(teacher, src, memo)
            rows.append(
                {
                    "source": src,
                    "teacher": teacher,
                    "interhead_ssim": synth.meta["interhead_ssim"],
                    "interhead_abs_ssim": synth.meta.get("interhead_abs_ssim"),
                    "num_images": len(synth.images),
                    "set": Path(synth.meta["path"]).name,
                }
            )
            folder = Path(synth.meta["path"])
            shutil.copyfile(folder / "grid.png", OUT / "grids" / f"{teacher}_{src}.png")
            if (folder / "loss_curves.png").is_file():
                shutil.copyfile(folder / "loss_curves.png", OUT / "grids" / f"{teacher}_{src}_loss.png")
    return rows


def plot_similarity(rows: list[dict], teachers: list[str], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 3.5))
    width = 0.8 / len(teachers)
    sources = list(dict.fromkeys(r["source"] for r in rows))
    for j, teacher in enumerate(teachers):
        by_source = {r["source"]: r["interhead_abs_ssim"] for r in rows if r["teacher"] == teacher}
        ax.bar(
            [i + j * width for i in range(len(sources))],
            [by_source.get(s, float("nan")) for s in sources],
            width,
            label=teacher,
        )
    ax.set_xticks([i + width * (len(teachers) - 1) / 2 for i in range(len(sources))], sources)
    ax.set_ylabel("mean inter-head attention |SSIM|")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def attention_maps(teacher_name: str, memo: dict, path: Path, layer: int = -1) -> None:
    """The paper's Fig. 1 analogue: one query patch (the centre), every head of one block, for the first image
    of the real, PSAQ and MimiQ sets. Softmax attention over the key patches (CLS dropped), on the patch grid."""
    sources = ["real", "psaq", "mimiq"]
    fig = None
    for row, src in enumerate(sources):
        cfg, stage, synth = synthetic_set(teacher_name, src, memo)
        x = synth.images[:1]
        with torch.no_grad(), capture(stage.teacher, "matmul_qk") as qk:
            stage.teacher(x)
        logits = qk[layer][0]  # (heads, tokens, tokens)
        gh, gw = stage.teacher.patch_embed.grid_size
        q = 1 + (gh // 2) * gw + gw // 2  # centre patch (+1: CLS first)
        maps = logits[:, q, 1:].softmax(-1).view(-1, gh, gw)
        if fig is None:
            fig, axes = plt.subplots(len(sources), 1 + len(maps), figsize=(2 * (1 + len(maps)), 2 * len(sources)))
        mean, std = (torch.tensor(stage.data_config[k]).view(3, 1, 1) for k in ("mean", "std"))
        axes[row][0].imshow((x[0] * std + mean).clamp(0, 1).permute(1, 2, 0).numpy())
        axes[row][0].set_ylabel(src)
        for h, m in enumerate(maps):
            axes[row][1 + h].imshow(m.numpy(), cmap="viridis")
            axes[row][1 + h].set_title(f"head {h}", fontsize=8) if row == 0 else None
        for ax in axes[row]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"{teacher_name}: attention of the centre patch, block {layer % len(qk)}, head by head")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -------------------------------------------------------------------------------------------------- targets


def targets(
    stats: dict,
    sim: list[dict],
    speed_rows: list[dict],
    sweep: dict | None,
    teachers: list[str],
    quality: dict | None = None,
    gates: dict | None = None,
    pair: dict | None = None,
) -> list:
    """(target, measured, met) rows of results/mini/README.md; W4/A4."""
    out = []
    for t, rep in (gates or {}).items():
        worst = min(v["top1"] for k, v in rep.items() if k != "clean")
        out.append(
            (
                f"{t}: teacher top-1 on real test images >= 90 % clean and >= {INVARIANCE_GATE:g} % under every "
                "generator transform",
                f"clean {rep['clean']['top1']:.1f}, "
                + ", ".join(f"{k} {v['top1']:.1f}" for k, v in rep.items() if k != "clean"),
                rep["clean"]["top1"] >= 90 and worst >= INVARIANCE_GATE,
            )
        )
    for (t, gen), q in (quality or {}).items():
        if gen in ("mimiq", "psaq"):
            out.append(
                (
                    f"{t}: {gen} set converges (agreement >= 85 %, every class, no class > 25 %)",
                    f"agreement {q['synth_label_agreement']:.1f} %, classes {q['synth_classes_predicted']:.1f}, "
                    f"largest {q['synth_max_class_share']:.1f} % (mean over {q['n']} set(s))",
                    q["synth_label_agreement"] >= 85
                    and q["synth_classes_predicted"] >= 10
                    and q["synth_max_class_share"] <= 25,
                )
            )
    for t in teachers:
        get = lambda m, t=t: stats.get((t, m, "w4a4"), (float("nan"),))[0]  # noqa: E731
        fp, noise = stats[(t, "fp", "w32a32")][0], get("noise_kd")
        out.append(
            (
                f"{t}: noise + KD W4/A4 >= 15 points below FP",
                f"FP {fp:.2f}, noise {noise:.2f}: {fp - noise:.2f} points",
                fp - noise >= 15,
            )
        )
        best_id = best_baseline(stats, t)
        if best_id and (t, "mimiq", "w4a4") in stats:
            best, mimiq = get(best_id), get("mimiq")
            gap = fp - best  # no gap to close (best >= FP) means the task cannot show the claim: not met
            closed = (mimiq - best) / gap if gap > 0 else float("nan")
            out.append(
                (
                    f"{t}: MimiQ closes >= 70 % of the best baseline's gap to FP",
                    f"MimiQ {mimiq:.2f}, best baseline {LABELS[best_id]} {best:.2f}, FP {fp:.2f}: "
                    + (f"{100 * closed:.0f} %" if gap > 0 else "no gap (best baseline >= FP)"),
                    gap > 0 and closed >= 0.7,
                )
            )
        reals = [get(m) for m in ("real_hsad", "real_kd") if (t, m, "w4a4") in stats]
        if reals and (t, "mimiq", "w4a4") in stats:
            out.append(
                (
                    f"{t}: MimiQ within 2 points of real-data QAT (best real row)",
                    f"MimiQ {get('mimiq'):.2f}, real {max(reals):.2f}",
                    get("mimiq") >= max(reals) - 2,
                )
            )
        if (t, "mimiq_kd", "w4a4") in stats and (t, "mimiq", "w4a4") in stats:
            out.append(
                (
                    f"{t}: HSAD beats KD-only (MimiQ data)",
                    f"HSAD {get('mimiq'):.2f}, KD {get('mimiq_kd'):.2f}",
                    get("mimiq") > get("mimiq_kd"),
                )
            )
    if pair and pair["pairs"]:
        lo, hi = pair["ci"]
        out.append(
            (
                "MimiQ − best baseline, paired over (teacher instance, seed): 95 % interval above 0",
                f"{pair['mean']:+.2f} points, 95 % CI [{lo:+.2f}, {hi:+.2f}] over {len(pair['pairs'])} pairs",
                lo > 0,
            )
        )
    for t, key in [(t, k) for t in teachers for k in ("interhead_abs_ssim", "interhead_ssim")]:
        s = {r["source"]: r[key] for r in sim if r["teacher"] == t}
        if {"mimiq", "real", "noise", "psaq"} <= set(s):
            what = "|SSIM| (the loss's measure)" if key == "interhead_abs_ssim" else "signed SSIM"
            out.append(
                (
                    f"{t}: MimiQ inter-head {what} >= real; noise and PSAQ lower than MimiQ",
                    ", ".join(f"{k} {v:.3f}" for k, v in s.items()),
                    s["mimiq"] >= s["real"] and s["noise"] < s["mimiq"] and s["psaq"] < s["mimiq"],
                )
            )
    for r in speed_rows + ([sweep] if sweep else []):
        ratio, bound = r["a_s"] / r["b_s"], r["bound"]
        met = ratio <= bound if r["op"] == "<=" else ratio >= bound
        out.append((f"speed: {r['what']} {r['op']} {bound}", f"{ratio:.2f}", met))
    return out


def set_quality_table(records: list[dict]) -> dict[tuple[str, str], dict]:
    """(teacher, generator) -> mean of the set measures over that teacher's sets (one per seed), and n."""
    sets: dict[tuple, dict] = {}
    for r in records:
        if r["method"] != "fp" and r.get("synth_label_agreement") is not None:
            sets[(r["teacher"], r["generator"], r["seed"])] = r  # one set per (teacher, generator, seed)
    out: dict[tuple, dict] = {}
    for (t, g, _), r in sets.items():
        out.setdefault((t, g), []).append(r)
    keys = ("synth_label_agreement", "synth_class_entropy", "synth_max_class_share", "synth_classes_predicted")
    return {k: {**{q: statistics.mean(r[q] for r in v) for q in keys}, "n": len(v)} for k, v in out.items()}


def quality_markdown(quality: dict) -> str:
    lines = [
        "| Teacher | Generator | label agreement (%) | classes predicted | largest class (%) | class entropy "
        "(nats, max 2.303) | sets |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {t} | {g} | {q['synth_label_agreement']:.1f} | {q['synth_classes_predicted']:.1f} | "
        f"{q['synth_max_class_share']:.1f} | {q['synth_class_entropy']:.3f} | {q['n']} |"
        for (t, g), q in sorted(quality.items())
    ]
    return "\n".join(lines) + "\n"


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


def write_csv(rows: list[dict], path: Path) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, keys)
        w.writeheader()
        w.writerows(rows)


def readme(
    tgt: list,
    acc_md: str,
    sim: list[dict],
    total_s: float,
    mode: str,
    runs_s: float,
    quality_md: str,
    spread_rows: list[dict],
    pair: dict,
) -> str:
    lines = [
        "# Mini benchmark",
        "",
        f"Regenerated by `{'make bench-quick' if mode == 'quick' else 'make bench'}` (`scripts/bench.py`); "
        f"this invocation {total_s / 60:.1f} min on {os.cpu_count()} CPU core(s); the runs it tabulates took "
        f"{runs_s / 60:.1f} min (teacher training included where a run did it; finished runs are read back, "
        "not rerun). Do not edit by hand. What the numbers mean, and why: [ANALYSIS.md](ANALYSIS.md).",
        "",
        "## Targets (W4/A4)",
        "",
        "| Target | Measured | Met |",
        "|---|---|---|",
    ]
    lines += [f"| {t} | {m} | {'met' if ok else '**not met**'} |" for t, m, ok in tgt]
    lines += [
        "",
        "## Accuracy (W/A bits)",
        "",
        acc_md,
        "## Spread (W4/A4 top-1, points)",
        "",
        "| Method | std over seeds (set + QAT) | n | std over teacher instances (seed 0) | n |",
        "|---|---|---|---|---|",
    ]
    num = lambda v: "–" if v is None else f"{v:.2f}"  # noqa: E731
    lines += [
        f"| {r['method']} | {num(r['seed_std'])} | {r['seed_n']} | {num(r['teacher_std'])} | {r['teacher_n']} |"
        for r in spread_rows
    ]
    if pair["pairs"]:
        lo, hi = pair["ci"]
        lines += [
            "",
            f"Paired MimiQ − best baseline (per teacher instance, seed): mean {pair['mean']:+.2f} points, "
            f"95 % t-interval [{lo:+.2f}, {hi:+.2f}]; pairs: "
            + ", ".join(f"{t} s{s} vs {b} {d:+.2f}" for t, s, b, d in pair["pairs"])
            + ".",
        ]
    lines += [
        "",
        "## Synthetic sets: convergence",
        "",
        quality_md,
        "## Inter-head attention similarity",
        "",
        "| Teacher | Source | SSIM | abs SSIM |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {r['teacher']} | {r['source']} | {r['interhead_ssim']:.4f} | {r['interhead_abs_ssim'] or 0:.4f} |"
        for r in sim
    ]
    lines += [
        "",
        "Files: `accuracy.csv` (one row per run: QAT and PTQ top-1, QAT optimiser steps, set measures), "
        "`accuracy_vs_bits.png`, `attention_similarity.csv|png`, `attention_maps.png`, "
        "`grids/<teacher>_<source>.png` and `grids/<teacher>_<source>_loss.png` (generation loss curves), "
        "`teacher_gate.json`, `speed.md`.",
        "",
    ]
    return "\n".join(lines)


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
    ap.add_argument(
        "--methods", default=None, help=f"comma list of rows (default: all of {','.join(m[0] for m in METHODS)})"
    )
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
    chosen = args.methods.split(",") if args.methods else [m[0] for m in METHODS]
    if unknown := set(chosen) - {m[0] for m in METHODS}:
        ap.error(f"unknown --methods {sorted(unknown)}")
    methods = [m for m in METHODS if m[0] in chosen and (not quick or m[0] in QUICK_METHODS)]
    for t, b in [(t, b) for t in teachers for b in bits]:  # bad input fails here, before compute
        compose_cfg([*teacher_overrides(t), f"bits={b}"])
    (OUT / "grids").mkdir(parents=True, exist_ok=True)
    memo: dict = {}

    cells = grid_cells(teachers, methods, bits, seeds, args.full_grid, args.seeds_after_first)
    if args.shard:  # a worker: its share of the grid's runs, then exit (the parent tabulates)
        k, n = (int(v) for v in args.shard.split("/"))
        accuracy_grid(shard_cells(cells, k, n), memo)
        return 0
    if args.jobs > 1:
        shared = [t for t in teachers if len({c[3] for c in cells if c[0] == t}) > 1]
        for t in shared:  # a teacher that several workers use is trained (cached) before they start
            teacher_stage(compose_cfg([*teacher_overrides(t), "logger=none"]), memo)
        run_workers(argv if argv is not None else sys.argv[1:], args.jobs)
    records = accuracy_grid(cells, memo)  # reads the workers' runs back (and runs any that failed)
    gates = teacher_gates(teachers, memo)
    (OUT / "teacher_gate.json").write_text(json.dumps(gates, indent=1))
    gens = {m[2] for m in methods}  # the attention analysis reads the grid's seed-0 sets: no set of its own
    sim = attention_similarity(teachers[:1], [s for s in SOURCES if s in gens or s in ("real", "noise")], memo)
    attention_maps(teachers[0], memo, OUT / "attention_maps.png")
    if not args.no_speed:  # scripts/speed.py: its own targets, met / not met, in speed.md
        import speed

        (OUT / "speed.md").write_text(speed.run(quick))

    stats, ptq = summary(records), summary(records, "ptq_top1")
    write_csv(records, OUT / "accuracy.csv")
    acc_md = accuracy_markdown(stats, ptq, teachers, methods, bits)
    (OUT / "accuracy.md").write_text(acc_md)
    plot_accuracy(stats, teachers, methods, bits, OUT / "accuracy_vs_bits.png")
    write_csv(sim, OUT / "attention_similarity.csv")
    plot_similarity(sim, teachers[:1], OUT / "attention_similarity.png")
    quality = set_quality_table(records)
    pair = paired(records, stats, teachers)
    spread_rows = spread(stats, records, teachers, methods)
    tgt = targets(stats, sim, [], None, teachers, quality, gates, pair)
    total = time.time() - t0
    runs_s = sum(r.get("time_total_s") or 0.0 for r in records)
    (OUT / "README.md").write_text(
        readme(
            tgt, acc_md, sim, total, "quick" if quick else "full", runs_s, quality_markdown(quality), spread_rows, pair
        )
    )
    print(acc_md)
    for t, m, ok in tgt:
        print(f"{'MET    ' if ok else 'NOT MET'}  {t}: {m}")
    print(f"bench total: {total:.0f} s ({total / 60:.1f} min) -> {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
