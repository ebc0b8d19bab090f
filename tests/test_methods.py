"""conf/method/: the paper's method rows, defined once. `method=<id>` composes to the same run as the generator /
distill (and settings) it names, with only a label added; the bench reads old runs back, and the caches keep
their keys."""

import sys
from pathlib import Path

import pytest
from conftest import CONF_DIR, ROOT, compose_cfg
from omegaconf import OmegaConf

from mimiq.models.teacher import teacher_key
from mimiq.report.methods import LABEL_KEY, load_methods
from mimiq.synth.cache import set_key

sys.path.insert(0, str(ROOT / "scripts"))
import bench  # noqa: E402
import make_tables  # noqa: E402

METHODS = load_methods(Path(CONF_DIR))


def old_way(m) -> list[str]:
    """The overrides that selected this row before the method group existed."""
    return [f"generator={m.generator}", f"distill={m.distill}", *(f"{k}={v}" for k, v in m.settings.items())]


def test_method_files_are_deltas_with_comments():
    assert {"noise_kd", "psaq", "psaq_v2", "mimiq_kd", "mimiq", "real_kd", "real_hsad"} <= set(METHODS)
    for path in sorted(Path(CONF_DIR, "method").glob("*.yaml")):
        lines = path.read_text().splitlines()
        assert lines[0] == "# @package _global_", path
        body = [ln for ln in lines if ln.split("#")[0].strip() and not ln.strip().startswith("#")]
        values = [ln for ln in body if not ln.split("#")[0].rstrip().endswith(":")]  # leaves, not map headers
        assert all("#" in ln for ln in values), f"{path}: a value without its comment"
        assert all(len(ln) <= 110 for ln in lines), path  # as conf/experiment/


@pytest.mark.parametrize("mid", sorted(METHODS))
def test_method_composes_to_its_generator_and_distill(mid):
    m = METHODS[mid]
    cfg = compose_cfg([f"method={mid}"])
    assert (cfg.generator.name, cfg.distill.name, cfg[LABEL_KEY]) == (m.generator, m.distill, m.label)
    assert all(OmegaConf.select(cfg, k) == v for k, v in m.settings.items())


def test_no_method_adds_no_key():
    assert LABEL_KEY not in compose_cfg() and LABEL_KEY not in compose_cfg(["generator=psaq", "distill=kd"])


CELLS = [  # (teacher instance, method, bits, seed, bench-quick budget)
    ("vit_mini", "psaq", "w4a4", 0, False),
    ("vit_mini.t1", "mimiq", "w3a3", 1, False),
    ("swin_mini", "noise_kd", "w4a4", 2, False),
    ("vit_mini", "real_hsad", "w5a5", 0, True),
    ("vit_mini", "mimiq_kd", "w4a4", 0, True),
    ("vit_mini", "psaq_v2", "w2a4", 0, False),
]


@pytest.mark.parametrize("cell", CELLS, ids=lambda c: "-".join(map(str, c[:4])))
def test_bench_cell_composes_as_before(cell, monkeypatch):
    """A bench cell with method=<id> against the same cell with generator=/distill= (how bench.py selected rows
    before): the resolved configs are the same but for the label, `_outcome` (the read-back test of finished runs
    under logs/bench) is equal, and so are the synthetic-set and teacher cache keys."""
    teacher, mid, bits, seed, quick = cell
    monkeypatch.setattr(bench, "EXTRA", bench.QUICK_BUDGET if quick else [])
    new = bench.compose_cfg(bench.cell_overrides(teacher, mid, bits, seed))
    old = bench.compose_cfg(
        [o for o in bench.cell_overrides(teacher, mid, bits, seed) if not o.startswith("method=")]
        + old_way(METHODS[mid])
    )
    assert bench._outcome(new) == bench._outcome(old)
    a, b = OmegaConf.to_container(new, resolve=True), OmegaConf.to_container(old, resolve=True)
    assert a.pop(LABEL_KEY) == METHODS[mid].label and a == b  # the label is the only new key
    assert set_key(new) == set_key(old)
    assert teacher_key(new.model, new.data, new.teacher) == teacher_key(old.model, old.data, old.teacher)


def test_a_run_saved_before_the_method_group_is_read_back(tmp_path, monkeypatch):
    """run_cell reads back a finished run whose saved config has no method label (selected by generator=/distill=)."""
    monkeypatch.setattr(bench, "EXTRA", [])
    monkeypatch.setattr(bench.pipeline, "run", lambda *a: pytest.fail("a finished run was recomputed"))
    overrides = bench.cell_overrides("vit_mini", "psaq", "w4a4", 0)
    old = bench.compose_cfg([o for o in overrides if not o.startswith("method=")] + old_way(METHODS["psaq"]))
    (tmp_path / "metrics.json").write_text('{"top1": 1.0}')
    OmegaConf.save(old, tmp_path / "config_resolved.yaml", resolve=True)
    assert bench.run_cell(overrides, tmp_path, {}) == {"top1": 1.0}


@pytest.mark.parametrize("exp", ["tab2_vit_b", "abl_components_vit_b", "dense_mask_rcnn_swin_t"])
def test_table_rows_compose_as_their_generator_and_distill(exp):
    """Each method row of the tables, in a paper experiment: method=<id> composes as its old overrides."""
    used = {o.split("=", 1)[1] for t in make_tables.TABLES.values() for r in t.rows for o in r.overrides}
    for mid in sorted(used & set(METHODS)):
        new = compose_cfg([f"experiment={exp}", f"method={mid}"])
        old = compose_cfg([f"experiment={exp}", *old_way(METHODS[mid])])
        assert bench._outcome(new) == bench._outcome(old), mid
        assert new[LABEL_KEY] == METHODS[mid].label


def test_tables_take_their_rows_from_the_method_group():
    rows = {r.label: r for r in make_tables.TABLES["imagenet"].rows}
    assert rows["PSAQ-ViT"].overrides == ("method=psaq",) and rows["MimiQ"].overrides == ()  # the experiments' own
    assert rows["Gaussian noise + KD"].match == {"generator": "noise", "distill": "kd"}
    abl = {r.label: r.match for r in make_tables.TABLES["abl_components"].rows}
    assert abl["MimiQ"]["cfg.generator.w_interhead"] == 1.0 and abl["w/o inter-head"]["cfg.generator.w_interhead"] == 0
    assert abl["w/o HSAD"]["distill"] == "kd"
