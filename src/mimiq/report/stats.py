"""Statistics over runs: mean and sample std per cell, the paired ours − best-baseline t-interval, spreads.

A bench record is one run: `method` (a conf/method/ id, or "fp"), `teacher` (instance), `w_bits`, `a_bits`, `seed`,
`top1`, `ptq_top1`, ... (mimiq.report.bench accuracy_grid). `summarize` is generic (any row/column keys): the
paper tables use it on metrics.json records. Which rows are baselines, and at which bits the comparisons are made,
come from conf/method/ (roles) and conf/targets/ (mimiq.report.targets).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence

Stats = dict[tuple[str, str, str], tuple[float, float, int]]  # (teacher, method, bits tag) -> (mean, std, n)


def bits_tag(w: int, a: int) -> str:
    return f"w{w}a{a}"


def bits_title(bits: str) -> str:
    """'w4a4' -> 'W4/A4'."""
    return bits.upper().replace("A", "/A")


def summary(records: list[dict], key: str = "top1") -> Stats:
    """(teacher, method, bits tag) -> (mean, sample std (0 for one run), runs) of `key` (top1 or ptq_top1)."""
    groups: dict[tuple, list[float]] = {}
    for r in records:
        if r.get(key) is not None:
            groups.setdefault((r["teacher"], r["method"], bits_tag(r["w_bits"], r["a_bits"])), []).append(r[key])
    return {k: (statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0, len(v)) for k, v in groups.items()}


def fmt_cell(c: tuple | None) -> str:
    """'82.00 ± 2.00 (n=3)', '82.00 (n=1)' (one run: no spread to show) or '–'."""
    if not c:
        return "–"
    return f"{c[0]:.2f} ± {c[1]:.2f} (n={c[2]})" if c[2] > 1 else f"{c[0]:.2f} (n=1)"


def best_baseline(stats: Stats, teacher: str, bits: str, baselines: Sequence[str]) -> str | None:
    """The baseline row (of the ids `baselines`, ties to the first) with the highest mean on this teacher instance
    at `bits` (chosen once, not per seed)."""
    return max(
        (b for b in baselines if (teacher, b, bits) in stats), key=lambda b: stats[(teacher, b, bits)][0], default=None
    )


def paired(
    records: list[dict], stats: Stats, teachers: list[str], ours: str, baselines: Sequence[str], bits: str
) -> dict:
    """`ours` − best baseline per (teacher instance, seed) at `bits`: the differences, their mean and 95 %
    t-interval. `ours`: a method id; `baselines`: the ids that compete for best baseline (best_baseline), per
    teacher among those run on every seed `ours` has there (a row run on its first seed only cannot be paired on the
    others, so it does not become the reference of the pairs)."""
    from scipy import stats as st

    by = {
        (r["teacher"], r["method"], r["seed"]): r["top1"] for r in records if bits_tag(r["w_bits"], r["a_bits"]) == bits
    }
    seeds: dict[tuple[str, str], set] = {}  # (teacher, method) -> the seeds it ran
    for t, m, seed in by:
        seeds.setdefault((t, m), set()).add(seed)
    diffs = []
    for t in teachers:
        mine = seeds.get((t, ours), set())
        b = best_baseline(stats, t, bits, [c for c in baselines if mine <= seeds.get((t, c), set())])
        diffs += [
            (t, seed, b, by[(t, ours, seed)] - by[(t, b, seed)])
            for (tt, m, seed) in by
            if tt == t and m == ours and (t, b, seed) in by
        ]
    d = [x[3] for x in diffs]
    if not d:
        return {"pairs": [], "mean": float("nan"), "ci": (float("nan"), float("nan"))}
    mean = statistics.mean(d)
    half = st.t.ppf(0.975, len(d) - 1) * statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else float("inf")
    return {"pairs": diffs, "mean": mean, "ci": (mean - half, mean + half)}


def spread(stats: Stats, records: list[dict], teachers: list[str], methods: Sequence, bits: str) -> list[dict]:
    """Per method (objects with `id` and `label`): the std over seeds (first instance, whose seeds regenerate the
    set) and over teacher instances (each instance's seed-0 run) at `bits`."""
    rows = []
    same_model = [t for t in teachers if t.partition(".t")[0] == teachers[0].partition(".t")[0]]
    at_bits = [r for r in records if bits_tag(r["w_bits"], r["a_bits"]) == bits and r["seed"] == 0]
    for m in methods:
        seeds = stats.get((teachers[0], m.id, bits))
        first = [r["top1"] for t in same_model for r in at_bits if r["teacher"] == t and r["method"] == m.id]
        rows.append(
            {
                "method": m.label,
                "seed_std": seeds[1] if seeds and seeds[2] > 1 else None,
                "seed_n": seeds[2] if seeds else 0,
                "teacher_n": len(first),
                "teacher_std": statistics.stdev(first) if len(first) > 1 else None,
            }
        )
    return rows


SET_MEASURES = ("synth_label_agreement", "synth_class_entropy", "synth_max_class_share", "synth_classes_predicted")


def set_quality_table(records: list[dict]) -> dict[tuple[str, str], dict]:
    """(teacher, generator) -> mean of the set measures over that teacher's sets (one per seed), and n."""
    sets: dict[tuple, dict] = {}
    for r in records:
        if r["method"] != "fp" and r.get("synth_label_agreement") is not None:
            sets[(r["teacher"], r["generator"], r["seed"])] = r  # one set per (teacher, generator, seed)
    out: dict[tuple, list] = {}
    for (t, g, _), r in sets.items():
        out.setdefault((t, g), []).append(r)
    return {k: {**{q: statistics.mean(r[q] for r in v) for q in SET_MEASURES}, "n": len(v)} for k, v in out.items()}


def summarize(records: Iterable[dict], row_keys: Sequence[str], col_keys: Sequence[str], metric: str) -> list[dict]:
    """Mean, sample std (None for one run) and count of `metric` per (row, column) cell.

    Returns one dict per cell: the row and column key values, then n, mean, std, seeds (sorted, ","-joined).
    Records without the metric or a key are skipped.
    """
    groups: dict[tuple, list[dict]] = {}
    for rec in records:
        if rec.get(metric) is None or any(k not in rec for k in (*row_keys, *col_keys)):
            continue
        groups.setdefault(tuple(rec[k] for k in (*row_keys, *col_keys)), []).append(rec)
    cells = []
    for key, recs in groups.items():
        values = [float(r[metric]) for r in recs]
        seeds = sorted({str(r.get("seed")) for r in recs})
        cells.append(
            {
                **dict(zip((*row_keys, *col_keys), key, strict=True)),
                "n": len(values),
                "mean": statistics.fmean(values),
                "std": statistics.stdev(values) if len(values) > 1 else None,
                "seeds": ",".join(seeds),
            }
        )
    return cells
