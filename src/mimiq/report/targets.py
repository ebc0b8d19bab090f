"""The mini benchmark's targets (results/mini/README.md): (target, measured, met) rows at W4/A4."""

from __future__ import annotations

from mimiq.report.stats import HEADLINE, Stats, best_baseline
from mimiq.synth.invariance import INVARIANCE_GATE


def gate_targets(gates: dict) -> list[tuple]:
    """Each teacher instance: top-1 on real test images, clean and under every generator transform."""
    out = []
    for t, rep in gates.items():
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
    return out


def quality_targets(quality: dict) -> list[tuple]:
    """The optimised sets (MimiQ, PSAQ-ViT) converge: the teacher predicts their labels, every class, none dominant."""
    out = []
    for (t, gen), q in quality.items():
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
    return out


def accuracy_targets(stats: Stats, teacher: str, labels: dict[str, str]) -> list[tuple]:
    """The paper's accuracy claims on one teacher instance at W4/A4; `labels`: method id -> row label."""
    t, out = teacher, []
    get = lambda m: stats.get((t, m, HEADLINE), (float("nan"),))[0]  # noqa: E731
    fp, noise = stats[(t, "fp", "w32a32")][0], get("noise_kd")
    out.append(
        (
            f"{t}: noise + KD W4/A4 >= 15 points below FP",
            f"FP {fp:.2f}, noise {noise:.2f}: {fp - noise:.2f} points",
            fp - noise >= 15,
        )
    )
    has = lambda m: (t, m, HEADLINE) in stats  # noqa: E731
    best_id = best_baseline(stats, t)
    if best_id and has("mimiq"):
        best, mimiq = get(best_id), get("mimiq")
        gap = fp - best  # no gap to close (best >= FP) means the task cannot show the claim: not met
        closed = (mimiq - best) / gap if gap > 0 else float("nan")
        out.append(
            (
                f"{t}: MimiQ closes >= 70 % of the best baseline's gap to FP",
                f"MimiQ {mimiq:.2f}, best baseline {labels[best_id]} {best:.2f}, FP {fp:.2f}: "
                + (f"{100 * closed:.0f} %" if gap > 0 else "no gap (best baseline >= FP)"),
                gap > 0 and closed >= 0.7,
            )
        )
    reals = [get(m) for m in ("real_hsad", "real_kd") if has(m)]
    if reals and has("mimiq"):
        out.append(
            (
                f"{t}: MimiQ within 2 points of real-data QAT (best real row)",
                f"MimiQ {get('mimiq'):.2f}, real {max(reals):.2f}",
                get("mimiq") >= max(reals) - 2,
            )
        )
    if has("mimiq_kd") and has("mimiq"):
        out.append(
            (
                f"{t}: HSAD beats KD-only (MimiQ data)",
                f"HSAD {get('mimiq'):.2f}, KD {get('mimiq_kd'):.2f}",
                get("mimiq") > get("mimiq_kd"),
            )
        )
    return out


def similarity_targets(sim: list[dict], teachers: list[str]) -> list[tuple]:
    """MimiQ's sets have heads at least as alike as real images', and more than noise's and PSAQ-ViT's."""
    out = []
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
    return out


def targets(
    stats: Stats,
    sim: list[dict],
    teachers: list[str],
    labels: dict[str, str],
    quality: dict | None = None,
    gates: dict | None = None,
    pair: dict | None = None,
) -> list[tuple]:
    """(target, measured, met) rows of results/mini/README.md, in its order; W4/A4."""
    out = gate_targets(gates or {}) + quality_targets(quality or {})
    for t in teachers:
        out += accuracy_targets(stats, t, labels)
    if pair and pair["pairs"]:
        lo, hi = pair["ci"]
        out.append(
            (
                "MimiQ − best baseline, paired over (teacher instance, seed): 95 % interval above 0",
                f"{pair['mean']:+.2f} points, 95 % CI [{lo:+.2f}, {hi:+.2f}] over {len(pair['pairs'])} pairs",
                lo > 0,
            )
        )
    return out + similarity_targets(sim, teachers)
