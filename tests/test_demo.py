"""scripts/demo.py (`make demo`): the table it prints after its two runs."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import demo  # noqa: E402


def _m(top1, ptq, agree=None):
    return {
        "model": "vit_mini",
        "w_bits": 4,
        "a_bits": 4,
        "fp_top1": 90.8,
        "top1": top1,
        "ptq_top1": ptq,
        "synth_label_agreement": agree,
    }


def test_demo_table_shows_fp_both_rows_and_the_difference():
    lines = demo.table({"mimiq": _m(85.5, 70.25, 91.0), "noise_kd": _m(60.0, 40.0, 10.5)}).splitlines()
    assert lines[0].startswith("| vit_mini W4/A4 |") and lines[2] == "| FP teacher | 90.80 | | |"
    assert lines[3] == "| Noise + KD | 60.00 | 40.00 | 10.5 % |"
    assert lines[4] == "| MimiQ (generation + HSAD) | 85.50 | 70.25 | 91.0 % |"
    assert lines[5] == "| MimiQ − noise + KD | +25.50 | +30.25 | |"
