"""scripts/speed.py and scripts/gpu_speed.py: the report's verdicts and layout, and the GPU script's CPU smoke."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import gpu_speed  # noqa: E402
import speed  # noqa: E402


def test_verdicts():
    assert speed._verdict(1.3, "<=", 1.3) == "met" and speed._verdict(1.31, "<=", 1.3) == "**not met**"
    assert speed._verdict(2.0, ">=", 2) == "met" and speed._verdict(1.9, ">=", 2) == "**not met**"


def test_speed_markdown_states_every_target():
    ops = ([("aten::mm", 10.0, 50.0, 25)], 20.0)
    steps = {
        "med": {"gen": 1.2, "bare": 1.0, "qat": 0.25, "fp_fb": 0.2, "finetune": 0.15},
        "wall": 9.0,
        "prof": {"gen": ops, "qat": ops},
        "qat_batch": 16,
    }
    old_new = {
        "med": {("gen", "old"): 1.5, ("gen", "new"): 1.2, ("qat", "old"): 0.6, ("qat", "new"): 0.25},
        "arch": {"depth": 4},
        "origin": {"old": {"own_depth": 6}, "new": {"own_depth": 4}},
    }
    sweep = {
        "wall": 30.0,
        "gen": 10.0,
        "qat": 15.0,
        "budget": ["qat.epochs=1"],
        "extra": [],
        "teacher": "t",
        "reused": [False, True, True],
    }
    md = speed.markdown(True, steps, old_new, sweep, 60.0)
    assert "| 1.20 | <= 1.3 | met |" in md  # generation / bare
    assert "| 1.25 | <= 1.3 | met |" in md  # QAT / (FP fwd+bwd + teacher fwd)
    assert "| 1.67 | <= 1.6 | **not met** |" in md  # QAT / fine-tuning
    assert "| 1.20 | <= 1.1 | **not met** |" in md  # sweep 30 / 25
    assert "| 1.25 | >= 2 | **not met** |" in md and "| 2.40 | >= 2 | met |" in md  # speed-ups gen, QAT
    assert (
        "4c262bf's own had depth 6" in md
        and "not measured" in md
        and "scripts/gpu_speed.py" in md
        and "`aten::mm`" in md
    )


def test_gpu_speed_smoke_on_cpu():
    md = gpu_speed.main(["--smoke", "--model", "vit_test", "--steps", "1", "--warmup", "0"])
    rows = [line for line in md.splitlines() if line.startswith(("| fp32 |", "| bf16 |"))]
    assert len(rows) == 2 and not any("failed" in r for r in rows)
    assert all(float(c) > 0 for r in rows for c in r.strip("|").split("|")[2:7])
