"""Synthetic-data stage: every generator on tiny random-init teachers, the cache key, resume, corrupt shards."""

from functools import cache

import pytest
import torch
from conftest import compose_cfg

import mimiq.synth.generate as generate
from mimiq.config import CONF_DIR
from mimiq.models.registry import model_data_config
from mimiq.models.teacher import load_or_train_teacher
from mimiq.report.methods import load_generators
from mimiq.synth.cache import set_dir, set_key, shard_path
from mimiq.synth.generate import SyntheticSet, synthesize_or_load

CPU = torch.device("cpu")
GENERATOR_NAMES = list(load_generators(CONF_DIR))  # conf/generator/: every generator of the registry


@cache
def _generator_override(name: str) -> str:
    """`generator=<name>` once the group is in train.yaml's defaults, `+generator=<name>` before that."""
    return f"generator={name}" if "generator" in compose_cfg() else f"+generator={name}"


@pytest.fixture
def gen_cfg(tiny_cfg):
    """A tiny random-init teacher (vit_test) and a tiny generator budget; extra overrides win."""

    def make(name: str = "mimiq", *overrides: str):
        budget = ["generator.num_images=4", "generator.batch_size=2", "generator.iterations=4"]
        return tiny_cfg("model.train_teacher=false", _generator_override(name), *budget, *overrides)

    return make


def _teacher(cfg):
    torch.manual_seed(0)
    return load_or_train_teacher(cfg, CPU)[0]


def _in_range(s: SyntheticSet, teacher) -> bool:
    mean, std = (torch.tensor(model_data_config(teacher)[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    return bool(((s.images >= -mean / std - 1e-6) & (s.images <= (1 - mean) / std + 1e-6)).all())


def test_mimiq_losses_finite_and_decreasing(gen_cfg):
    # augmentation off (jitter 0, noise 0, colour jitter identity): a fixed objective that Adam must lower
    cfg = gen_cfg(
        "mimiq",
        "generator.iterations=8",
        "generator.jitter=[0,0]",
        "generator.noise_std=0",
        "generator.jitter_mean=0",
        "generator.jitter_log_std=0",
        "generator.w_tv=1e-3",
    )
    teacher = _teacher(cfg)
    s = synthesize_or_load(teacher, cfg, CPU)
    curves = s.meta["loss_curves"]
    assert set(curves) == {"loss", "ih", "ce", "tv"}
    assert all(torch.isfinite(torch.tensor(v)).all() and len(v) == 8 for v in curves.values())
    for term in ("loss", "ih", "ce", "tv"):
        assert curves[term][-1] < curves[term][0], term
    assert s.images.shape == (4, 3, 32, 32) and s.images.dtype == torch.float32 and _in_range(s, teacher)
    assert s.labels.dtype == torch.int64 and ((s.labels >= 0) & (s.labels < teacher.num_classes)).all()
    assert -1 <= s.meta["interhead_ssim"] <= s.meta["interhead_abs_ssim"] <= 1
    assert not s.meta["reused"] and s.meta["time_s"] > 0
    assert (set_dir(cfg) / "grid.png").is_file() and s.meta["path"] == str(set_dir(cfg))


def test_cache_key_tracks_teacher_generator_count_seed_not_bits(gen_cfg):
    key = set_key(gen_cfg())
    assert set_key(gen_cfg("mimiq", "model.arch.depth=1")) != key  # another teacher
    assert set_key(gen_cfg("mimiq", "generator.lr=0.2")) != key
    assert set_key(gen_cfg("psaq")) != key
    assert set_key(gen_cfg("mimiq", "generator.num_images=6")) != key
    assert set_key(gen_cfg("mimiq", "seed=1")) != key
    assert set_key(gen_cfg("mimiq", "synth_seed=1")) != key  # the set's own seed ...
    trained = ("model.train_teacher=true",)  # a cached teacher's identity does not depend on the run seed
    assert set_key(gen_cfg("mimiq", *trained, "seed=1", "synth_seed=0")) == set_key(gen_cfg("mimiq", *trained))
    assert set_key(gen_cfg("mimiq", "++quant.w_bits=8", "++quant.a_bits=8")) == key
    assert set_key(gen_cfg("mimiq", "device=cuda")) == key  # where a set is made is not part of it ...
    assert set_key(gen_cfg("mimiq", "precision=bf16")) != key  # ... the precision of its forward passes is


def test_cache_key_of_fp32_and_unoptimised_sets_has_no_precision(gen_cfg):
    """fp32 keys are computed as before precision joined the key (sets made then stay valid); noise and real
    sets, which no forward pass shapes, share one key across precisions."""
    from mimiq.models.teacher import teacher_identity
    from mimiq.synth.cache import generator_identity
    from mimiq.utils.io import config_hash

    cfg = gen_cfg("mimiq", "precision=fp32")
    before = config_hash("synth-v1", teacher_identity(cfg), generator_identity(cfg.generator), 4, 0, None)
    assert set_key(cfg) == before
    assert set_key(gen_cfg("noise", "precision=bf16")) == set_key(gen_cfg("noise", "precision=fp32"))
    assert set_key(gen_cfg("psaq", "precision=bf16")) != set_key(gen_cfg("psaq", "precision=fp32"))


def test_interrupted_set_resumes_to_the_identical_set(gen_cfg, monkeypatch, tmp_path, caplog):
    caplog.set_level("INFO", logger="mimiq")
    overrides = ("generator.num_images=5", "generator.iterations=2")  # shards of 2, 2, 1 images
    cfg = gen_cfg("mimiq", *overrides)
    teacher = _teacher(cfg)
    real_shard = generate._generate_shard

    def dying_shard(ctx, seed, index, images, bar):
        if index == 1:
            raise KeyboardInterrupt("killed")
        return real_shard(ctx, seed, index, images, bar)

    monkeypatch.setattr(generate, "_generate_shard", dying_shard)
    with pytest.raises(KeyboardInterrupt):
        synthesize_or_load(teacher, cfg, CPU)
    folder = set_dir(cfg)
    assert shard_path(folder, 0).is_file() and not shard_path(folder, 1).exists()
    assert not (folder / "meta.json").exists()
    monkeypatch.setattr(generate, "_generate_shard", real_shard)
    resumed = synthesize_or_load(teacher, cfg, CPU)
    assert "Resuming synthetic set" in caplog.text
    caplog.clear()

    fresh = synthesize_or_load(teacher, gen_cfg("mimiq", *overrides, f"paths.cache_dir={tmp_path}"), CPU)
    assert torch.equal(resumed.images, fresh.images) and torch.equal(resumed.labels, fresh.labels)
    assert len(resumed) == 5 and len(resumed.meta["shard_time_s"]) == 3

    reused = synthesize_or_load(teacher, cfg, CPU, out_dir=tmp_path)
    assert f"Reusing synthetic set {folder}" in caplog.text
    assert reused.meta["reused"] and reused.meta["time_generate_s"] == 0 and reused.meta["time_s"] > 0
    assert torch.equal(reused.images, resumed.images) and (tmp_path / "synth_grid.png").is_file()


def test_corrupt_or_missing_shard_names_the_file(gen_cfg):
    cfg = gen_cfg("noise", "generator.num_images=4")
    teacher = _teacher(cfg)
    synthesize_or_load(teacher, cfg, CPU)
    bad = shard_path(set_dir(cfg), 1)
    bad.write_bytes(b"not a torch file")
    with pytest.raises(RuntimeError, match=rf"(?s){bad}.*Delete the folder"):
        synthesize_or_load(teacher, cfg, CPU)
    assert bad.is_file()  # never deleted silently
    bad.unlink()
    with pytest.raises(FileNotFoundError, match=str(bad)):
        synthesize_or_load(teacher, cfg, CPU)


def test_swin_mimiq_runs(gen_cfg):
    cfg = gen_cfg("mimiq", "model=swin_test", "generator.num_images=2", "generator.iterations=2")
    teacher = _teacher(cfg)
    s = synthesize_or_load(teacher, cfg, CPU)
    assert s.images.shape == (2, 3, 32, 32) and _in_range(s, teacher)
    assert all(torch.isfinite(torch.tensor(v)).all() for v in s.meta["loss_curves"].values())
    assert -1 <= s.meta["interhead_ssim"] <= 1


@pytest.mark.parametrize("name", GENERATOR_NAMES)
def test_every_generator_makes_a_set(gen_cfg, name):
    cfg = gen_cfg(name, "generator.num_images=2")
    teacher = _teacher(cfg)
    s = synthesize_or_load(teacher, cfg, CPU)
    assert s.images.shape == (2, 3, 32, 32) and s.labels.shape == (2,) and s.labels.dtype == torch.int64
    assert torch.isfinite(s.images).all() and _in_range(s, teacher)
    assert s.meta["generator"] == name and -1 <= s.meta["interhead_ssim"] <= 1
    if "tv_target" in cfg.generator:  # PSAQ-ViT's |TV - v| term dominates the first steps: the loss must fall
        curves = s.meta["loss_curves"]
        assert len(curves["loss"]) == 4 and curves["loss"][-1] < curves["loss"][0]


def test_nan_batch_is_redone_with_the_next_seed(gen_cfg, monkeypatch):
    cfg = gen_cfg("noise", "generator.num_images=2", "generator.max_nan_retries=1")
    teacher = _teacher(cfg)
    noise_fn, calls = generate.noise_batch, []

    def nan_once(ctx, images, gen, curves):
        batch = noise_fn(ctx, images, gen, curves)
        calls.append(1)
        if len(calls) == 1:
            batch.images[0, 0, 0, 0] = float("nan")
        return batch

    monkeypatch.setitem(generate.GENERATORS, "noise", (nan_once, False))
    s = synthesize_or_load(teacher, cfg, CPU)
    assert len(calls) == 2 and torch.isfinite(s.images).all() and s.meta["nan_retries"] == 1


def test_concurrent_writers_of_one_cache_file_never_share_a_temp_file(tmp_path, monkeypatch):
    """Two SLURM jobs of one sweep can fill the same synthetic set at once: each write of grid.png (and of shards
    and meta.json, via mimiq.utils.io) must go through its own temp file, or one job's rename steals the other's."""
    import os

    from mimiq.synth.cache import save_grid

    renames, real_replace = [], os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: renames.append(str(src)) or real_replace(src, dst))
    images, mean, std = torch.randn(4, 3, 8, 8), torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1)
    save_grid(images, mean, std, tmp_path / "grid.png")
    save_grid(images, mean, std, tmp_path / "grid.png")
    assert len(renames) == 2 and renames[0] != renames[1]
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]  # no temp file left behind
