"""Teacher training smoke run, cache reuse keyed by architecture, resume after a kill; train.py end to end."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mimiq.models.teacher as teacher_mod
from mimiq.models.teacher import RandomRoll, load_or_train_teacher, teacher_dir

ROOT = Path(__file__).resolve().parents[1]


def test_teacher_trains_caches_and_reuses(tiny_cfg):
    cfg = tiny_cfg("teacher.epochs=2")
    model, info = load_or_train_teacher(cfg, torch.device("cpu"))
    assert info["source"] == "trained" and 0 <= info["fp_top1"] <= 100
    assert (teacher_dir(cfg) / "teacher.pt").is_file() and not (teacher_dir(cfg) / "partial.pt").exists()
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    again, info2 = load_or_train_teacher(cfg, torch.device("cpu"))
    assert info2["source"] == "cache"
    for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert teacher_dir(tiny_cfg("teacher.epochs=2", "model.arch.depth=1")) != teacher_dir(cfg)
    assert teacher_dir(tiny_cfg("teacher.epochs=2", "seed=5")) == teacher_dir(cfg)  # run seed is not the teacher's


def test_teacher_training_resumes_after_kill(tiny_cfg, monkeypatch):
    full_cfg = tiny_cfg("teacher.epochs=2", "teacher.seed=3")
    full, _ = load_or_train_teacher(full_cfg, torch.device("cpu"))
    cfg = tiny_cfg("teacher.epochs=2", "teacher.seed=3", "data.seed=1234", "model.arch.mlp_ratio=2.0001")
    # a different cache key (mlp_ratio rounds to the same hidden size), so this run trains from scratch
    real_save, calls = teacher_mod.atomic_torch_save, []

    def dying_save(obj, path):
        real_save(obj, path)
        calls.append(path)
        if len(calls) == 1:
            raise KeyboardInterrupt("killed after epoch 1")

    monkeypatch.setattr(teacher_mod, "atomic_torch_save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        load_or_train_teacher(cfg, torch.device("cpu"))
    assert (teacher_dir(cfg) / "partial.pt").is_file()
    monkeypatch.setattr(teacher_mod, "atomic_torch_save", real_save)
    resumed, _ = load_or_train_teacher(cfg, torch.device("cpu"))
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def _train_py(tmp_path, cache_dir, *overrides, sweep: bool = False):
    """`train.py debug=tiny` into tmp_path; sweep: `train.py -m` (basic launcher) with tmp_path as the sweep dir."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    out_dir = f"hydra.sweep.dir={tmp_path}" if sweep else f"hydra.run.dir={tmp_path}"
    cmd = [
        sys.executable,
        str(ROOT / "train.py"),
        *(["-m"] if sweep else []),
        "debug=tiny",
        f"paths.cache_dir={cache_dir}",
        out_dir,
        *overrides,
    ]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow  # python train.py in a subprocess (tens of seconds)
def test_train_py_end_to_end(tmp_path, cache_dir):
    out = _train_py(tmp_path / "a", cache_dir)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "FP top-1" in out.stdout
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    keys = {
        "model",
        "w_bits",
        "a_bits",
        "generator",
        "distill",
        "seed",
        "fp_top1",
        "top1",
        "top1_best",
        "time_generate_s",
        "time_qat_s",
        "time_total_s",
        "git_sha",
    }
    assert keys <= set(metrics), keys - set(metrics)
    assert metrics["model"] == "vit_test" and (metrics["w_bits"], metrics["a_bits"]) == (4, 4)
    assert 0 <= metrics["fp_top1"] <= 100 and metrics["top1_best"] >= metrics["top1"] and metrics["git_sha"]
    assert (tmp_path / "a" / "manifest.txt").read_text().count("\n") > 10
    # a bits change reuses the teacher and the synthetic set (bits are not in the set's key)
    again = _train_py(tmp_path / "b", cache_dir, "bits=w8a8")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Reusing cached teacher" in again.stdout and "Reusing synthetic set" in again.stdout
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["w_bits"] == 8
    # the saved student evaluates alone to the same accuracy
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    ev = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "evaluate_student.py"), str(tmp_path / "a")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ev.returncode == 0, ev.stderr[-3000:]
    assert f"top-1 {metrics['top1']:.2f} %" in ev.stdout


@pytest.mark.slow  # python train.py in a subprocess (tens of seconds)
def test_a_basic_launcher_sweep_loads_and_evaluates_the_teacher_once(tmp_path, cache_dir):
    out = _train_py(tmp_path, cache_dir, "bits=w4a4,w8a8", sweep=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("FP top-1:") == 1 and "Reusing teacher vit_test from this process" in out.stdout
    runs = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("*/metrics.json"))]
    assert [r["w_bits"] for r in runs] == [4, 8] and runs[0]["fp_top1"] == runs[1]["fp_top1"]


def test_train_py_bad_input_fails_before_compute(tmp_path, cache_dir):
    out = _train_py(tmp_path / "c", cache_dir, "model.timm_name=vit_nonexistent_model")
    assert out.returncode != 0 and "model.timm_name" in out.stderr
    assert not (tmp_path / "c" / "metrics.json").exists()
    out = _train_py(tmp_path / "d", cache_dir, "data=imagenet", f"data.root={tmp_path / 'missing'}")
    assert out.returncode != 0 and "data.root" in out.stderr
    out = _train_py(tmp_path / "e", cache_dir, "quant.w_bits=9")
    assert out.returncode != 0 and "quant.w_bits=9" in out.stderr and not (tmp_path / "e" / "metrics.json").exists()


def test_random_roll_is_a_circular_shift_within_max_px():
    x = torch.arange(3 * 8 * 8, dtype=torch.float32).view(3, 8, 8)
    torch.manual_seed(0)
    seen = set()
    for _ in range(50):
        y = RandomRoll(2)(x)
        match = [
            (dy, dx) for dy in range(-2, 3) for dx in range(-2, 3) if torch.equal(y, torch.roll(x, (dy, dx), (-2, -1)))
        ]
        assert match, "not a roll by at most 2 px"
        seen.add(match[0])
    assert len(seen) > 5  # random shifts, not one fixed one
    assert torch.equal(RandomRoll(0)(x), x)


@pytest.mark.parametrize("arch", ["vit_test", "swin_test"])
def test_channel_outliers_keep_the_function_and_scale_the_layernorm_outputs(arch, tiny_cfg):
    from mimiq.models.registry import create_model

    cfg = tiny_cfg(f"model={arch}")
    torch.manual_seed(0)
    model = create_model(cfg.model, num_classes=10).eval()
    ref = create_model(cfg.model, num_classes=10).eval()
    ref.load_state_dict(model.state_dict())
    x = torch.randn(4, 3, 32, 32)
    norm = next(m for n, m in ref.named_modules() if n.endswith("norm2"))
    seen = {}
    hook = norm.register_forward_hook(lambda m, i, o: seen.__setitem__("ref", o.detach().abs().amax((0, 1))))
    with torch.no_grad():
        y_ref = ref(x)
    hook.remove()
    lines = teacher_mod.channel_outliers(model, channels=3, scale=20.0, seed=1)
    blocks = [m for m in model.modules() if all(hasattr(m, a) for a in ("norm1", "norm2", "attn", "mlp"))]
    assert len(lines) == 2 * len(blocks) and "x20" in lines[0]
    name = next(n for n, m in ref.named_modules() if m is norm)
    norm_new = model.get_submodule(name)
    norm_new.register_forward_hook(lambda m, i, o: seen.__setitem__("new", o.detach().abs().amax((0, 1))))
    with torch.no_grad():
        y = model(x)
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-5)  # same function
    ratio = seen["new"] / seen["ref"]
    assert int((ratio > 19.9).sum()) == 3 and torch.allclose(ratio.sort().values[:-3], torch.ones(ratio.numel() - 3))


def test_outliers_change_the_teacher_identity_not_the_training_key(tiny_cfg):
    from mimiq.models.teacher import teacher_identity

    on, off = tiny_cfg(), tiny_cfg("teacher.outliers.channels=0")
    assert on.teacher.outliers.channels > 0  # the mini default
    assert teacher_dir(on) == teacher_dir(off)  # one trained teacher serves both
    assert teacher_identity(on) != teacher_identity(off)  # synthetic sets are keyed apart
    assert teacher_identity(on) != teacher_identity(tiny_cfg("teacher.outliers.scale=10"))


@pytest.mark.parametrize("bad", ["teacher.outliers.channels=999", "teacher.outliers.scale=0.5"])
def test_bad_outliers_fail_before_training(tiny_cfg, bad, monkeypatch):
    monkeypatch.setattr(teacher_mod, "train_classifier", lambda *a: pytest.fail("trained before the check"))
    with pytest.raises(ValueError, match="teacher.outliers"):
        load_or_train_teacher(tiny_cfg(bad, "teacher.seed=11"), torch.device("cpu"))
