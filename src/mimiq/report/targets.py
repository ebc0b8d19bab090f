"""The mini task's targets (results/mini/README.md): (target, measured, met) rows, from conf/targets/<name>.yaml.

The numbers (thresholds, the headline bits) and which method or generator a claim names live in the targets file;
the pools come from the registry (mimiq.report.methods): "best baseline" = the methods of the file's
`best_baseline_roles`, the upper bound = the methods of role `upper_bound`, `ours` = the one of role `ours`, the
sets that must converge = the generators that optimise pixels toward drawn labels.

Two comparisons with the best baseline: its QAT row (the method with the highest mean QAT top-1), and, strict, its
best student: each baseline's QAT row and its PTQ row ("<id>.ptq": the same students right after calibration, mean
of `ptq_top1`) compete, so a baseline whose QAT falls below its own calibration is compared at its better student.
"""

from __future__ import annotations

from omegaconf import DictConfig

from mimiq.config import load
from mimiq.report.methods import Generator, Method, ours, with_role
from mimiq.report.stats import Stats, best_baseline, bits_title, fmt_cell, paired
from mimiq.synth.invariance import gate_met


def load_targets(name: str = "mini") -> DictConfig:
    """conf/targets/<name>.yaml (read as a file: no run composes it)."""
    return load("targets", name)


def baseline_ids(methods: dict[str, Method], spec: DictConfig) -> list[str]:
    """The methods that compete for "best baseline", in their order."""
    return [m.id for m in with_role(methods, *spec.accuracy.best_baseline_roles)]


PTQ = ".ptq"  # a baseline's PTQ students as a row of their own: "<method id>.ptq"


def student_ids(methods: dict[str, Method], spec: DictConfig) -> list[str]:
    """The students that compete for "best baseline student": each baseline's QAT row, then its PTQ row (ties go to
    the QAT row), in the baselines' order."""
    return [s for b in baseline_ids(methods, spec) for s in (b, b + PTQ)]


def student_stats(stats: Stats, ptq: Stats) -> Stats:
    """The QAT cells `stats` and the PTQ cells `ptq` (stats.summary(records, "ptq_top1")) as rows "<id>.ptq"."""
    return {**stats, **{(t, m + PTQ, b): v for (t, m, b), v in ptq.items()}}


def student_label(methods: dict[str, Method], sid: str) -> str:
    """'psaq.ptq' -> 'PSAQ-ViT PTQ', 'psaq' -> 'PSAQ-ViT QAT'."""
    return f"{methods[sid.removesuffix(PTQ)].label} {'PTQ' if sid.endswith(PTQ) else 'QAT'}"


def strict_paired(
    records: list[dict], stats: Stats, ptq: Stats, teachers: list[str], methods: dict[str, Method], spec: DictConfig
) -> dict:
    """`ours` − best baseline student per (teacher instance, seed) at the headline bits (stats.paired): the student
    (a baseline's QAT or PTQ row, student_ids) chosen per teacher instance on means, each seed paired with that
    student's value on the same seed. `stats`, `ptq`: QAT and PTQ summaries of `records`. Returns paired's dict;
    a pair's baseline is a student id ("psaq" or "psaq.ptq")."""
    base = set(baseline_ids(methods, spec))
    ptq_rows = [
        {**r, "method": r["method"] + PTQ, "top1": r["ptq_top1"]}
        for r in records
        if r["method"] in base and r.get("ptq_top1") is not None
    ]
    sids = student_ids(methods, spec)
    return paired(records + ptq_rows, student_stats(stats, ptq), teachers, ours(methods).id, sids, spec.headline)


def set_name(m: Method) -> str:
    """The name of a method's synthetic sets: its generator's, with the generator values the method sets itself
    ("mimiq[w_interhead=0.0]": other images than the generator's own, so other sets to measure)."""
    own = [f"{k.removeprefix('generator.')}={v}" for k, v in m.settings.items() if k.startswith("generator.")]
    return f"{m.generator}[{','.join(own)}]" if own else m.generator


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


def quality_targets(
    quality: dict, spec: DictConfig, generators: dict[str, Generator], teachers: list[str] = ()
) -> list[tuple]:
    """The sets of generators that optimise pixels toward drawn labels converge: the teacher predicts their labels,
    every class, none dominant. `quality`: (teacher, set name (set_name)) -> mean measures (stats.set_quality_table);
    every teacher instance of `teachers` gets a row for every such set measured on any instance (none measured:
    not met)."""
    s, out = spec.sets, []
    gen_of = lambda name: generators.get(name.partition("[")[0])  # noqa: E731 ("mimiq[w_interhead=0.0]" -> mimiq)
    names = [g for g in dict.fromkeys(g for _, g in quality) if gen_of(g) and gen_of(g).converges]
    for t in dict.fromkeys([*teachers, *(t for t, _ in quality)]):
        for gen in names:
            q = quality.get((t, gen))
            out.append(
                (
                    f"{t}: {gen} set converges (agreement >= {s.agreement:g} %, every class, no class > "
                    f"{s.max_class_share:g} %)",
                    f"agreement {q['synth_label_agreement']:.1f} %, classes {q['synth_classes_predicted']:.1f}, "
                    f"largest {q['synth_max_class_share']:.1f} % (mean over {q['n']} set(s))"
                    if q
                    else "no set measured",
                    q is not None
                    and q["synth_label_agreement"] >= s.agreement
                    and q["synth_classes_predicted"] >= s.classes
                    and q["synth_max_class_share"] <= s.max_class_share,
                )
            )
    return out


def closure_row(
    t: str, name: str, mine: float, fp: float, best: float, who: str, what: str, least: float, note: str = ""
) -> tuple:
    """`ours` (top-1 `mine`, %) closes >= `least` (fraction) of the gap FP − `best` (%); `what` names the comparison
    ("best baseline"), `who` the row that gave `best`, `note` is appended to the target. No gap (best >= FP): the
    task cannot show the claim, not met."""
    gap = fp - best
    closed = (mine - best) / gap if gap > 0 else float("nan")
    return (
        f"{t}: {name} closes >= {100 * least:g} % of the {what}'s gap to FP{note}",
        f"{name} {mine:.2f}, {what} {who} {best:.2f}, FP {fp:.2f}: "
        + (f"{100 * closed:.0f} %" if gap > 0 else f"no gap ({what} >= FP)"),
        gap > 0 and closed >= least,
    )


def accuracy_targets(
    stats: Stats,
    teacher: str,
    methods: dict[str, Method],
    generators: dict[str, Generator],
    spec: DictConfig,
    ptq: Stats | None = None,
) -> list[tuple]:
    """The paper's accuracy claims on one teacher instance at the headline bits. `stats`, `ptq`: mean QAT and PTQ
    top-1 (%) per (teacher, method, bits) (stats.summary); without `ptq` the rows that need it are left out."""
    a, bits, t, out, ptq = spec.accuracy, spec.headline, teacher, [], ptq or {}
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
        out.append(
            closure_row(t, name, get(me.id), fp, get(best_id), methods[best_id].label, "best baseline", a.closure)
        )
    students = student_stats(stats, ptq)
    best_sid = best_baseline(students, t, bits, student_ids(methods, spec)) if ptq else None
    if best_sid and has(me.id):
        best, who = students[(t, best_sid, bits)][0], student_label(methods, best_sid)
        strict = " (strict: the higher of each baseline's mean QAT and PTQ top-1)"
        out.append(closure_row(t, name, get(me.id), fp, best, who, "best baseline student", a.closure, strict))
    if (t, me.id, bits) in ptq and has(me.id):
        out.append(
            (
                f"{t}: {name} QAT above its own PTQ (mean top-1)",
                f"QAT {get(me.id):.2f}, PTQ {ptq[(t, me.id, bits)][0]:.2f}",
                get(me.id) > ptq[(t, me.id, bits)][0],
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
    if a.get("without_interhead") and has(a.without_interhead) and has(me.id):
        (m1, s1, n1), (m2, s2, n2) = stats[(t, me.id, bits)], stats[(t, a.without_interhead, bits)]
        abl, n = methods[a.without_interhead].label, min(n1, n2)
        out.append(
            (
                f"{t}: {name} beats {abl} by more than the spread over seeds (mean difference > the larger std)",
                f"{name} {fmt_cell((m1, s1, n1))}, {abl} {fmt_cell((m2, s2, n2))}: "
                + (
                    f"{m1 - m2:+.2f} points, spread {max(s1, s2):.2f}"
                    if n >= a.min_seeds
                    else f"spread not measured (n={n})"
                ),
                n >= a.min_seeds and m1 - m2 > max(s1, s2),
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


def paired_row(pair: dict, name: str, what: str, ci_low: float) -> tuple:
    """The paired comparison (stats.paired's dict) as a target row: its 95 % t-interval above `ci_low` (points)."""
    lo, hi = pair["ci"]
    return (
        f"{name} − {what}, paired over (teacher instance, seed): 95 % interval above {ci_low:g}",
        f"{pair['mean']:+.2f} points, 95 % CI [{lo:+.2f}, {hi:+.2f}] over {len(pair['pairs'])} pairs",
        lo > ci_low,
    )


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
    ptq: Stats | None = None,
    strict: dict | None = None,
) -> list[tuple]:
    """(target, measured, met) rows of results/mini/README.md, in its order. `spec`: load_targets(); `stats`,
    `ptq`: QAT and PTQ summaries (stats.summary); `pair`, `strict`: ours − best baseline QAT row (stats.paired) and
    − best baseline student (strict_paired)."""
    out = gate_targets(gates or {}, spec) + quality_targets(quality or {}, spec, generators, teachers)
    for t in teachers:
        out += accuracy_targets(stats, t, methods, generators, spec, ptq)
    name = generators[ours(methods).generator].title
    if pair and pair["pairs"]:
        out.append(paired_row(pair, name, "best baseline", spec.paired.ci_low))
    if strict and strict["pairs"]:
        out.append(paired_row(strict, name, "best baseline student (QAT or PTQ, per teacher)", spec.paired.ci_low))
    return out + similarity_targets(sim, teachers, methods, generators, spec)
