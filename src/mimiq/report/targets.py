"""The mini task's targets (results/mini/README.md): (target, measured, met) rows, from conf/targets/<name>.yaml.

The numbers (thresholds, the headline bits) and which method or generator a claim names live in the targets file;
the pools come from the registry (mimiq.report.methods): "best baseline" = the methods of the file's
`best_baseline_roles`, the upper bound = the methods of role `upper_bound`, `ours` = the one of role `ours`, the
sets that must converge = the generators that optimise pixels toward drawn labels.
"""

from __future__ import annotations

from omegaconf import DictConfig

from mimiq.config import load
from mimiq.report.methods import Generator, Method, ours, with_role
from mimiq.report.stats import Stats, best_baseline, bits_title
from mimiq.synth.invariance import gate_met


def load_targets(name: str = "mini") -> DictConfig:
    """conf/targets/<name>.yaml (read as a file: no run composes it)."""
    return load("targets", name)


def baseline_ids(methods: dict[str, Method], spec: DictConfig) -> list[str]:
    """The methods that compete for "best baseline", in their order."""
    return [m.id for m in with_role(methods, *spec.accuracy.best_baseline_roles)]


def gate_targets(gates: dict, spec: DictConfig) -> list[tuple]:
    """Each teacher instance: top-1 on real test images, clean and under every generator transform."""
    g, out = spec.teacher, []
    for t, rep in gates.items():
        out.append(
            (
                f"{t}: teacher top-1 on real test images >= {g.clean:g} % clean and >= {g.transformed:g} % under "
                "every generator transform",
                f"clean {rep['clean']['top1']:.1f}, "
                + ", ".join(f"{k} {v['top1']:.1f}" for k, v in rep.items() if k != "clean"),
                gate_met(rep, g),
            )
        )
    return out


def quality_targets(quality: dict, spec: DictConfig, generators: dict[str, Generator]) -> list[tuple]:
    """The sets of generators that optimise pixels toward drawn labels converge: the teacher predicts their labels,
    every class, none dominant."""
    s, out = spec.sets, []
    for (t, gen), q in quality.items():
        if gen in generators and generators[gen].converges:
            out.append(
                (
                    f"{t}: {gen} set converges (agreement >= {s.agreement:g} %, every class, no class > "
                    f"{s.max_class_share:g} %)",
                    f"agreement {q['synth_label_agreement']:.1f} %, classes {q['synth_classes_predicted']:.1f}, "
                    f"largest {q['synth_max_class_share']:.1f} % (mean over {q['n']} set(s))",
                    q["synth_label_agreement"] >= s.agreement
                    and q["synth_classes_predicted"] >= s.classes
                    and q["synth_max_class_share"] <= s.max_class_share,
                )
            )
    return out


def accuracy_targets(
    stats: Stats, teacher: str, methods: dict[str, Method], generators: dict[str, Generator], spec: DictConfig
) -> list[tuple]:
    """The paper's accuracy claims on one teacher instance at the headline bits."""
    a, bits, t, out = spec.accuracy, spec.headline, teacher, []
    me = ours(methods)
    name = generators[me.generator].title
    get = lambda m: stats.get((t, m, bits), (float("nan"),))[0]  # noqa: E731
    has = lambda m: (t, m, bits) in stats  # noqa: E731
    floor = methods[a.floor]
    fp, low = stats[(t, "fp", "w32a32")][0], get(floor.id)
    out.append(
        (
            f"{t}: {floor.label[:1].lower()}{floor.label[1:]} {bits_title(bits)} >= {a.floor_gap:g} points below FP",
            f"FP {fp:.2f}, {generators[floor.generator].title} {low:.2f}: {fp - low:.2f} points",
            fp - low >= a.floor_gap,
        )
    )
    best_id = best_baseline(stats, t, bits, baseline_ids(methods, spec))
    if best_id and has(me.id):
        best, mine = get(best_id), get(me.id)
        gap = fp - best  # no gap to close (best >= FP) means the task cannot show the claim: not met
        closed = (mine - best) / gap if gap > 0 else float("nan")
        out.append(
            (
                f"{t}: {name} closes >= {100 * a.closure:g} % of the best baseline's gap to FP",
                f"{name} {mine:.2f}, best baseline {methods[best_id].label} {best:.2f}, FP {fp:.2f}: "
                + (f"{100 * closed:.0f} %" if gap > 0 else "no gap (best baseline >= FP)"),
                gap > 0 and closed >= a.closure,
            )
        )
    uppers = [get(m.id) for m in with_role(methods, "upper_bound") if has(m.id)]
    if uppers and has(me.id):
        out.append(
            (
                f"{t}: {name} within {a.upper_gap:g} points of real-data QAT (best real row)",
                f"{name} {get(me.id):.2f}, real {max(uppers):.2f}",
                get(me.id) >= max(uppers) - a.upper_gap,
            )
        )
    if has(a.without_hsad) and has(me.id):
        out.append(
            (
                f"{t}: HSAD beats KD-only ({name} data)",
                f"HSAD {get(me.id):.2f}, KD {get(a.without_hsad):.2f}",
                get(me.id) > get(a.without_hsad),
            )
        )
    return out


def similarity_targets(
    sim: list[dict], teachers: list[str], methods: dict[str, Method], generators: dict[str, Generator], spec: DictConfig
) -> list[tuple]:
    """`ours`'s sets have heads at least as alike as the `at_least` generators' sets, and more than the `below`."""
    mine, s = ours(methods).generator, spec.similarity
    title = lambda names: " and ".join(generators[n].title for n in names)  # noqa: E731
    out = []
    for t, key in [(t, k) for t in teachers for k in ("interhead_abs_ssim", "interhead_ssim")]:
        v = {r["source"]: r[key] for r in sim if r["teacher"] == t}
        if {mine, *s.at_least, *s.below} <= set(v):
            what = "|SSIM| (the loss's measure)" if key == "interhead_abs_ssim" else "signed SSIM"
            out.append(
                (
                    f"{t}: {generators[mine].title} inter-head {what} >= {title(s.at_least)}; {title(s.below)} "
                    f"lower than {generators[mine].title}",
                    ", ".join(f"{k} {x:.3f}" for k, x in v.items()),
                    all(v[mine] >= v[g] for g in s.at_least) and all(v[g] < v[mine] for g in s.below),
                )
            )
    return out


def targets(
    stats: Stats,
    sim: list[dict],
    teachers: list[str],
    methods: dict[str, Method],
    generators: dict[str, Generator],
    spec: DictConfig,
    quality: dict | None = None,
    gates: dict | None = None,
    pair: dict | None = None,
) -> list[tuple]:
    """(target, measured, met) rows of results/mini/README.md, in its order. `spec`: load_targets()."""
    out = gate_targets(gates or {}, spec) + quality_targets(quality or {}, spec, generators)
    for t in teachers:
        out += accuracy_targets(stats, t, methods, generators, spec)
    if pair and pair["pairs"]:
        lo, hi = pair["ci"]
        name = generators[ours(methods).generator].title
        out.append(
            (
                f"{name} − best baseline, paired over (teacher instance, seed): 95 % interval above "
                f"{spec.paired.ci_low:g}",
                f"{pair['mean']:+.2f} points, 95 % CI [{lo:+.2f}, {hi:+.2f}] over {len(pair['pairs'])} pairs",
                lo > spec.paired.ci_low,
            )
        )
    return out + similarity_targets(sim, teachers, methods, generators, spec)
