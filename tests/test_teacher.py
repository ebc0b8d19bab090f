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
from mimiq.utils.ema import ema_update

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


@pytest.mark.parametrize("ema", ["0", "0.5"])
def test_teacher_training_resumes_after_kill(tiny_cfg, monkeypatch, ema):
    full_cfg = tiny_cfg("teacher.epochs=2", "teacher.seed=3", f"teacher.ema_decay={ema}")
    full, _ = load_or_train_teacher(full_cfg, torch.device("cpu"))
    cfg = tiny_cfg(
        "teacher.epochs=2",
        "teacher.seed=3",
        f"teacher.ema_decay={ema}",
        "data.seed=1234",
        "model.arch.mlp_ratio=2.0001",
    )
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


def test_ema_update_matches_a_float64_recurrence():
    g = torch.Generator().manual_seed(0)
    steps = [{"w": torch.randn(3, 4, generator=g), "n": torch.tensor(t)} for t in range(6)]
    ema = {k: v.clone() for k, v in steps[0].items()}
    ref = steps[0]["w"].double().tolist()
    for s in steps[1:]:
        ema_update(ema, s, 0.9)
        ref = [
            [0.9 * e + 0.1 * x for e, x in zip(re, rx, strict=True)]
            for re, rx in zip(ref, s["w"].tolist(), strict=True)
        ]
    assert torch.allclose(ema["w"].double(), torch.tensor(ref, dtype=torch.float64), atol=1e-6)
    assert ema["n"].item() == 5  # integer buffers (counters) are copied, not averaged


def test_an_ema_teacher_is_the_average_and_records_its_last_iterate(tiny_cfg):
    cfg = tiny_cfg("teacher.epochs=2", "teacher.seed=4", "teacher.ema_decay=0.5")
    model, info = load_or_train_teacher(cfg, torch.device("cpu"))
    last = torch.load(teacher_dir(cfg) / "teacher_last.pt", weights_only=True)
    assert info["ema_decay"] == 0.5 and 0 <= info["last_iterate_top1"] <= 100
    assert any(not torch.equal(v, last[k]) for k, v in model.state_dict().items() if v.is_floating_point())
    off = tiny_cfg("teacher.epochs=2", "teacher.seed=4", "teacher.ema_decay=0")
    _, info_off = load_or_train_teacher(off, torch.device("cpu"))
    assert teacher_dir(off) != teacher_dir(cfg) and "last_iterate_top1" not in info_off
    # no average: the name a recipe without the key had (the teachers shipped before it keep theirs)
    assert teacher_dir(tiny_cfg("teacher.epochs=2", "teacher.seed=4", "~teacher.ema_decay")) == teacher_dir(off)
    assert not (teacher_dir(off) / "teacher_last.pt").exists()


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


# ---------------------------------------------------------------------------------------- shipped teachers

# the names of the bench's teachers as trained and shipped (recipe of conf/teacher/mini.yaml): a key added to the
# recipe or a change of `teacher_key` that renames them orphans the shipped files
SHIPPED_NAMES = {
    "vit_mini": "vit_mini-19ab97b6642c",
    "vit_mini.t1": "vit_mini-20aad13cb2f9",
    "swin_mini": "swin_mini-83db43868d41",
}


@pytest.mark.parametrize("instance", sorted(SHIPPED_NAMES))
def test_the_teacher_key_of_each_shipped_instance_is_unchanged(instance):
    from conftest import compose_cfg

    from mimiq.teachers import INSTANCES

    for extra in ([], ["teacher.use_shipped=false", "teacher.outliers.channels=0"]):
        assert teacher_dir(compose_cfg([*INSTANCES[instance], *extra])).name == SHIPPED_NAMES[instance]


def _ship_tiny(tiny_cfg, tmp_path, *extra):
    """A tiny teacher (trained into the session cache) shipped into tmp_path/shipped; returns (cfg, provenance)."""
    from mimiq.teachers import ship

    cfg = tiny_cfg("teacher.epochs=1", "teacher.seed=21", *extra)
    overrides = ["debug=tiny", f"paths.cache_dir={cfg.paths.cache_dir}", "teacher.epochs=1", "teacher.seed=21", *extra]
    prov = ship("tiny", tmp_path / "shipped", {"commit": "abc1234", "threads": 1}, overrides=overrides)
    return cfg, prov


@pytest.fixture
def shipped_tiny(tiny_cfg, tmp_path, monkeypatch):
    from mimiq.models import shipped

    cfg, prov = _ship_tiny(tiny_cfg, tmp_path)
    monkeypatch.setattr(shipped, "SHIPPED_DIR", tmp_path / "shipped")
    return cfg, prov, tmp_path / "shipped"


def test_ship_writes_the_cached_weights_and_their_provenance(shipped_tiny):
    from mimiq.models.shipped import sha256_file

    cfg, prov, folder = shipped_tiny
    name = teacher_dir(cfg).name
    pt, js = folder / f"{name}.pt", folder / f"{name}.json"
    assert pt.read_bytes() == (teacher_dir(cfg) / "teacher.pt").read_bytes()  # the same bytes as the cache's
    assert (
        json.loads(js.read_text()) == prov and prov["sha256"] == sha256_file(pt) and prov["bytes"] == pt.stat().st_size
    )
    assert prov["key"] == name.rsplit("-", 1)[1] and prov["instance"] == "tiny" and prov["dtypes"] == ["torch.float32"]
    meta = json.loads((teacher_dir(cfg) / "meta.json").read_text())  # what the training recorded wins
    assert prov["commit"] == meta["commit"] != "abc1234" and prov["threads"] == meta["threads"]
    assert prov["torch"] == torch.__version__ and prov["command"] == meta["command"]
    assert set(prov["transform_top1"]) == {"mimiq", "psaq"} and 0 <= prov["clean_top1"] <= 100
    assert prov["gate"]["met"] == (prov["clean_top1"] >= 90 and min(prov["transform_top1"].values()) >= 80)
    assert prov["recipe"]["epochs"] == 1 and "use_shipped" not in prov["recipe"] and prov["train_time_s"] > 0


def _in_cache(cfg, cache_dir: Path, *overrides: str):
    """A copy of `cfg` with another paths.cache_dir and `overrides` (key.path=YAML value)."""
    import copy

    import yaml
    from omegaconf import OmegaConf

    out = copy.deepcopy(cfg)
    for kv in (f"paths.cache_dir={cache_dir}", *overrides):
        k, v = kv.split("=", 1)
        OmegaConf.update(out, k, yaml.safe_load(v))
    return out


def test_ship_fills_what_an_older_meta_did_not_record_from_its_arguments(tiny_cfg, tmp_path):
    cfg = tiny_cfg("teacher.epochs=1", "teacher.seed=23")
    load_or_train_teacher(cfg, torch.device("cpu"))
    meta_path = teacher_dir(cfg) / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({k: v for k, v in meta.items() if k not in ("commit", "threads", "command")}))
    _, prov = _ship_tiny(tiny_cfg, tmp_path, "teacher.seed=23")
    assert (prov["commit"], prov["threads"], prov["command"]) == ("abc1234", 1, "unknown")


def test_check_retrains_in_an_empty_cache_and_compares_with_the_provenance(shipped_tiny, tmp_path):
    from mimiq.teachers import check, format_check

    cfg, prov, folder = shipped_tiny
    overrides = ["debug=tiny", "teacher.epochs=1", "teacher.seed=21"]
    row = check("tiny", folder, str(tmp_path / "fresh"), overrides=overrides)
    assert (tmp_path / "fresh" / "teachers" / prov["name"] / "teacher.pt").is_file()  # trained there, not reused
    assert row["recorded"] == {"clean": prov["clean_top1"], **prov["transform_top1"]}
    assert row["same_weights"] and all(d == 0 for d in row["delta"].values())  # same machine, same thread count
    assert row["reproduced"] == row["gate_met"] and "bit-identical weights" in format_check(row)
    _rewrite(folder / f"{prov['name']}.json", clean_top1=prov["clean_top1"] + 5)  # beyond CHECK_TOLERANCE
    row = check("tiny", folder, str(tmp_path / "fresh"), overrides=overrides)
    assert row["delta"]["clean"] == pytest.approx(-5) and not row["reproduced"]
    assert "NOT reproduced" in format_check(row)


def test_a_shipped_teacher_is_loaded_without_training(shipped_tiny, tmp_path, monkeypatch, caplog):
    cfg, prov, folder = shipped_tiny
    monkeypatch.setattr(teacher_mod, "train_classifier", lambda *a: pytest.fail("trained a shipped teacher"))
    fresh = _in_cache(cfg, tmp_path / "empty", "teacher.outliers.channels=0")  # a fresh clone: nothing cached
    with caplog.at_level("INFO"):
        model, info = load_or_train_teacher(fresh, torch.device("cpu"))
    pt = folder / f"{teacher_dir(cfg).name}.pt"
    assert info["source"] == "shipped" and info["path"] == str(pt) and info["sha256"] == prov["sha256"]
    assert f"loaded the shipped teacher {pt} (no training)" in caplog.text
    assert not (tmp_path / "empty" / "teachers").exists()
    ref = torch.load(pt, weights_only=True)
    assert ref.keys() == model.state_dict().keys()
    assert all(torch.equal(ref[k], v) for k, v in model.state_dict().items())


def test_use_shipped_false_ignores_the_shipped_teacher(shipped_tiny):
    cfg, _, _ = shipped_tiny
    _, info = load_or_train_teacher(
        _in_cache(cfg, cfg.paths.cache_dir, "teacher.use_shipped=false"), torch.device("cpu")
    )
    assert info["source"] == "cache"  # the teacher the shipped file was made from, in the session cache


def test_a_shipped_teacher_changes_the_identity_of_the_synthetic_sets(shipped_tiny):
    from mimiq.models.teacher import teacher_identity

    cfg, prov, _ = shipped_tiny
    off = _in_cache(cfg, cfg.paths.cache_dir, "teacher.use_shipped=false")
    assert teacher_identity(cfg).startswith("shipped:") and prov["sha256"][:16] in teacher_identity(cfg)
    assert teacher_identity(off).startswith("trained:")


def _rewrite(js: Path, **changes):
    prov = json.loads(js.read_text())
    js.write_text(json.dumps({**prov, **changes}))


@pytest.mark.parametrize(
    "tamper, match",
    [
        ("weights", "sha256"),
        ("key", "key: recorded '000000000000'"),
        ("recipe", "recipe.epochs: recorded 7, config 1"),
        ("arch", "arch.depth: recorded 9, config 2"),
        ("no_json", "has no .json beside it"),
        ("wrong_arch_weights", "does not fit model=vit_test"),
    ],
)
def test_a_shipped_teacher_that_differs_from_its_provenance_or_the_config_is_refused(
    shipped_tiny, tmp_path, monkeypatch, tamper, match
):
    cfg, prov, folder = shipped_tiny
    monkeypatch.setattr(teacher_mod, "train_classifier", lambda *a: pytest.fail("fell back to training"))
    pt, js = folder / f"{prov['name']}.pt", folder / f"{prov['name']}.json"
    if tamper == "weights":
        state = torch.load(pt, weights_only=True)
        next(iter(state.values())).add_(1e-3)
        torch.save(state, pt)
    elif tamper == "key":
        _rewrite(js, key="000000000000")
    elif tamper == "recipe":
        _rewrite(js, recipe={**prov["recipe"], "epochs": 7})
    elif tamper == "arch":
        _rewrite(js, arch={**prov["arch"], "depth": 9})
    elif tamper == "no_json":
        js.unlink()
    else:  # weights of another architecture, provenance rewritten to match them: the strict load refuses them
        from mimiq.models.registry import create_model
        from mimiq.models.shipped import sha256_file

        torch.save(create_model(_in_cache(cfg, tmp_path, "model.arch.depth=1").model, num_classes=10).state_dict(), pt)
        _rewrite(js, sha256=sha256_file(pt))
    with pytest.raises((ValueError, FileNotFoundError, RuntimeError), match=match):
        load_or_train_teacher(_in_cache(cfg, tmp_path / "empty"), torch.device("cpu"))


def test_a_shipped_file_of_another_recipe_is_not_used_and_is_logged(shipped_tiny, caplog):
    cfg, prov, _ = shipped_tiny
    other = _in_cache(cfg, cfg.paths.cache_dir, "teacher.epochs=2")  # trained by test_teacher_trains_caches...
    with caplog.at_level("INFO"):
        _, info = load_or_train_teacher(other, torch.device("cpu"))
    assert info["source"] in ("cache", "trained") and info["recipe"]["epochs"] == 2
    assert f"no shipped teacher for this recipe ({teacher_dir(other).name}; shipped: {prov['name']})" in caplog.text


def test_a_cached_teacher_whose_meta_records_another_recipe_is_refused(tiny_cfg, tmp_path):
    cfg = _in_cache(tiny_cfg("teacher.epochs=1", "teacher.seed=22"), tmp_path)
    load_or_train_teacher(cfg, torch.device("cpu"))
    meta_path = teacher_dir(cfg) / "meta.json"
    meta = json.loads(meta_path.read_text())
    assert meta["key"] == teacher_dir(cfg).name.rsplit("-", 1)[1] and meta["commit"] and meta["threads"] >= 1
    meta_path.write_text(json.dumps({**meta, "recipe": {**meta["recipe"], "lr": 0.5}}))
    with pytest.raises(ValueError, match=r"cached teacher .* is not this config's teacher: recipe.lr: recorded 0.5"):
        load_or_train_teacher(cfg, torch.device("cpu"))
    meta_path.write_text(json.dumps({**meta, "arch": {**meta["arch"], "embed_dim": 64}}))
    with pytest.raises(ValueError, match="arch.embed_dim: recorded 64, config 32"):
        load_or_train_teacher(cfg, torch.device("cpu"))
    meta_path.unlink()
    with pytest.raises(ValueError, match="has no meta.json"):
        load_or_train_teacher(cfg, torch.device("cpu"))


@pytest.mark.parametrize("instance", sorted(SHIPPED_NAMES))
def test_the_shipped_mini_teachers_match_their_provenance_and_their_configs(instance):
    from conftest import compose_cfg

    from mimiq.models import shipped
    from mimiq.models.teacher import key_parts, teacher_key
    from mimiq.teachers import INSTANCES

    cfg = compose_cfg(list(INSTANCES[instance]))
    name = SHIPPED_NAMES[instance]
    prov = shipped.read_provenance(name)
    ship = f"python scripts/teachers.py --only {instance}"
    assert prov is not None, f"{shipped.SHIPPED_DIR}/{name}.pt is not shipped ({ship})"
    expected = {"key": teacher_key(cfg.model, cfg.data, cfg.teacher), "model": cfg.model.name}
    shipped.verify_shipped(name, prov, {**expected, **key_parts(cfg.model, cfg.data, cfg.teacher)})
    assert prov["instance"] == instance and prov["overrides"] == list(INSTANCES[instance])
    assert {"clean", "mimiq", "psaq"} <= {"clean", *prov["transform_top1"]} and prov["commit"] != "unknown"


def test_the_default_run_loads_the_shipped_teacher_on_a_fresh_clone(tmp_path, monkeypatch, caplog):
    from conftest import compose_cfg

    from mimiq.models.shipped import SHIPPED_DIR

    monkeypatch.setattr(teacher_mod, "train_classifier", lambda *a: pytest.fail("the default run trained a teacher"))
    with caplog.at_level("INFO"):
        _, info = load_or_train_teacher(compose_cfg([f"paths.cache_dir={tmp_path}"]), torch.device("cpu"))
    assert info["source"] == "shipped"
    assert f"loaded the shipped teacher {SHIPPED_DIR / SHIPPED_NAMES['vit_mini']}.pt (no training)" in caplog.text
