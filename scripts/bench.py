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
import copy
import csv
import json
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
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from mimiq import pipeline  # noqa: E402
from mimiq.distill.augment import SyntheticAugment  # noqa: E402
from mimiq.distill.qat import build_optimizer, train_qat  # noqa: E402
from mimiq.models.registry import create_model, model_data_config  # noqa: E402
from mimiq.models.student import build_student  # noqa: E402
from mimiq.quant import QuantSpec  # noqa: E402
from mimiq.synth import generate  # noqa: E402
from mimiq.synth.losses import interhead_ssim, interhead_ssim_reference  # noqa: E402
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
QUICK_BUDGET = ["generator.num_images=64", "generator.batch_size=64", "generator.iterations=48", "qat.epochs=4"]
EXTRA: list[str] = []  # overrides added to every run of this bench (QUICK_BUDGET under --quick)


def compose_cfg(overrides: list[str]) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=[*EXTRA, *overrides])


def run_cell(overrides: list[str], run_dir: Path, memo: dict) -> dict:
    """metrics.json of one train.py-equivalent run. A finished run is read back, not recomputed, and an interrupted
    one resumes, but only if its saved config equals this one: a run left by another config (bench-quick, an older
    recipe: the teacher's key is part of the config) is deleted and rerun."""
    cfg = compose_cfg(overrides)
    saved = run_dir / "config_resolved.yaml"
    if run_dir.exists() and not (saved.is_file() and OmegaConf.to_container(OmegaConf.load(saved), resolve=True)
                                 == OmegaConf.to_container(cfg, resolve=True)):  # fmt: skip
        print(f"{run_dir} holds a run of another config: rerunning it")
        shutil.rmtree(run_dir)
    done = run_dir / "metrics.json"
    if done.is_file():
        return json.loads(done.read_text())
    return pipeline.run(cfg, run_dir, memo)


# ------------------------------------------------------------------------------------------------ accuracy


HEADLINE = "w4a4"  # the paper's headline column: every seed for the first teacher, every teacher
# rows the 90-min plan leaves out for teachers after the first: PSAQ-ViT V2's set costs ~5x MimiQ's (a sample step
# and a student step per iteration), ~17 min per teacher on 2 cores
SECOND_TEACHER_SKIP = ("psaq_v2",)


def grid_cells(teachers: list[str], methods: list, bits: list[str], seeds: list[int], full: bool) -> list[tuple]:
    """(teacher, method, bits, seed) cells to run.

    full: every combination (7 x 5 x 3 per teacher, ~3.5 h on 2 cores). Otherwise the 90-minute plan: all seeds at
    W4/A4 for the first teacher (the headline, so its mean ± std is over every seed), its first seed at the other bit
    widths; teachers after the first at W4/A4, first seed, without the SECOND_TEACHER_SKIP rows.
    """
    cells = []
    for i, t in enumerate(teachers):
        for m in methods:
            if i > 0 and not full and m[0] in SECOND_TEACHER_SKIP:
                continue
            for b in bits:
                if full or (i == 0 and b == HEADLINE):
                    cells += [(t, m, b, s) for s in seeds]
                elif i == 0 or b == HEADLINE:
                    cells.append((t, m, b, seeds[0]))
    return cells


def accuracy_grid(cells: list[tuple], memo: dict) -> list[dict]:
    """Runs every (teacher, method, bits, seed) cell; returns one record per run (FP rows included)."""
    teachers = list(dict.fromkeys(c[0] for c in cells))
    records, t0 = [], time.time()
    for k, (teacher, (mid, _, gen, dist), b, seed) in enumerate(cells, 1):
        overrides = [f"model={teacher}", f"generator={gen}", f"distill={dist}", f"bits={b}", f"seed={seed}",
                     "synth_seed=0", "logger=none", "qat.eval_every=1000"]  # fmt: skip
        m = run_cell(overrides, RUNS / teacher / mid / b / f"seed{seed}", memo)
        records.append({"method": mid, "teacher": teacher, "w_bits": m["w_bits"], "a_bits": m["a_bits"],
                        "seed": seed, "top1": m["top1"], "fp_top1": m["fp_top1"], "generator": gen, "distill": dist,
                        "time_generate_s": m["time_generate_s"], "time_qat_s": m["time_qat_s"],
                        "time_total_s": m["time_total_s"]})  # fmt: skip
        print(f"[bench {k}/{len(cells)}, {time.time() - t0:.0f} s] {teacher} {mid} {b} seed {seed}: "
              f"top-1 {m['top1']:.2f} % (FP {m['fp_top1']:.2f} %)", flush=True)  # fmt: skip
    for teacher in teachers:
        fp = next(r["fp_top1"] for r in records if r["teacher"] == teacher)
        records.append({"method": "fp", "teacher": teacher, "w_bits": 32, "a_bits": 32, "seed": 0, "top1": fp,
                        "fp_top1": fp, "generator": "", "distill": ""})  # fmt: skip
    return records


def bits_tag(w: int, a: int) -> str:
    return f"w{w}a{a}"


def summary(records: list[dict]) -> dict[tuple[str, str, str], tuple[float, float, int]]:
    """(teacher, method, bits tag) -> (mean, sample std (0 for one run), runs)."""
    groups: dict[tuple, list[float]] = {}
    for r in records:
        groups.setdefault((r["teacher"], r["method"], bits_tag(r["w_bits"], r["a_bits"])), []).append(r["top1"])
    return {k: (statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0, len(v)) for k, v in groups.items()}


def accuracy_markdown(stats: dict, teachers: list[str], methods: list, bits: list[str]) -> str:
    lines = []
    for teacher in teachers:
        fp = stats[(teacher, "fp", "w32a32")][0]
        head = " | ".join(b.upper().replace("A", "/A") for b in bits)
        lines += [f"### {teacher} (FP {fp:.2f} %)", "", f"| Method | {head} |", "|---" * (len(bits) + 1) + "|"]
        lines.append("| FP | " + " | ".join(f"{fp:.2f}" for _ in bits) + " |")
        for mid, label, _, _ in methods:
            cells = [stats.get((teacher, mid, b)) for b in bits]
            lines.append(f"| {label} | " + " | ".join(f"{c[0]:.2f} ± {c[1]:.2f}" if c else "–" for c in cells) + " |")
        lines.append("")
    ns = sorted({s[2] for k, s in stats.items() if k[1] != "fp"})
    lines.append(f"Top-1 (%) on the mini test split, mean ± sample std over the QAT seeds of each cell "
                 f"({' or '.join(map(str, ns))} seed(s); a single-seed cell shows ± 0.00); final epoch.")
    return "\n".join(lines) + "\n"


def plot_accuracy(stats: dict, teachers: list[str], methods: list, bits: list[str], path: Path) -> None:
    fig, axes = plt.subplots(1, len(teachers), figsize=(6 * len(teachers), 4), squeeze=False)
    for ax, teacher in zip(axes[0], teachers, strict=True):
        for mid, label, _, _ in methods:
            pts = [(i, stats[(teacher, mid, b)]) for i, b in enumerate(bits) if (teacher, mid, b) in stats]
            if pts:
                ax.errorbar([p[0] for p in pts], [p[1][0] for p in pts], [p[1][1] for p in pts], marker="o",
                            label=label, capsize=3)  # fmt: skip
        ax.axhline(stats[(teacher, "fp", "w32a32")][0], color="k", ls="--", label="FP")
        ax.set_xticks(range(len(bits)), [b.upper().replace("A", "/A") for b in bits])
        ax.set_title(teacher)
        ax.set_ylabel("top-1 (%)")
    axes[0][-1].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------- attention analysis


def synthetic_set(teacher_name: str, gen: str, memo: dict):
    """(cfg, teacher stage, SyntheticSet) of the bench's set for (teacher, generator): cached after the grid."""
    cfg = compose_cfg([f"model={teacher_name}", f"generator={gen}", "synth_seed=0", "logger=none"])
    stage = teacher_stage(cfg, memo)
    return cfg, stage, generate.synthesize_or_load(stage.teacher, cfg, torch.device("cpu"))


def teacher_stage(cfg: DictConfig, memo: dict) -> pipeline.TeacherStage:
    return pipeline.teacher_stage(cfg, torch.device("cpu"), memo)


def attention_similarity(teachers: list[str], sources: list[str], memo: dict, full: bool) -> list[dict]:
    """One row per (teacher, source) set; not full: grid_cells' plan, no SECOND_TEACHER_SKIP sets after the first."""
    rows = []
    for i, teacher in enumerate(teachers):
        for src in sources:
            if i > 0 and not full and src in SECOND_TEACHER_SKIP:
                continue
            cfg, _, synth = synthetic_set(teacher, src, memo)
            rows.append({"source": src, "teacher": teacher, "interhead_ssim": synth.meta["interhead_ssim"],
                         "interhead_abs_ssim": synth.meta.get("interhead_abs_ssim"),
                         "num_images": len(synth.images), "set": Path(synth.meta["path"]).name})  # fmt: skip
            shutil.copyfile(Path(synth.meta["path"]) / "grid.png", OUT / "grids" / f"{teacher}_{src}.png")
    return rows


def plot_similarity(rows: list[dict], teachers: list[str], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 3.5))
    width = 0.8 / len(teachers)
    sources = list(dict.fromkeys(r["source"] for r in rows))
    for j, teacher in enumerate(teachers):
        by_source = {r["source"]: r["interhead_abs_ssim"] for r in rows if r["teacher"] == teacher}
        ax.bar([i + j * width for i in range(len(sources))], [by_source.get(s, float("nan")) for s in sources],
               width, label=teacher)  # fmt: skip
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


# ---------------------------------------------------------------------------------------------------- speed


def _timed(fn, repeats: int) -> float:
    """Median seconds of `fn()` over `repeats` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def speed(memo: dict, quick: bool) -> list[dict]:
    """Ratios measured in this process, side by side (CPU)."""
    rows = []
    cfg = compose_cfg(["model=vit_mini", "generator=mimiq", "logger=none"])
    stage = teacher_stage(cfg, memo)
    device = torch.device("cpu")
    iters = 4 if quick else 10

    # 1. a MimiQ generation step vs a CE(+TV)-only step: the same generator with w_interhead = 0
    def gen_steps(teacher, gcfg, data_config, w_ih: float, iters: int) -> float:
        gcfg.generator.iterations, gcfg.generator.w_interhead = iters, w_ih
        ctx = generate._context(teacher, gcfg, device, data_config)
        images = slice(0, gcfg.generator.batch_size)
        with generate.tqdm(total=iters, disable=True) as bar:

            def one():
                return generate.mimiq_batch(ctx, images, torch.Generator().manual_seed(0), generate._Curves(bar, 10**9))

            return _timed(one, 1) / iters

    t_mimiq, t_ce = (gen_steps(stage.teacher, cfg, stage.data_config, w, iters) for w in (1.0, 0.0))
    rows.append({"what": f"generation step, {cfg.generator.batch_size} images (MimiQ / CE+TV only)",
                 "a_s": t_mimiq, "b_s": t_ce, "op": "<=", "bound": 1.25})  # fmt: skip
    if not quick:  # the same ratio at the paper's scale, where the attention maps are a smaller share of a step
        dcfg = compose_cfg(["model=deit_small_patch16_224", "model.pretrained=false", "generator=mimiq",
                            "logger=none", "generator.batch_size=4"])  # fmt: skip
        deit = create_model(dcfg.model).eval().requires_grad_(False)
        t_mimiq, t_ce = (gen_steps(deit, dcfg, model_data_config(deit), w, 2) for w in (1.0, 0.0))
        rows.append({"what": "generation step, DeiT-S 224 px (random init), 4 images (MimiQ / CE+TV only)",
                     "a_s": t_mimiq, "b_s": t_ce, "op": "<=", "bound": 1.25})  # fmt: skip

    # 2. the vectorised inter-head SSIM vs the float64 reference loop, the same logits
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad(), capture(stage.teacher, "matmul_qk") as qk:
        stage.teacher(x)
    grid = tuple(stage.teacher.patch_embed.grid_size)
    t_vec = _timed(lambda: interhead_ssim(qk[0], grid, True), 5)
    t_loop = _timed(lambda: interhead_ssim_reference(qk[0], grid, True), 1)
    rows.append({"what": f"inter-head SSIM, one block, {len(x)} images (reference loop / vectorised)",
                 "a_s": t_loop, "b_s": t_vec, "op": ">=", "bound": 10})  # fmt: skip

    # 3. a QAT step (W4/A4 fake-quant + KD + HSAD) vs a plain FP fine-tuning step (CE), same model, batch, augment
    images = torch.randn(cfg.qat.batch_size * (2 if quick else 4), 3, 32, 32).clamp(-2, 2)
    labels = torch.randint(0, stage.teacher.num_classes, (len(images),))
    student, _ = build_student(stage.teacher, QuantSpec.from_cfg(cfg.quant), images[: cfg.qat.calib_size])
    qcfg = compose_cfg(["model=vit_mini", "logger=none", "qat.epochs=1", "qat.eval_every=1"])
    tiny_eval = DataLoader(TensorDataset(images[:2], labels[:2]), batch_size=2)
    qat_dir = RUNS / "speed_qat"
    shutil.rmtree(qat_dir, ignore_errors=True)
    steps = len(images) // cfg.qat.batch_size
    t_qat = train_qat(student, stage.teacher, images, labels, qcfg, device, tiny_eval, qat_dir, stage.data_config)
    t_qat = t_qat["time_qat_s"] / steps
    fp_model = copy.deepcopy(stage.teacher).requires_grad_(True)
    opt = build_optimizer([p for p in fp_model.parameters() if p.requires_grad], cfg.optim)
    augment = SyntheticAugment(cfg.qat.augment, stage.data_config["mean"], stage.data_config["std"], 32)

    def fp_step(i=[0]):  # noqa: B006 - a step counter
        idx = torch.arange(i[0] % steps * cfg.qat.batch_size, (i[0] % steps + 1) * cfg.qat.batch_size)
        i[0] += 1
        loss = torch.nn.functional.cross_entropy(fp_model(augment(images[idx])), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    t_fp = _timed(fp_step, steps)
    rows.append({"what": f"training step, batch {cfg.qat.batch_size} (QAT W4/A4 + KD + HSAD / FP fine-tuning, CE)",
                 "a_s": t_qat, "b_s": t_fp, "op": "<=", "bound": 2})  # fmt: skip
    return rows


def sweep_cost(memo: dict, quick: bool) -> dict:
    """`train.py -m bits=w4a4,w5a5,w4a8` in a fresh cache (teacher copied in): the sweep's wall time against one
    generation + three QATs, both from that sweep's own metrics.json."""
    cache = RUNS / "sweep_cache"
    shutil.rmtree(cache, ignore_errors=True)
    src_cfg = compose_cfg(["model=vit_mini", "logger=none"])
    stage = teacher_stage(src_cfg, memo)
    teacher_dir = Path(stage.info["path"]).parent
    shutil.copytree(teacher_dir, cache / "teachers" / teacher_dir.name)
    shutil.copytree(Path(src_cfg.paths.cache_dir) / "data", cache / "data")
    sweep_dir = RUNS / "sweep"
    shutil.rmtree(sweep_dir, ignore_errors=True)
    budget = ["generator.num_images=64", "generator.iterations=24", "qat.epochs=2"] if quick else []
    cmd = [sys.executable, str(ROOT / "train.py"), "-m", "bits=w4a4,w5a5,w4a8", f"paths.cache_dir={cache}",
           f"hydra.sweep.dir={sweep_dir}", "logger=none", "qat.eval_every=1000", *budget]  # fmt: skip
    t0 = time.time()
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    wall = time.time() - t0
    runs = [json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/metrics.json"))]
    if len(runs) != 3:
        raise RuntimeError(f"bits sweep: expected 3 metrics.json under {sweep_dir}, found {len(runs)}")
    gen = sum(r["time_generate_s"] for r in runs)
    qat = sum(r["time_qat_s"] for r in runs)
    return {"what": "3-bit sweep wall time (train.py -m bits=w4a4,w5a5,w4a8) / (one generation + three QATs)",
            "a_s": wall, "b_s": gen + qat, "op": "<=", "bound": 1.1}  # fmt: skip


def speed_markdown(rows: list[dict], sweep: dict | None) -> str:
    lines = ["# Speed (CPU, this machine, one process)", "",
             f"Measured by `scripts/bench.py` on {os.cpu_count()} CPU core(s), torch {torch.__version__}, "
             f"{torch.get_num_threads()} threads, fp32.", "",
             "| What | a (s) | b (s) | a / b | target |", "|---|---|---|---|---|"]  # fmt: skip
    for r in rows + ([sweep] if sweep else []):
        lines.append(f"| {r['what']} | {r['a_s']:.4g} | {r['b_s']:.4g} | {r['a_s'] / r['b_s']:.2f} | "
                     f"{r['op']} {r['bound']} |")  # fmt: skip
    lines += ["", "## GPU", "",
              "DeiT-S at 224 px (random init), generation images x iterations / s and QAT images / s, fp32 and bf16,",
              "next to the teacher's bare forward + backward: **not measured** — no GPU was lent to the session that",
              "ran this benchmark.", "",
              "| GPU | precision | teacher fwd+bwd img/s | generation img*it/s | QAT img/s |", "|---|---|---|---|---|",
              "| – | – | – | – | – |"]  # fmt: skip
    return "\n".join(lines) + "\n"


# -------------------------------------------------------------------------------------------------- targets


def targets(stats: dict, sim: list[dict], speed_rows: list[dict], sweep: dict | None, teachers: list[str]) -> list:
    """(target, measured, met) rows of results/mini/README.md; W4/A4."""
    out = []
    for t in teachers:
        get = lambda m, t=t: stats.get((t, m, "w4a4"), (float("nan"),))[0]  # noqa: E731
        fp, noise = stats[(t, "fp", "w32a32")][0], get("noise_kd")
        out.append((f"{t}: noise + KD W4/A4 >= 15 points below FP", f"FP {fp:.2f}, noise {noise:.2f}: "
                    f"{fp - noise:.2f} points", fp - noise >= 15))  # fmt: skip
        best_id = max((b for b in BASELINES if (t, b, "w4a4") in stats), key=get, default=None)
        if best_id and (t, "mimiq", "w4a4") in stats:
            best, mimiq = get(best_id), get("mimiq")
            gap = fp - best  # no gap to close (best >= FP) means the task cannot show the claim: not met
            closed = (mimiq - best) / gap if gap > 0 else float("nan")
            out.append((f"{t}: MimiQ closes >= 70 % of the best baseline's gap to FP",
                        f"MimiQ {mimiq:.2f}, best baseline {LABELS[best_id]} {best:.2f}, FP {fp:.2f}: "
                        + (f"{100 * closed:.0f} %" if gap > 0 else "no gap (best baseline >= FP)"),
                        gap > 0 and closed >= 0.7))  # fmt: skip
        if (t, "real_hsad", "w4a4") in stats and (t, "mimiq", "w4a4") in stats:
            real = max(get("real_hsad"), get("real_kd"))
            out.append((f"{t}: MimiQ within 2 points of real-data QAT (best real row)",
                        f"MimiQ {get('mimiq'):.2f}, real {real:.2f}", get("mimiq") >= real - 2))  # fmt: skip
        if (t, "mimiq_kd", "w4a4") in stats and (t, "mimiq", "w4a4") in stats:
            out.append((f"{t}: HSAD beats KD-only (MimiQ data)", f"HSAD {get('mimiq'):.2f}, KD {get('mimiq_kd'):.2f}",
                        get("mimiq") > get("mimiq_kd")))  # fmt: skip
    for t, key in [(t, k) for t in teachers for k in ("interhead_abs_ssim", "interhead_ssim")]:
        s = {r["source"]: r[key] for r in sim if r["teacher"] == t}
        if s:
            what = "|SSIM| (the loss's measure)" if key == "interhead_abs_ssim" else "signed SSIM"
            out.append((f"{t}: MimiQ inter-head {what} >= real; noise and PSAQ lower than MimiQ",
                        ", ".join(f"{k} {v:.3f}" for k, v in s.items()),
                        s["mimiq"] >= s["real"] and s["noise"] < s["mimiq"] and s["psaq"] < s["mimiq"]))  # fmt: skip
    for r in speed_rows + ([sweep] if sweep else []):
        ratio, bound = r["a_s"] / r["b_s"], r["bound"]
        met = ratio <= bound if r["op"] == "<=" else ratio >= bound
        out.append((f"speed: {r['what']} {r['op']} {bound}", f"{ratio:.2f}", met))
    return out


def write_csv(rows: list[dict], path: Path) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, keys)
        w.writeheader()
        w.writerows(rows)


def readme(tgt: list, acc_md: str, sim: list[dict], total_s: float, mode: str, runs_s: float) -> str:
    lines = ["# Mini benchmark (issue 6)", "",
             f"Regenerated by `{'make bench-quick' if mode == 'quick' else 'make bench'}` (`scripts/bench.py`); "
             f"this invocation {total_s / 60:.1f} min on {os.cpu_count()} CPU core(s); the runs it tabulates took "
             f"{runs_s / 60:.1f} min (teacher training included where a run did it; finished runs are read back, "
             "not rerun). Do not edit by hand: findings and "
             "their investigation live in `ANALYSIS.md`, which this file includes at the end.", "",
             "## Targets", "", "| Target | Measured | Met |", "|---|---|---|"]  # fmt: skip
    lines += [f"| {t} | {m} | {'met' if ok else '**not met**'} |" for t, m, ok in tgt]
    lines += ["", "## Accuracy (W/A bits)", "", acc_md, "## Inter-head attention similarity", "",
              "| Teacher | Source | SSIM | abs SSIM |", "|---|---|---|---|"]  # fmt: skip
    lines += [f"| {r['teacher']} | {r['source']} | {r['interhead_ssim']:.4f} | {r['interhead_abs_ssim'] or 0:.4f} |"
              for r in sim]  # fmt: skip
    lines += ["", "Files: `accuracy.csv`, `accuracy_vs_bits.png`, `attention_similarity.csv|png`, "
              "`attention_maps.png`, `grids/<teacher>_<source>.png`, `speed.md`.", ""]  # fmt: skip
    analysis = OUT / "ANALYSIS.md"
    if analysis.is_file():
        lines += [analysis.read_text()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="ViT mini, W4/A4, seed 0, fewer rows (<= 10 min)")
    ap.add_argument("--teachers", default=None, help="comma list (default: vit_mini,swin_mini; quick: vit_mini)")
    ap.add_argument("--bits", default=None, help=f"comma list (default: {','.join(BITS)}; quick: w4a4)")
    ap.add_argument("--seeds", default=None, help="comma list (default: 0,1,2; quick: 0)")
    ap.add_argument("--full-grid", action="store_true",
                    help="every seed at every bit width for every teacher (~3.5 h); default: the 90-min plan")
    ap.add_argument("--no-speed", action="store_true", help="reuse results/mini/speed.json instead of measuring")
    args = ap.parse_args(argv)
    t0 = time.time()
    quick = args.quick
    EXTRA[:] = QUICK_BUDGET if quick else []
    teachers = (args.teachers or ("vit_mini" if quick else "vit_mini,swin_mini")).split(",")
    bits = (args.bits or ("w4a4" if quick else ",".join(BITS))).split(",")
    seeds = [int(s) for s in (args.seeds or ("0" if quick else "0,1,2")).split(",")]
    methods = [m for m in METHODS if not quick or m[0] in ("noise_kd", "psaq", "mimiq_kd", "mimiq", "real_hsad")]
    for t, b in [(t, b) for t in teachers for b in bits]:  # bad input fails here, before compute
        compose_cfg([f"model={t}", f"bits={b}"])
    (OUT / "grids").mkdir(parents=True, exist_ok=True)
    memo: dict = {}

    records = accuracy_grid(grid_cells(teachers, methods, bits, seeds, args.full_grid), memo)
    sim = attention_similarity(teachers, [s for s in SOURCES if not quick or s != "psaq_v2"], memo, args.full_grid)
    attention_maps("vit_mini", memo, OUT / "attention_maps.png")
    speed_json = OUT / "speed.json"  # --no-speed reuses the last measurement
    if args.no_speed and speed_json.is_file():
        speed_rows, sweep = json.loads(speed_json.read_text())
    elif args.no_speed:
        speed_rows, sweep = [], None
    else:
        speed_rows, sweep = speed(memo, quick), sweep_cost(memo, quick)
        speed_json.write_text(json.dumps([speed_rows, sweep], indent=1))

    stats = summary(records)
    write_csv(records, OUT / "accuracy.csv")
    acc_md = accuracy_markdown(stats, teachers, methods, bits)
    (OUT / "accuracy.md").write_text(acc_md)
    plot_accuracy(stats, teachers, methods, bits, OUT / "accuracy_vs_bits.png")
    write_csv(sim, OUT / "attention_similarity.csv")
    plot_similarity(sim, teachers, OUT / "attention_similarity.png")
    if speed_rows:
        (OUT / "speed.md").write_text(speed_markdown(speed_rows, sweep))
    tgt = targets(stats, sim, speed_rows, sweep, teachers)
    total = time.time() - t0
    runs_s = sum(r.get("time_total_s", 0.0) for r in records)
    (OUT / "README.md").write_text(readme(tgt, acc_md, sim, total, "quick" if quick else "full", runs_s))
    print(acc_md)
    for t, m, ok in tgt:
        print(f"{'MET    ' if ok else 'NOT MET'}  {t}: {m}")
    print(f"bench total: {total:.0f} s ({total / 60:.1f} min) -> {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
