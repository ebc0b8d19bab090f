"""The speed tool (`mimiq.perf`, scripts/speed.py): it times the functions the loops call; the report's verdicts."""

import json
import runpy
import sys

import pytest
import torch
from conftest import ROOT

from mimiq.config import compose
from mimiq.distill import qat as distill_qat
from mimiq.perf import report
from mimiq.perf import steps as perf_steps
from mimiq.perf.tool import Options
from mimiq.perf.tool import run as run_tool
from mimiq.synth import mimiq as synth_mimiq
from mimiq.synth import psaq as synth_psaq
from mimiq.synth.core import Curves, build_context

TINY = ["generator.batch_size=4", "generator.num_images=4", "generator.iterations=2", "qat.batch_size=4"]
TINY += ["qat.calib_size=4", "qat.epochs=1"]


def _counting(monkeypatch, module, name: str) -> list[int]:
    """Replaces `module.name` by a wrapper that counts its calls (and calls the original)."""
    original, calls = getattr(module, name), [0]

    def wrapper(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return calls


@pytest.fixture(scope="module")
def models():
    cfg = compose(["debug=tiny", "model=vit_test", *TINY])
    return perf_steps.build_models(cfg, torch.device("cpu"))


@pytest.mark.parametrize(("module", "step"), [(synth_mimiq, "mimiq_step"), (synth_psaq, "psaq_step")])
def test_the_loop_and_the_speed_tool_call_the_same_generation_step(models, monkeypatch, module, step):
    calls = _counting(monkeypatch, module, step)
    cfg = compose(["debug=tiny", "model=vit_test", f"generator={module.__name__.rsplit('.', 1)[1]}", *TINY])
    g = cfg.generator
    ctx = build_context(models.teacher, cfg, models.device, models.data_config)
    batch = getattr(module, step.replace("_step", "_batch"))
    with torch.enable_grad():
        batch(ctx, slice(0, 4), torch.Generator().manual_seed(0), Curves(_NoBar(), 1))
    assert calls[0] == g.iterations  # the loop: one call per iteration
    perf_steps.generation(models, g, 4, compile=False)()
    assert calls[0] == g.iterations + 1  # the speed tool's step: the same (patched) function object


def test_the_loop_and_the_speed_tool_call_the_same_qat_step(models, monkeypatch, tmp_path):
    calls = _counting(monkeypatch, distill_qat, "qat_step")
    perf_steps.qat(models, compile=False)()
    perf_steps.qat(models, compile=False, fp=True)()
    assert calls[0] == 2
    from mimiq.synth.generate import SyntheticSet
    from mimiq.task.classification import Classification

    cfg = models.cfg
    synth = SyntheticSet(models.x.clone(), models.y.clone(), {})
    student = perf_steps.copy.deepcopy(models.student)
    distill_qat.train_qat(student, models.teacher, synth, Classification(cfg), cfg, models.device, tmp_path)
    assert calls[0] == 2 + distill_qat.qat_steps(cfg) == 3


class _NoBar:
    def update(self, *_):
        pass

    def set_postfix(self, *_, **__):
        pass


def test_verdicts():
    assert report.verdict(1.3, "<=", 1.3) == "met" and report.verdict(1.31, "<=", 1.3) == "**not met**"
    assert report.verdict(1.5, ">=", 1.5) == "met" and report.verdict(1.49, ">=", 1.5) == "**not met**"


def _steps(median_ms: dict[str, tuple[float, float]]) -> dict:
    """Stored step medians from {step: (eager ms, compiled ms)} at fp32, every warm-up 30 s."""
    med = {f"{k}|fp32|{m}": v[i] / 1e3 for k, v in median_ms.items() for i, m in enumerate(("eager", "compiled"))}
    return {"median_s": med, "warmup_s": {k: 30.0 for k in med}}


def test_ratios_and_break_even_from_the_step_medians():
    s = _steps(
        {
            "gen:mimiq": (1200, 800),
            "bare": (1000, 700),
            "qat": (260, 200),
            "fp_passes": (200, 180),
            "finetune": (150, 140),
        }
    )
    r = report.ratios(s)
    assert r["gen_vs_bare"]["eager"] == pytest.approx(1.2) and r["gen_vs_bare"]["compiled"] == pytest.approx(8 / 7)
    assert r["gen_compile"]["eager"] == pytest.approx(1.5) and r["qat_compile"]["eager"] == pytest.approx(1.3)
    assert r["qat_vs_fp"]["eager"] == pytest.approx(1.3) and r["qat_vs_finetune"]["eager"] == pytest.approx(26 / 15)
    assert report.break_even(s, "gen:mimiq") == pytest.approx(30 / 0.4)  # warm-up 30 s, 0.4 s saved per step
    rows = "\n".join(report.targets_table({"steps": s}))
    assert "| 1.50 | – | >= 1.5 | met |" in rows  # generation compile speed-up, exactly at the target
    assert "| 1.73 | 1.43 | <= 1.6 | **not met** | met |" in rows  # QAT / fine-tuning, eager and compiled


def test_a_tiny_speed_run_times_the_real_steps_and_writes_the_report(monkeypatch, tmp_path):
    calls = {n: _counting(monkeypatch, m, n) for m, n in ((synth_mimiq, "mimiq_step"), (distill_qat, "qat_step"))}
    out = tmp_path / "speed.md"
    opts = Options(compile="off", reps=2, generators="mimiq", model="vit_test", out=out, overrides=TINY)
    text = run_tool(opts)
    assert calls["mimiq_step"][0] == 1 + 2  # the first call (warm-up), then the two timed ones
    assert calls["qat_step"][0] == 2 * 3  # the QAT step and the FP passes (qat_step without its step)
    assert out.read_text() == text and "## Steps, eager and compiled (cpu)" in text
    stored = json.loads(out.with_suffix(".json").read_text())
    assert set(stored["steps"]["median_s"]) == {f"{s}|fp32|eager" for s in ("gen:mimiq", *perf_steps_names())}
    assert "Not measured yet: `python scripts/speed.py --sweep`" in text and "4c262bf" in text


def perf_steps_names():
    from mimiq.perf.suite import STEP_NAMES

    return STEP_NAMES


def test_cuda_without_a_gpu_is_skipped_with_a_message(monkeypatch, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the skip path does not apply")
    monkeypatch.setattr(sys, "argv", ["speed.py", "--device", "cuda"])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(ROOT / "scripts" / "speed.py"), run_name="__main__")
    assert done.value.code == 0 and "CUDA is not available" in capsys.readouterr().err


def test_bad_options_fail_before_anything_is_built():
    for bad in (Options(compile="maybe"), Options(precision="fp16"), Options(reps=0), Options(device="tpu")):
        with pytest.raises(ValueError):
            run_tool(bad)
