"""`make demo`'s table: FP, noise + KD, PSAQ-ViT + KD and MimiQ on one teacher, and MimiQ's closure over PSAQ-ViT.

The closure counts what a user would pick from PSAQ-ViT: its better student, calibration only (PTQ) or after QAT,

    closure = (MimiQ's QAT top-1 − max(PSAQ-ViT PTQ, PSAQ-ViT QAT)) / (FP − that max)

the share of the gap to FP that MimiQ closes over the best PSAQ-ViT student (negative: MimiQ is below it).
"""

from __future__ import annotations

DEMO_METHODS = ("mimiq", "psaq", "noise_kd")  # conf/method/ ids, in the order the demo runs them
TABLE_ORDER = ("noise_kd", "psaq", "mimiq")  # rows under the FP teacher
BASELINE, OURS = "psaq", "mimiq"


def closure(fp: float, baseline: float, ours: float) -> float | None:
    """(ours − baseline) / (fp − baseline) in %; None when the baseline is not below FP (no gap to close)."""
    gap = fp - baseline
    return None if gap <= 0 else 100.0 * (ours - baseline) / gap


def demo_table(runs: dict[str, dict], labels: dict[str, str]) -> str:
    """Markdown table of the demo's runs and a closure line.

    runs: method id -> its metrics.json (`model`, `w_bits`, `a_bits`, `fp_top1`, `top1` (final QAT epoch),
    `ptq_top1`, `synth_label_agreement`), for every id of TABLE_ORDER; labels: method id -> row label.
    """
    missing = [m for m in TABLE_ORDER if m not in runs]
    if missing:
        raise KeyError(f"demo table: no run of {', '.join(missing)}")
    ours, base = runs[OURS], runs[BASELINE]
    fp = ours["fp_top1"]
    lines = [
        f"| {ours['model']} W{ours['w_bits']}/A{ours['a_bits']} | top-1 after QAT (%) | PTQ top-1 (%) "
        "| synthetic-set label agreement (%) |",
        "|---|---|---|---|",
        f"| FP teacher | {fp:.2f} | | |",
    ]
    for m in TABLE_ORDER:
        r = runs[m]
        agree = r.get("synth_label_agreement")
        lines.append(
            f"| {labels[m]} | {r['top1']:.2f} | {r['ptq_top1']:.2f} | {'' if agree is None else f'{agree:.1f}'} |"
        )
    best_kind = "PTQ" if base["ptq_top1"] > base["top1"] else "QAT"
    best = max(base["ptq_top1"], base["top1"])
    c = closure(fp, best, ours["top1"])
    value = (
        f"{c:.1f} % = ({ours['top1']:.2f} − {best:.2f}) / ({fp:.2f} − {best:.2f}) of the gap to FP"
        if c is not None
        else "undefined (that student is not below FP)"
    )
    lines += [
        "",
        f"Closure of {labels[OURS]} over {labels[BASELINE]}'s best student (its {best_kind}, {best:.2f} %): {value}.",
    ]
    return "\n".join(lines)
